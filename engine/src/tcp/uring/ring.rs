//! One core's own io_uring, and the bridge that lets glommio sleep on it.
//!
//! glommio keeps its io_uring to itself, so the sockets of the io_uring source live on a second
//! ring per core, owned by that core's executor thread ([`Ring`]). Every request submitted to it
//! is an [`Op`]: a slot in the ring's table, named by the request's `user_data`, that queues the
//! request's completions (a multishot request posts many) until the task that owns the `Op`
//! takes them.
//!
//! The ring is set up with `SINGLE_ISSUER | DEFER_TASKRUN`: the kernel runs the receives whose
//! data has arrived (copying it into provided buffers) only when this core asks, in one enter
//! for all of them. Completions are reaped by whoever gets there first: a task about to wait on
//! its `Op` looks at the ring itself (a couple of loads when nothing is there), so a busy core
//! never waits for a wake-up. When the core has nothing to do, the ring's eventfd
//! (`IORING_REGISTER_EVENTFD`, written by the kernel when work for this ring comes in) wakes it:
//! the [`Ring::drive`] task awaits that eventfd through a glommio `BufferedFile` read, which
//! glommio submits to its own ring (exactly how glommio waits on its own wake-up eventfd). An
//! idle core therefore parks in glommio's `io_uring_enter` like any other idle glommio core: the
//! source ring adds no spinning and no timer of its own (nor does the runtime: a stop request
//! and a checkpoint request wake the core through a `RemoteNotify`). While a task reaps, the
//! eventfd is switched off
//! (`IORING_CQ_EVENTFD_DISABLED`), so a busy core does not pay for wake-ups it does not need.
//!
//! Memory safety rests on one rule: a request's memory lives at least as long as the request.
//! Buffers a request reads are kept in its slot until its last completion (an `Op` dropped early
//! cancels its request and leaves the slot behind until then), receive buffers belong to the
//! ring's [`BufRing`], and dropping the ring first cancels every request synchronously and
//! unregisters the buffer group.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_lite::future::or;
use glommio::io::BufferedFile;
use io_uring::types::{CancelBuilder, Timespec};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf_ring::{Buf, BufRing};
use crate::shutdown::Shutdown;

/// `user_data` of requests whose completion nobody waits for (cancellations).
const IGNORED: u64 = u64::MAX;

/// How a core's ring is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingParams {
    /// Submission queue entries (the completion queue gets four times as many, and more if the
    /// buffers need it).
    pub entries: u32,
    /// Provided receive buffers (a power of two; 0 for a ring that receives nothing).
    pub buf_count: u16,
    /// Bytes per provided buffer.
    pub buf_size: u32,
}

/// One completion of a request: its result, its flags and, for a receive, the buffer it filled.
#[derive(Debug)]
pub(crate) struct Completion {
    /// The request's result: bytes or a file descriptor, or a negated errno.
    pub res: i32,
    /// `IORING_CQE_F_*`.
    pub flags: u32,
    /// The provided buffer holding the received bytes; it goes back to the kernel when dropped.
    pub buf: Option<Buf>,
    /// When this core reaped it: the bytes' arrival as the core sees it.
    pub at: Instant,
}

impl Completion {
    /// True when the request posts more completions after this one.
    pub(crate) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The result as an I/O error, when it is one.
    pub(crate) fn error(&self) -> Option<io::Error> {
        (self.res < 0).then(|| io::Error::from_raw_os_error(-self.res))
    }
}

/// A core's io_uring for sockets.
pub(crate) struct Ring {
    uring: RefCell<IoUring>,
    ops: RefCell<OpTable>,
    bufs: Option<Rc<BufRing>>,
    /// The eventfd the kernel signals on each completion, as a glommio file to await; taken by
    /// [`Ring::drive`].
    eventfd: RefCell<Option<BufferedFile>>,
    /// Fired by [`Ring::close`]: the driver stops. (A one-shot whose waits free their waker when
    /// dropped: the driver selects on it once per wake-up, and a waker left behind each time
    /// would overflow glommio's task reference count within seconds.)
    closed: Shutdown,
    /// Times the driver woke up on the eventfd.
    wakeups: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
    /// Multishot receives re-armed after the kernel ended them (mostly: no buffer was left).
    rearmed: Cell<u64>,
    /// Tests: make the next enter after an entry was queued fail, as the kernel can.
    #[cfg(test)]
    pub(crate) fail_next_enter: Cell<bool>,
}

