//! A reusable wake-up between the tasks of one core: `wait()` resolves at the next `notify()`.
//!
//! glommio's local channel does not let a producer wait for room without giving up its item,
//! and giving up the item would let a later producer overtake it. The sink queue therefore waits
//! for room with this, then enqueues synchronously, which keeps every core's output in order.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting on it.
///
/// Each pending wait owns one slot for its waker and frees it when dropped, so a wait that is
/// raced against something else (`or`) and abandoned leaves nothing behind, however often.
#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Notify {
    /// Wakes every current waiter.
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Resolves at the first `notify()` after this future is first polled.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        Wait {
            notify: self,
            seen: None,
            slot: None,
        }
    }

    /// Waiting slots in use (for tests).
    #[cfg(test)]
    fn slots_in_use(&self) -> usize {
        self.waiters.borrow().len() - self.free.borrow().len()
    }
}

struct Wait<'a> {
    notify: &'a Notify,
    seen: Option<u64>,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = self.notify.generation.get();
        if matches!(self.seen, Some(g) if g != now) {
            return Poll::Ready(());
        }
        self.seen.get_or_insert(now);
        let waker = Some(cx.waker().clone());
        let mut waiters = self.notify.waiters.borrow_mut();
        match self.slot {
            Some(i) => waiters[i] = waker,
            None => {
                let i = match self.notify.free.borrow_mut().pop() {
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

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.notify.waiters.borrow_mut()[i] = None;
            self.notify.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn abandoned_waits_leave_no_waker_behind_and_notify_wakes_pending_ones() {
        let counter = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let n = Notify::default();
        for _ in 0..10_000 {
            let mut w = Box::pin(n.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(n.slots_in_use(), 0, "dropped waits must free their slots");
        let mut w = Box::pin(n.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        n.notify();
        assert_eq!(counter.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(w.as_mut().poll(&mut cx).is_ready());
    }
}
