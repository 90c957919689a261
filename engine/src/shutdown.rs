//! Shutdown: how a running engine is told to stop, and how each core's tasks hear it.
//!
//! [`StopHandle`] is the cross-thread switch (a signal handler or the embedding program flips
//! it). Each core runs a small watcher that notices the switch and fires that core's
//! [`Shutdown`], a single-threaded broadcast that every task awaiting input selects on. On
//! shutdown the sources stop reading, the frames already received are finished, every core tells
//! its peers it is done, and the sinks flush before the core exits.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

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
///
/// ```
/// use bettong_engine::shutdown::Shutdown;
/// let s = Shutdown::new();
/// assert!(!s.is_triggered());
/// s.trigger();
/// assert!(s.is_triggered());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    inner: Rc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    triggered: Cell<bool>,
    /// Wakers of pending waits, by slot; a wait frees its slot when dropped, so tasks that come
    /// and go (connections) leave nothing behind.
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// An untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the shutdown and wakes every task waiting for it.
    pub fn trigger(&self) {
        if !self.inner.triggered.replace(true) {
            for w in self.inner.waiters.borrow_mut().iter_mut() {
                if let Some(w) = w.take() {
                    w.wake();
                }
            }
        }
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Resolves when the shutdown fires.
    pub fn wait(&self) -> impl Future<Output = ()> + 'static {
        Wait {
            inner: self.inner.clone(),
            slot: None,
        }
    }
}

struct Wait {
    inner: Rc<Inner>,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.triggered.get() {
            return Poll::Ready(());
        }
        let waker = Some(cx.waker().clone());
        match self.slot {
            Some(i) => self.inner.waiters.borrow_mut()[i] = waker,
            None => {
                let mut waiters = self.inner.waiters.borrow_mut();
                let i = match self.inner.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = waker;
                        i
                    }
                    None => {
                        waiters.push(waker);
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.inner.waiters.borrow_mut()[i] = None;
            self.inner.free.borrow_mut().push(i);
        }
    }
}