impl Ring {
    /// Builds this core's ring, registers its eventfd and receive buffers. Must run on a glommio
    /// executor (the eventfd is awaited through it).
    pub(crate) fn new(params: RingParams) -> io::Result<Rc<Ring>> {
        let cq = (params.entries * 4)
            .max(params.buf_count as u32 * 2)
            .max(64);
        // The core's thread is the only submitter, and completions are run when it asks for
        // them (DEFER_TASKRUN) rather than by interrupting it as they happen: a whole batch of
        // receives is then copied in one enter. This needs Linux 6.1, which also has everything
        // else this source uses (provided-buffer rings, multishot accept and receive, sync
        // cancel), so a kernel that refuses it gets the glommio backend instead
        // ([`crate::tcp::listen`] says so).
        // `BETTONG_URING_DEFER=0` (a measurement knob, see tuning.md) leaves DEFER_TASKRUN off:
        // the kernel then runs a receive's completion as soon as it can, interrupting the
        // thread (or ending its sleep), instead of waiting for this core's next enter.
        let defer = std::env::var("BETTONG_URING_DEFER").map_or(true, |v| v != "0");
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq).setup_single_issuer();
        if defer {
            builder.setup_defer_taskrun().setup_taskrun_flag();
        }
        let uring = builder
            .build(params.entries)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "this kernel refuses an io_uring with DEFER_TASKRUN ({e}); the io_uring \
                         source needs Linux 6.1 or later"
                    ),
                ),
                _ => e,
            })?;
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns. It stays blocking: glommio's read of it must wait, not fail.
        let fd: RawFd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the descriptor just created, owned by nobody else; the file closes it.
        let eventfd = unsafe { BufferedFile::from_raw_fd(fd) };
        uring.submitter().register_eventfd(fd)?;
        let bufs = match params.buf_count {
            0 => None,
            n => {
                let bufs = Rc::new(BufRing::new(0, n, params.buf_size)?);
                // SAFETY: the ring holds this `Rc` until its `Drop`, which unregisters the group
                // before the reference is released, so the memory outlives the registration.
                unsafe { bufs.register(&uring.submitter())? };
                Some(bufs)
            }
        };
        Ok(Rc::new(Ring {
            uring: RefCell::new(uring),
            ops: RefCell::new(OpTable::default()),
            bufs,
            eventfd: RefCell::new(Some(eventfd)),
            closed: Shutdown::new(),
            wakeups: Cell::new(0),
            wakers: RefCell::new(Vec::new()),
            rearmed: Cell::new(0),
            #[cfg(test)]
            fail_next_enter: Cell::new(false),
        }))
    }

    /// Counts a multishot receive re-armed after the kernel ended it.
    pub(crate) fn note_rearm(&self) {
        self.rearmed.set(self.rearmed.get() + 1);
    }

    /// Multishot receives re-armed so far.
    #[cfg(test)]
    pub(crate) fn rearmed(&self) -> u64 {
        self.rearmed.get()
    }

    /// The receive buffers, if this ring has any.
    pub(crate) fn bufs(&self) -> Option<&Rc<BufRing>> {
        self.bufs.as_ref()
    }

    /// Starts accepting connections on the listening socket `fd`, one completion per connection.
    pub(crate) fn accept_multi(self: &Rc<Self>, fd: RawFd) -> io::Result<Op> {
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build();
        // SAFETY: a multishot accept without an address buffer reads no memory of ours.
        unsafe { self.submit(entry, None) }
    }

    /// Starts receiving on the connected socket `fd` into the provided buffers, one completion
    /// per filled buffer.
    pub(crate) fn recv_multi(self: &Rc<Self>, fd: RawFd) -> io::Result<Op> {
        let bufs = self.bufs.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this ring has no receive buffers",
            )
        })?;
        let entry = opcode::RecvMulti::new(types::Fd(fd), bufs.bgid()).build();
        // SAFETY: the receive writes only into the provided buffers, which the ring owns and
        // keeps registered until every request is gone (see `Drop`).
        unsafe { self.submit(entry, None) }
    }

    /// Sends `data[offset..]` on the connected socket `fd` (zero-copy when `zero_copy`). The
    /// request holds a reference to the bytes until its last completion. Only the measurement
    /// that kept the sink on `send(2)` uses it (see the tests).
    #[cfg(test)]
    pub(crate) fn send(
        self: &Rc<Self>,
        fd: RawFd,
        data: Rc<[u8]>,
        offset: usize,
        zero_copy: bool,
    ) -> io::Result<Op> {
        let rest = &data[offset.min(data.len())..];
        let (ptr, len) = (rest.as_ptr(), rest.len().min(u32::MAX as usize) as u32);
        let entry = if zero_copy {
            opcode::SendZc::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        // SAFETY: `ptr..ptr+len` lies in the shared slice, which cannot move or change while a
        // reference to it exists, and the request's slot holds one until its last completion
        // (for a zero-copy send, its notification).
        unsafe { self.submit(entry, Some(Box::new(data))) }
    }

    /// Queues `entry` in a new slot and submits it.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the request's last completion: it points
    /// into `keep` (which the slot holds until then) or into memory the ring owns.
    unsafe fn submit(
        self: &Rc<Self>,
        entry: squeue::Entry,
        keep: Option<Box<dyn Any>>,
    ) -> io::Result<Op> {
        let key = self.ops.borrow_mut().insert(keep);
        let entry = entry.user_data(key);
        // SAFETY: the caller guarantees the entry's pointers outlive the request.
        if let Err(e) = unsafe { self.push(&entry) } {
            self.ops.borrow_mut().free(key);
            return Err(e);
        }
        Ok(Op {
            ring: self.clone(),
            key,
        })
    }

    /// Pushes one entry and submits it (submitting first if the queue is full). An error means
    /// the entry was never queued, so the kernel cannot see it and its slot may be freed. Once
    /// it is queued the kernel may take it at any later enter, so it counts as submitted even if
    /// this enter fails: the failure is logged, the entry stays queued, and the next enter (the
    /// next request, or the driver's next reap) takes it in.
    ///
    /// # Safety
    /// As for [`Ring::submit`].
    unsafe fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut uring = self.uring.borrow_mut();
        loop {
            // SAFETY: the caller guarantees the entry's pointers stay valid until completion.
            let pushed = unsafe { uring.submission().push(entry) };
            if pushed.is_ok() {
                break;
            }
            uring.submit()?;
        }
        if let Err(e) = self.enter(&mut uring) {
            tracing::warn!(
                "io_uring submit failed ({e}); the request stays queued and goes in with the \
                 next submission"
            );
        }
        Ok(())
    }

    /// Submits what is queued (and collects deferred completions).
    fn enter(&self, uring: &mut IoUring) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_next_enter.replace(false) {
            return Err(io::Error::from_raw_os_error(libc::EINTR));
        }
        uring.submit()
    }

    /// Asks the kernel to cancel the request with `key` (its last completion says when it is).
    fn cancel(&self, key: u64) {
        let entry = opcode::AsyncCancel::new(key).build().user_data(IGNORED);
        // SAFETY: a cancellation reads no memory of ours.
        if let Err(e) = unsafe { self.push(&entry) } {
            tracing::warn!("cannot submit an io_uring cancellation: {e}");
        }
    }

    /// Moves every posted completion to its request's slot and wakes the tasks waiting on them.
    /// Returns the number of completions seen.
    pub(crate) fn reap(&self) -> usize {
        let mut wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        let mut seen = 0;
        {
            let mut uring = self.uring.borrow_mut();
            loop {
                // While this core collects completions itself, the eventfd signals the kernel
                // would send for them are wasted (each costs a glommio completion and a driver
                // pass): hold them off, and look again once they are back on, for anything
                // that arrived meanwhile.
                uring.completion().disable_eventfd();
                // Deferred completions and completions that overflowed the queue reach it only
                // through an enter with GETEVENTS, which `submit` adds when these flags say so.
                // Entries a failed enter left queued go in here too.
                if self.kernel_has_more(&mut uring) || !uring.submission().is_empty() {
                    if let Err(e) = uring.submit() {
                        tracing::warn!("io_uring enter to collect completions failed: {e}");
                    }
                }
                let mut ops = self.ops.borrow_mut();
                let at = Instant::now();
                for cqe in uring.completion() {
                    seen += 1;
                    ops.complete(
                        cqe.user_data(),
                        cqe.result(),
                        cqe.flags(),
                        &self.bufs,
                        &mut wakers,
                        at,
                    );
                }
                drop(ops);
                uring.completion().enable_eventfd();
                // Pairs with the kernel's "set the flag or post, then read the eventfd switch".
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                if !self.kernel_has_more(&mut uring) && uring.completion().is_empty() {
                    break;
                }
            }
        }
        for w in wakers.drain(..) {
            w.wake();
        }
        *self.wakers.borrow_mut() = wakers;
        seen
    }

    /// True when the kernel holds completions that only an enter with GETEVENTS brings out:
    /// deferred ones (`IORING_SQ_TASKRUN`) or ones that overflowed the queue.
    fn kernel_has_more(&self, uring: &mut IoUring) -> bool {
        let sq = uring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// Reaps completions whenever the kernel signals some, until [`Ring::close`]. Spawn it once
    /// per ring, on the ring's core.
    pub(crate) async fn drive(self: Rc<Self>) {
        let Some(eventfd) = self.eventfd.borrow_mut().take() else {
            return;
        };
        let mut warned = false;
        loop {
            self.reap();
            if self.closed.is_triggered() {
                break;
            }
            let closed = self.closed.wait();
            let woke = or(
                async { Some(eventfd.read_at(0, 8).await.map(drop)) },
                async {
                    closed.await;
                    None
                },
            )
            .await;
            match woke {
                None => break,
                Some(Ok(())) => self.wakeups.set(self.wakeups.get() + 1),
                Some(Err(e)) => {
                    // Not expected on any kernel that got this far; stay correct, if slower.
                    if !warned {
                        tracing::warn!(
                            "cannot wait on the io_uring eventfd ({e}); polling the source ring \
                             every millisecond instead"
                        );
                        warned = true;
                    }
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
        self.reap();
        let _ = eventfd.close().await;
    }

    /// Stops [`Ring::drive`].
    pub(crate) fn close(&self) {
        self.closed.trigger();
    }

    /// Times the driver woke up on the eventfd so far.
    #[cfg(test)]
    pub(crate) fn wakeups(&self) -> u64 {
        self.wakeups.get()
    }

    /// A request that completes (with `ETIME`) after `ns` nanoseconds: tests use it to make the
    /// kernel post completions while the core sleeps.
    #[cfg(test)]
    pub(crate) fn timer(self: &Rc<Self>, ns: u32) -> io::Result<Op> {
        let ts = Box::new(Timespec::new().nsec(ns));
        let entry = opcode::Timeout::new(&*ts as *const Timespec).build();
        // SAFETY: the timespec is on the heap, kept in the request's slot until its completion.
        unsafe { self.submit(entry, Some(ts)) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let uring = self.uring.get_mut();
        // Normally every request finished before the last `Op` went. If not (a task was dropped
        // mid-request), cancel whatever is left and wait for it, so that no request can still
        // write into the receive buffers once they are freed.
        if self.ops.get_mut().live > 0 {
            let timeout = Timespec::new().sec(5);
            match uring
                .submitter()
                .register_sync_cancel(Some(timeout), CancelBuilder::any())
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cancelling io_uring requests on exit failed: {e}"),
            }
        }
        if let Some(b) = &self.bufs {
            if let Err(e) = uring.submitter().unregister_buf_ring(b.bgid()) {
                tracing::warn!("unregistering the receive buffers failed: {e}");
            }
        }
        let _ = uring.submitter().unregister_eventfd();
    }
}

/// A submitted request: the handle its task awaits completions through.
///
/// Dropping it before its last completion cancels the request; its slot (and any memory the
/// request uses) stays until the kernel confirms.
pub(crate) struct Op {
    ring: Rc<Ring>,
    key: u64,
}

impl Op {
    /// The next queued completion, without waiting.
    pub(crate) fn try_next(&self) -> Option<Completion> {
        self.ring.ops.borrow_mut().slot(self.key).queue.pop_front()
    }

    /// When the oldest queued completion was reaped, if one is queued.
    pub(crate) fn first_at(&self) -> Option<Instant> {
        self.ring
            .ops
            .borrow_mut()
            .slot(self.key)
            .queue
            .front()
            .map(|c| c.at)
    }

    /// True when a completion is queued (after looking at the completion queue).
    pub(crate) fn has_completion(&self) -> bool {
        if !self.ring.ops.borrow_mut().slot(self.key).queue.is_empty() {
            return true;
        }
        self.ring.reap();
        !self.ring.ops.borrow_mut().slot(self.key).queue.is_empty()
    }

    /// True once the request posted its last completion (some may still be queued).
    pub(crate) fn is_done(&self) -> bool {
        self.ring.ops.borrow_mut().slot(self.key).done
    }

    /// Resolves when a completion is queued or the request is finished.
    pub(crate) fn ready(&self) -> Ready<'_> {
        Ready { op: self }
    }

    /// The next completion, or None once the request is finished.
    pub(crate) async fn next(&self) -> Option<Completion> {
        self.ready().await;
        self.try_next()
    }

    /// Asks the kernel to end the request (once); its last completion follows.
    pub(crate) fn cancel(&self) {
        let first = {
            let mut ops = self.ring.ops.borrow_mut();
            let slot = ops.slot(self.key);
            !slot.done && !std::mem::replace(&mut slot.cancelled, true)
        };
        if first {
            self.ring.cancel(self.key);
        }
    }

    /// Cancels the request and waits for its last completion, dropping whatever it delivers.
    pub(crate) async fn finish(&self) {
        self.cancel();
        while self.next().await.is_some() {}
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let cancel = {
            let mut ops = self.ring.ops.borrow_mut();
            let slot = ops.slot(self.key);
            slot.queue.clear();
            if slot.done {
                ops.free(self.key);
                false
            } else {
                slot.orphan = true;
                !std::mem::replace(&mut slot.cancelled, true)
            }
        };
        if cancel {
            self.ring.cancel(self.key);
        }
    }
}

/// [`Op::ready`].
pub(crate) struct Ready<'a> {
    op: &'a Op,
}

impl Future for Ready<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let op = self.op;
        let ready = |ops: &mut OpTable| {
            let slot = ops.slot(op.key);
            slot.done || !slot.queue.is_empty()
        };
        if ready(&mut op.ring.ops.borrow_mut()) {
            return Poll::Ready(());
        }
        op.ring.reap();
        let mut ops = op.ring.ops.borrow_mut();
        if ready(&mut ops) {
            return Poll::Ready(());
        }
        ops.slot(op.key).waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The requests in flight on one ring, by slot.
#[derive(Default)]
struct OpTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots in use.
    live: usize,
}

