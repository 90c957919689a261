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
#[derive(Debug, Default)]
pub(crate) struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every current waiter.
    pub(crate) fn notify(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the first `notify()` after this future is first polled.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        Wait {
            notify: self,
            seen: None,
        }
    }
}

struct Wait<'a> {
    notify: &'a Notify,
    seen: Option<u64>,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = self.notify.generation.get();
        match self.seen {
            Some(g) if g != now => Poll::Ready(()),
            _ => {
                self.seen.get_or_insert(now);
                self.notify.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
