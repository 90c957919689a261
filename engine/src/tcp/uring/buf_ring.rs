//! One core's provided-buffer ring: the receive buffers the kernel picks from.
//!
//! A multishot receive does not name a buffer. When bytes arrive, the kernel takes the next free
//! buffer of a *buffer group* (here: a ring of `count` buffers of `size` bytes each, registered
//! with `IORING_REGISTER_PBUF_RING`), copies the bytes into it and posts a completion naming the
//! buffer id. Until the application hands that id back, the buffer is the application's: the
//! frames in it are decoded in place, straight from the memory the kernel filled.
//!
//! Two pieces of memory are involved: the ring of [`BufRingEntry`] descriptors, shared with the
//! kernel (it reads entries up to the tail we publish), and the buffers themselves. Both are
//! allocated here and freed only after the ring was unregistered (see `Ring`'s `Drop`), so the
//! kernel never writes into memory that has gone back to the allocator.
//!
//! When every buffer is taken (the connections of this core are slower than their senders), the
//! kernel ends multishot receives with `ENOBUFS` instead of posting more data, and the bytes stay
//! in the sockets, where TCP flow control pushes back on the senders. A connection re-arms its
//! receive once buffers come back: [`BufRing::wait_available`].

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

use crate::notify::Notify;

/// The page size the kernel requires the descriptor ring to be aligned to (at least).
const RING_ALIGN: usize = 4096;

// The kernel's `struct io_uring_buf`: addr u64, len u32, bid u16, resv u16 (the tail, in entry 0).
const _: () = assert!(std::mem::size_of::<BufRingEntry>() == 16);