#[derive(Default)]
struct Slot {
    /// Bumped each time the slot is freed, so a stale `user_data` never matches a new request.
    generation: u32,
    in_use: bool,
    queue: VecDeque<Completion>,
    waker: Option<Waker>,
    /// The last completion (one without `IORING_CQE_F_MORE`) was posted.
    done: bool,
    cancelled: bool,
    /// The `Op` was dropped: completions are discarded and the slot freed at the last one.
    orphan: bool,
    /// Memory the request uses, kept until its last completion.
    keep: Option<Box<dyn Any>>,
}

impl OpTable {
    fn insert(&mut self, keep: Option<Box<dyn Any>>) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.in_use = true;
        slot.keep = keep;
        self.live += 1;
        (u64::from(slot.generation) << 32) | u64::from(index)
    }

    /// The slot of a live `Op`.
    fn slot(&mut self, key: u64) -> &mut Slot {
        let slot = &mut self.slots[(key & 0xffff_ffff) as usize];
        debug_assert!(slot.in_use && u64::from(slot.generation) == key >> 32);
        slot
    }

    fn free(&mut self, key: u64) {
        let index = (key & 0xffff_ffff) as u32;
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation.wrapping_add(1);
        *slot = Slot {
            generation,
            ..Slot::default()
        };
        self.free.push(index);
        self.live -= 1;
    }

    fn complete(
        &mut self,
        key: u64,
        res: i32,
        flags: u32,
        bufs: &Option<Rc<BufRing>>,
        wakers: &mut Vec<Waker>,
        at: Instant,
    ) {
        if key == IGNORED {
            return;
        }
        let buf = match (cqueue::buffer_select(flags), bufs) {
            (Some(bid), Some(bufs)) => Some(bufs.take(bid, res.max(0) as usize)),
            _ => None,
        };
        let index = (key & 0xffff_ffff) as usize;
        let Some(slot) = self
            .slots
            .get_mut(index)
            .filter(|s| s.in_use && u64::from(s.generation) == key >> 32)
        else {
            tracing::error!("io_uring completion for an unknown request {key:#x} (res {res})");
            return;
        };
        let last = !cqueue::more(flags);
        if slot.orphan {
            drop(buf);
            if last {
                self.free(key);
            }
            return;
        }
        slot.queue.push_back(Completion {
            res,
            flags,
            buf,
            at,
        });
        slot.done |= last;
        if let Some(w) = slot.waker.take() {
            wakers.push(w);
        }
    }
}
