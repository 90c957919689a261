//! Balancing a TCP source's connections across the cores.
//!
//! Every core listens on the same address (SO_REUSEPORT) and the kernel picks the core of each
//! connection by a hash of its addresses and ports: with few connections that is often uneven
//! (4 connections on 2 cores split 3–1 or 4–0 half the time), and the core with the most does
//! all the reading. So a core that accepts a connection while another core has fewer open
//! ([`OpenCounts::place`]) hands it over: the accepted socket travels on the ring to that core
//! ([`Handoff`], as an `Envelope::Connection`), which adopts it ([`Inbox`]) and reads it as if it
//! had accepted it. Each core counts the connections it hands over in `connections_handed_off`
//! and those it serves in `connections_accepted`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::notify::Notify;

/// An accepted connection on its way to the core that will read it.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// The pipeline's source it belongs to.
    pub source: usize,
    /// The accepted socket.
    pub fd: OwnedFd,
    /// Its peer.
    pub peer: SocketAddr,
}

/// One TCP source's open connections per core, shared by the cores.
#[derive(Debug)]
pub(crate) struct OpenCounts(Box<[AtomicUsize]>);

impl OpenCounts {
    /// No connection open on any of `cores` cores.
    pub(crate) fn new(cores: usize) -> Self {
        OpenCounts((0..cores).map(|_| AtomicUsize::new(0)).collect())
    }

    /// Core `me` accepted a connection: picks the core to read it (the one with the fewest
    /// open, if it has fewer than `me`; ties go to `me`, then to the lowest index) and counts
    /// it there.
    pub(crate) fn place(&self, me: usize) -> usize {
        let mut best = me;
        let mut fewest = self.0[me].load(Relaxed);
        for (core, open) in self.0.iter().enumerate() {
            let open = open.load(Relaxed);
            if open < fewest {
                (best, fewest) = (core, open);
            }
        }
        self.0[best].fetch_add(1, Relaxed);
        best
    }

    /// A connection placed on `from` stays on (or moves to) `to` after all.
    pub(crate) fn moved(&self, from: usize, to: usize) {
        if from != to {
            self.0[to].fetch_add(1, Relaxed);
            self.closed(from);
        }
    }

    /// A connection on `core` ended.
    pub(crate) fn closed(&self, core: usize) {
        let _ = self.0[core].fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Each core's open connections.
    #[cfg(test)]
    pub(crate) fn open(&self) -> Vec<usize> {
        self.0.iter().map(|n| n.load(Relaxed)).collect()
    }
}

/// Connections other cores handed to this core, until its sources adopt them.
#[derive(Default)]
pub(crate) struct Inbox {
    queue: RefCell<VecDeque<Handoff>>,
    arrived: Notify,
}

impl Inbox {
    /// A peer handed a connection over.
    pub(crate) fn push(&self, h: Handoff) {
        self.queue.borrow_mut().push_back(h);
        self.arrived.notify();
    }

    /// The next connection handed over for `source`.
    pub(crate) async fn next(&self, source: usize) -> Handoff {
        loop {
            let found = {
                let mut q = self.queue.borrow_mut();
                q.iter()
                    .position(|h| h.source == source)
                    .and_then(|i| q.remove(i))
            };
            if let Some(h) = found {
                return h;
            }
            self.arrived.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_core_with_the_fewest_open() {
        let c = OpenCounts::new(3);
        // Every connection accepted by core 0: spread round the cores.
        let placed: Vec<usize> = (0..6).map(|_| c.place(0)).collect();
        assert_eq!(placed, [0, 1, 2, 0, 1, 2]);
        assert_eq!(c.open(), [2, 2, 2]);
        c.closed(1);
        assert_eq!(c.place(2), 1);
        // A tie keeps the connection where it was accepted.
        assert_eq!(c.place(2), 2);
        c.moved(2, 0);
        assert_eq!(c.open(), [3, 2, 2]);
        c.closed(1);
        c.closed(1);
        c.closed(1); // never below zero
        assert_eq!(c.open(), [3, 0, 2]);
    }
}
