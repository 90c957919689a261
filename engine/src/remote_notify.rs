//! A wake-up sent from any thread to tasks waiting on the cores.
//!
//! Two things reach a core from outside its executor: a stop request (a signal thread, the
//! embedding program) and a checkpoint request (the coordinator thread). Both used to be
//! polled with timers (every 10 ms and every 1 ms), which woke every idle core a hundred to a
//! thousand times a second to find nothing. A [`RemoteNotify`] lets the waiting task sleep
//! until the other thread says something changed: the waker it leaves is a glommio task waker,
//! and waking it from another thread queues it on its executor and writes that executor's
//! eventfd, which is what an idle core sleeps on. (Within one core, [`crate::notify::Notify`]
//! does the same without a lock.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// Wakes, from any thread, every task waiting on it.
///
/// Each waiting task leaves one waker, and a task that waits again replaces its own (glommio
/// wakers of one task compare equal with `will_wake`). A wait that is dropped unresolved (raced
/// with `or`, or its task cancelled) takes its waker back out, on its own thread: no waker of a
/// finished task is left for another thread to wake or drop after its executor is gone. A task
/// has at most one wait on a given `RemoteNotify` at a time (the two in this crate do).
#[derive(Debug, Default)]
pub(crate) struct RemoteNotify {
    generation: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl RemoteNotify {
    /// Wakes every task waiting now, and resolves every [`RemoteNotify::wait`] created before.
    pub(crate) fn notify(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let wakers = std::mem::take(&mut *self.lock());
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves at the first [`RemoteNotify::notify`] after this call. Create it *before*
    /// looking at the state the notification is about, so a change made in between is not
    /// missed.
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        RemoteWait {
            notify: self,
            seen: self.generation.load(Ordering::Acquire),
            registered: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        // The lock guards only a list of wakers: a panic elsewhere leaves it usable.
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakers held (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().len()
    }
}

struct RemoteWait<'a> {
    notify: &'a RemoteNotify,
    seen: u64,
    /// The waker this wait left in the list, to take out if it is dropped unresolved.
    registered: Option<Waker>,
}

impl Future for RemoteWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (notify, seen) = (self.notify, self.seen);
        let changed = || notify.generation.load(Ordering::Acquire) != seen;
        if changed() {
            return Poll::Ready(());
        }
        let mut wakers = notify.lock();
        // Checked again under the lock: a notify that bumped the generation after the check
        // above has either taken the list already (and this sees its bump) or will take it
        // with this waker in it.
        if changed() {
            return Poll::Ready(());
        }
        match wakers.iter_mut().find(|w| w.will_wake(cx.waker())) {
            Some(w) => w.clone_from(cx.waker()),
            None => wakers.push(cx.waker().clone()),
        }
        drop(wakers);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RemoteWait<'_> {
    fn drop(&mut self) {
        if let Some(mine) = self.registered.take() {
            // Gone already if a notify took the list; then this removes nothing.
            self.notify.lock().retain(|w| !w.will_wake(&mine));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_notify_from_another_thread_wakes_the_waiter_once_and_dropped_waits_leave_nothing() {
        let counter = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let n = Arc::new(RemoteNotify::default());
        let mut kept = Vec::new();
        for _ in 0..1000 {
            let mut w = Box::pin(n.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            kept.push(w);
        }
        assert_eq!(
            n.waiting(),
            1,
            "one task leaves one waker, however often it waits"
        );
        drop(kept);
        assert_eq!(n.waiting(), 0, "dropped waits take their waker back");
        let mut w = Box::pin(n.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        let other = n.clone();
        std::thread::spawn(move || other.notify()).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert_eq!(n.waiting(), 0);
    }

    #[test]
    fn a_notify_between_creating_a_wait_and_polling_it_is_not_missed() {
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let n = RemoteNotify::default();
        let mut w = Box::pin(n.wait());
        n.notify();
        assert!(w.as_mut().poll(&mut cx).is_ready());
        let mut later = Box::pin(n.wait());
        assert!(later.as_mut().poll(&mut cx).is_pending());
    }
}
