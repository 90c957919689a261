//! Shutdown: how a running engine is told to stop, and how each core's tasks hear it.
//!
//! [`StopHandle`] is the cross-thread switch (a signal handler or the embedding program flips
//! it). Each core runs a small watcher that notices the switch and fires that core's
//! [`Shutdown`], a single-threaded broadcast that every task awaiting input selects on. On
//! shutdown the sources stop reading, the frames already received are finished, every core tells
//! its peers it is done, and the sinks flush before the core exits.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::notify::Notify;

/// Asks a running engine to stop gracefully. Cheap to clone and usable from any thread.
///
/// ```
/// use bettong_engine::StopHandle;
/// let stop = StopHandle::new();
/// assert!(!stop.is_stopped());
/// stop.clone().stop();
/// assert!(stop.is_stopped());
/// ```
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    stopped: Arc<AtomicBool>,
}

impl StopHandle {
    /// A handle that has not been stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a graceful stop: stop accepting and reading, finish what was received, flush.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// True once [`StopHandle::stop`] has been called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// A one-shot broadcast between the tasks of one core.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: Cell<bool>,
    /// Wakes the waits when the shutdown fires; each wait frees its slot when dropped, so tasks
    /// that come and go (connections) leave nothing behind.
    fired: Notify,
}

impl Shutdown {
    /// An untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the shutdown and wakes every task waiting for it.
    pub fn trigger(&self) {
        if !self.inner.triggered.replace(true) {
            self.inner.fired.notify();
        }
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Resolves when the shutdown fires.
    pub fn wait(&self) -> impl Future<Output = ()> + 'static {
        let inner = self.inner.clone();
        async move {
            while !inner.triggered.get() {
                inner.fired.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shutdown_fires_once_for_every_clone() {
        let s = Shutdown::new();
        let other = s.clone();
        assert!(!other.is_triggered());
        s.trigger();
        assert!(other.is_triggered());
    }
}
