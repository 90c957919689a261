//! `bettong._native`: the Bettong engine as a Python extension module. The Python API
//! (`bettong/__init__.py`) describes an application; this module runs it on the engine.

mod front_worker;
mod gil_batch;
mod item;
mod python_pipeline;
mod relay;
mod runner;
mod state_worker;
mod user_errors;
mod wire;
mod workers;

use pyo3::prelude::*;

/// GIL acquisitions made by engine cores so far (one per batch of records).
#[pyfunction]
fn gil_acquisitions() -> u64 {
    gil_batch::ACQUISITIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The engine's log goes to stderr; `RUST_LOG` filters it (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add_class::<runner::Running>()?;
    m.add_function(wrap_pyfunction!(runner::start, m)?)?;
    m.add_function(wrap_pyfunction!(runner::stop_on_signals, m)?)?;
    m.add_function(wrap_pyfunction!(gil_acquisitions, m)?)?;
    m.add_function(wrap_pyfunction!(workers::serve_front, m)?)?;
    m.add_function(wrap_pyfunction!(workers::serve_state, m)?)?;
    Ok(())
}
