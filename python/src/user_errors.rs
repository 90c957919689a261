//! What happens when the user's Python code raises: the record is rejected, counted and its
//! traceback logged (rate-limited), and the pipeline goes on; or, with `on_error="stop"`, the
//! engine stops gracefully and `run` raises the first exception.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bettong_engine::StopHandle;
use pyo3::prelude::*;

/// Tracebacks logged at most per window; past them a count is logged once the window ends.
const TRACEBACKS_PER_WINDOW: u64 = 5;
/// The rate limit's window.
const WINDOW: Duration = Duration::from_secs(10);

/// One run's record of user exceptions.
pub struct UserErrors {
    stop_on_error: bool,
    /// Records rejected because a user function raised (decoders included).
    pub rejected: AtomicU64,
    window: Mutex<(Instant, u64)>,
    /// The first exception, raised again by `run` when `on_error="stop"`.
    first: Mutex<Option<PyErr>>,
    /// The engine to stop, once started.
    pub stop: OnceLock<StopHandle>,
}

impl UserErrors {
    /// A run's record; `stop_on_error` stops the engine at the first exception.
    pub fn new(stop_on_error: bool) -> Self {
        UserErrors {
            stop_on_error,
            rejected: AtomicU64::new(0),
            window: Mutex::new((Instant::now(), 0)),
            first: Mutex::new(None),
            stop: OnceLock::new(),
        }
    }

    /// `err` was raised by `what` (a step named by the user's class or function): reject the
    /// record it was working on.
    pub fn reject(&self, py: Python<'_>, err: PyErr, what: &str) {
        let n = self.rejected.fetch_add(1, Relaxed) + 1;
        let log = {
            let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.0.elapsed() >= WINDOW {
                if w.1 > TRACEBACKS_PER_WINDOW {
                    tracing::warn!(
                        "{} more records were rejected by exceptions in user code in the last \
                         {WINDOW:?} (tracebacks not shown)",
                        w.1 - TRACEBACKS_PER_WINDOW
                    );
                }
                *w = (Instant::now(), 0);
            }
            w.1 += 1;
            w.1 <= TRACEBACKS_PER_WINDOW
        };
        if self.stop_on_error {
            tracing::error!("{what} raised an exception: stopping (on_error=\"stop\")");
            err.print(py);
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = Some(err);
            }
            if let Some(stop) = self.stop.get() {
                stop.stop();
            }
        } else if log {
            tracing::error!(
                "{what} raised an exception: the record is rejected ({n} so far), the pipeline \
                 goes on (on_error=\"stop\" stops instead; at most {TRACEBACKS_PER_WINDOW} \
                 tracebacks per {WINDOW:?} are shown):"
            );
            err.print(py);
        }
    }

    /// Hands over the started engine's stop handle; stops it at once if an exception under
    /// `on_error="stop"` came before it started.
    pub fn arm(&self, stop: StopHandle) {
        let _ = self.stop.set(stop.clone());
        if self.stop_on_error
            && self
                .first
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
        {
            stop.stop();
        }
    }

    /// The first exception, if the run is to raise it.
    pub fn take_first(&self) -> Option<PyErr> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
