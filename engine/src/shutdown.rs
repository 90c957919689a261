//! Shutdown: how a running engine is told to stop, and how each core's tasks hear it.
//!
//! [`StopHandle`] is the cross-thread switch (a signal handler or the embedding program flips
//! it). Each core runs a small watcher that sleeps until the switch is flipped (a
//! [`RemoteNotify`] wakes it: no timer wakes an idle core to look) and fires that core's
//! [`Shutdown`], a single-threaded broadcast that every task awaiting input selects on. On
//! shutdown the sources stop reading, the frames already received are finished, every core tells
//! its peers it is done, and the sinks flush before the core exits.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::notify::Notify;
use crate::remote_notify::RemoteNotify;

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
    inner: Arc<StopInner>,
}

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    /// Wakes each core's watcher when the switch is flipped.
    flipped: RemoteNotify,
}

impl StopHandle {
    /// A handle that has not been stopped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a graceful stop: stop accepting and reading, finish what was received, flush.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.flipped.notify();
    }

    /// True once [`StopHandle::stop`] has been called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Resolves once [`StopHandle::stop`] has been called (from any thread), without polling.
    pub(crate) async fn stopped(&self) {
        loop {
            let flipped = self.inner.flipped.wait();
            if self.is_stopped() {
                return;
            }
            flipped.await;
        }
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
    fn a_stop_from_another_thread_ends_the_wait_on_a_core() {
        let stop = StopHandle::new();
        let remote = stop.clone();
        let woke = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let waiting = glommio::spawn_local(async move {
                    stop.stopped().await;
                    std::time::Instant::now()
                });
                // The watcher is asleep (no timer of its own) when the stop comes.
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                let asked = std::time::Instant::now();
                std::thread::spawn(move || remote.stop()).join().unwrap();
                let woke = waiting.await;
                woke >= asked
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(woke, "the wait ended before the stop was asked for");
    }

    #[test]
    fn a_shutdown_fires_once_for_every_clone() {
        let s = Shutdown::new();
        let other = s.clone();
        assert!(!other.is_triggered());
        s.trigger();
        assert!(other.is_triggered());
    }
}
