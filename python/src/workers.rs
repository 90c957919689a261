//! Process mode's entry points, called in the worker processes `bettong/processes.py` forks:
//! [`serve_front`] and [`serve_state`] build the user's application from the plan (its
//! objects were inherited through the fork) and serve one engine core until it hangs up.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::runner::{py_app, stop_on_error, Plan};
use crate::user_errors::UserErrors;
use crate::{front_worker, state_worker};

fn app_of(
    py: Python<'_>,
    plan: &Bound<'_, PyDict>,
    on_error: &str,
) -> PyResult<Arc<crate::python_pipeline::PyApp>> {
    let plan: Plan = plan.extract()?;
    let errors = Arc::new(UserErrors::new(stop_on_error(on_error)?));
    py_app(py, &plan, errors)
}

/// Runs the front half of `plan`'s sources for the engine core at the other end of socket
/// `fd`, until it hangs up. Returns `(rejected, (frames_in, frames_rejected))`: records
/// rejected by exceptions in user code, the frames it was sent, and those the decoding
/// rejected. Raises the first exception under
/// `on_error="stop"`.
#[pyfunction]
pub fn serve_front(
    py: Python<'_>,
    fd: i32,
    plan: &Bound<'_, PyDict>,
    on_error: &str,
) -> PyResult<(u64, (u64, u64))> {
    let app = app_of(py, plan, on_error)?;
    let mut tally = front_worker::Tally::default();
    front_worker::serve(py, fd, app.clone(), &mut tally)?;
    let rejected = app
        .errors
        .rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    Ok((rejected, (tally.frames_in, tally.frames_rejected)))
}

/// Accepts one engine core's connection on listening socket `listener_fd` and runs `plan`'s
/// state step and encoder on its records until the engine closes it; the outputs go to
/// `sink_addr` (`HOST:PORT`), or, when it is `None`, are returned. Returns `(rejected,
/// outputs)`. Raises the first exception under `on_error="stop"`.
#[pyfunction]
#[pyo3(signature = (listener_fd, plan, on_error, sink_addr=None))]
pub fn serve_state(
    py: Python<'_>,
    listener_fd: i32,
    plan: &Bound<'_, PyDict>,
    on_error: &str,
    sink_addr: Option<String>,
) -> PyResult<(u64, Py<PyBytes>)> {
    let app = app_of(py, plan, on_error)?;
    let mut out = match sink_addr {
        Some(a) => state_worker::Out::Tcp(a, None),
        None => state_worker::Out::Memory(Vec::new()),
    };
    state_worker::serve(py, listener_fd, app.clone(), &mut out)?;
    let kept = match &out {
        state_worker::Out::Memory(v) => PyBytes::new(py, v),
        state_worker::Out::Tcp(..) => PyBytes::new(py, b""),
    };
    Ok((
        app.errors
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        kept.unbind(),
    ))
}