/// A registered group of equally sized receive buffers.
pub(crate) struct BufRing {
    bgid: u16,
    /// `count` descriptors, page aligned, zeroed at allocation (the tail starts at 0).
    entries: NonNull<BufRingEntry>,
    entries_layout: Layout,
    /// `count * size` bytes of buffers; buffer `bid` starts at `bid * size`.
    data: NonNull<u8>,
    data_layout: Layout,
    size: u32,
    count: u16,
    /// Our copy of the tail: the next descriptor slot to fill.
    tail: Cell<u16>,
    /// Buffers the kernel may still fill (published and not yet seen in a completion).
    in_kernel: Cell<u32>,
    /// Notified when a buffer goes back to the kernel while the ring was empty.
    returned: Notify,
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes for buffer group `bgid`. `count` must be a power
    /// of two no larger than 32768 (the kernel's limit), `size` at least 1.
    pub(crate) fn new(bgid: u16, count: u16, size: u32) -> io::Result<BufRing> {
        if count == 0 || !count.is_power_of_two() || count > 1 << 15 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer ring needs a power-of-two count of at most 32768 buffers of at least \
                     1 byte (asked for {count} buffers of {size} bytes)"
                ),
            ));
        }
        let oom = |what: &str| io::Error::new(io::ErrorKind::OutOfMemory, what.to_string());
        let entries_layout = Layout::array::<BufRingEntry>(count as usize)
            .and_then(|l| l.align_to(RING_ALIGN))
            .map_err(|_| oom("buffer ring descriptors do not fit in memory"))?;
        let data_layout = Layout::from_size_align(count as usize * size as usize, 64)
            .map_err(|_| oom("receive buffers do not fit in memory"))?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1, 16-byte entries).
        // The descriptors must start zeroed: the kernel reads the tail from the first one.
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) })
            .ok_or_else(|| oom("cannot allocate the buffer ring descriptors"))?
            .cast::<BufRingEntry>();
        // SAFETY: as above; the buffers need no initial contents (the kernel writes before we read).
        let data = match NonNull::new(unsafe { alloc::alloc(data_layout) }) {
            Some(d) => d,
            None => {
                // SAFETY: allocated just above with this layout, not shared with anyone yet.
                unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
                return Err(oom("cannot allocate the receive buffers"));
            }
        };
        Ok(BufRing {
            bgid,
            entries,
            entries_layout,
            data,
            data_layout,
            size,
            count,
            tail: Cell::new(0),
            in_kernel: Cell::new(0),
            returned: Notify::default(),
        })
    }

    /// The buffer group id receives name.
    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Registers the ring with `submitter`'s io_uring and hands every buffer to the kernel.
    ///
    /// # Safety
    /// `self` must stay alive, at the same address, until the group is unregistered from that
    /// io_uring (or the io_uring is gone): the kernel reads the descriptors and writes the buffers.
    pub(crate) unsafe fn register(&self, submitter: &Submitter<'_>) -> io::Result<()> {
        // SAFETY: the descriptor memory holds `count` zeroed entries and lives as long as `self`,
        // which the caller keeps alive until the group is unregistered.
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.as_ptr() as u64,
                self.count,
                self.bgid,
                0,
            )?;
        }
        for bid in 0..self.count {
            self.push(bid);
        }
        self.publish();
        Ok(())
    }

    /// Records that the kernel filled buffer `bid` with `len` bytes (seen in a completion), and
    /// returns it as a [`Buf`] that gives it back when dropped.
    pub(crate) fn take(self: &Rc<Self>, bid: u16, len: usize) -> Buf {
        assert!(
            bid < self.count && len <= self.size as usize,
            "kernel reported buffer {bid} with {len} bytes, outside a ring of {} x {} bytes",
            self.count,
            self.size
        );
        self.in_kernel.set(self.in_kernel.get().saturating_sub(1));
        Buf {
            ring: self.clone(),
            bid,
            len,
        }
    }

    /// True when the kernel has at least one buffer to receive into (as far as the completions
    /// seen so far tell).
    pub(crate) fn available(&self) -> bool {
        self.in_kernel.get() > 0
    }

    /// Resolves once a buffer is available to the kernel.
    pub(crate) async fn wait_available(&self) {
        while !self.available() {
            self.returned.wait().await;
        }
    }

    /// Hands buffer `bid` back to the kernel.
    fn give_back(&self, bid: u16) {
        self.push(bid);
        self.publish();
        if self.in_kernel.get() == 1 {
            self.returned.notify();
        }
    }

    /// Writes the descriptor of buffer `bid` at our tail (not yet visible to the kernel).
    fn push(&self, bid: u16) {
        debug_assert!(bid < self.count);
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: `bid < count`, so the buffer lies inside the data allocation.
        let addr = unsafe { self.data.as_ptr().add(bid as usize * self.size as usize) };
        // SAFETY: `slot < count`, so the entry is inside the descriptor allocation, and entries
        // are 16-byte aligned (the allocation is page-aligned; `ENTRY` is checked). The kernel
        // reads only the entries between its head and the published tail, and this slot is at
        // or past the published tail, so nobody else accesses these fields now. No reference to
        // the entry is made: entry 0's last two bytes are the shared tail, which the kernel reads
        // concurrently, so only the `addr`, `len` and `bid` fields (bytes 0..14 of the kernel's
        // `struct io_uring_buf`) are written, through raw pointers.
        unsafe {
            let entry = self.entries.as_ptr().add(slot) as *mut u8;
            entry.cast::<u64>().write(addr as u64);
            entry.add(8).cast::<u32>().write(self.size);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail.set(tail.wrapping_add(1));
        self.in_kernel.set(self.in_kernel.get() + 1);
    }

    /// Makes every pushed descriptor visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field is the `resv` u16 of the first, initialised descriptor of a
        // page-aligned ring, as `BufRingEntry::tail` requires; u16 and AtomicU16 share a layout,
        // and the kernel only ever reads this field (with acquire ordering).
        let tail = unsafe { &*(BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16) };
        tail.store(self.tail.get(), Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both blocks were allocated in `new` with these layouts. The kernel no longer
        // uses them: the owning `Ring` cancels every request and unregisters the group before it
        // drops its reference, and every `Buf` holds a reference, so none is outstanding.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}

/// A buffer the kernel filled, lent to the application until dropped.
pub(crate) struct Buf {
    ring: Rc<BufRing>,
    bid: u16,
    len: usize,
}

impl Buf {
    /// The bytes the kernel put in this buffer.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` (<= size, checked in `take`) bytes at this buffer before
        // posting the completion that named it, and does not touch the buffer again until it is
        // handed back in `drop`. Each id is lent to at most one `Buf` at a time (the kernel hands
        // an id out once per publication), so no `&mut` to these bytes exists meanwhile.
        unsafe {
            std::slice::from_raw_parts(
                self.ring
                    .data
                    .as_ptr()
                    .add(self.bid as usize * self.ring.size as usize),
                self.len,
            )
        }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.ring.give_back(self.bid);
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf(bid {}, {} bytes)", self.bid, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_counts_the_kernel_would_refuse() {
        assert!(BufRing::new(0, 0, 64).is_err());
        assert!(BufRing::new(0, 3, 64).is_err());
        assert!(BufRing::new(0, 4, 0).is_err());
        assert!(BufRing::new(0, 4, 64).is_ok());
    }

    #[test]
    fn descriptors_wrap_and_the_tail_is_published() {
        let ring = Rc::new(BufRing::new(7, 4, 16).unwrap());
        for bid in 0..4 {
            ring.push(bid);
        }
        ring.publish();
        assert!(ring.available());
        // The kernel "fills" every buffer; lending them out empties the ring.
        let bufs: Vec<Buf> = (0..4).map(|bid| ring.take(bid, 16)).collect();
        assert!(!ring.available());
        drop(bufs);
        assert_eq!(ring.tail.get(), 8);
        // SAFETY: reading our own descriptors in a test, no kernel attached.
        let e = unsafe { &*ring.entries.as_ptr().add(1) };
        assert_eq!((e.bid(), e.len()), (1, 16));
        // SAFETY: as above.
        let published = unsafe { *BufRingEntry::tail(ring.entries.as_ptr()) };
        assert_eq!(published, 8);
    }
}
