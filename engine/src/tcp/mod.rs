//! The TCP source: each core's listener and connections, over one of two byte backends.
//!
//! Every core binds the same address with SO_REUSEPORT, so the kernel spreads new connections
//! over the cores and each connection is read only by the core that accepted it. This module is
//! the whole source but for the bytes: it accepts, refuses connections over the limit, counts
//! the live connections, applies the idle rule, runs every read through the one
//! [`read_step`](crate::read_step) of all sources, classifies how each connection ended, and
//! logs all of it (rate-limited, [`log_limit`]). The two backends only turn a socket's bytes into
//! frames ([`Accept`], [`Connection`]):
//! - [`recv`]: glommio's `TcpStream`, `recv(2)` into each connection's [`ReadBuf`](crate::codec::ReadBuf);
//! - [`uring`]: the core's own io_uring, multishot receive into provided buffers.
//!
//! [`listen`] picks the backend of [`TcpSourceConfig::io`] and falls back to glommio's sockets,
//! saying so, where io_uring is unavailable; [`run`] runs the source until shutdown.
//!
//! Limits ([`TcpSourceConfig`]), the same on both backends:
//! - `max_frame`: a header announcing a larger payload closes that connection
//!   (`connections_oversized`); the frames before it count.
//! - `max_connections_per_core`: a connection accepted while the core already has that many
//!   open is closed at once, unread (`connections_refused`).
//! - the process's descriptor limit (`RLIMIT_NOFILE`, read at start): a connection accepted
//!   while fewer than [`FD_RESERVE`] descriptors below the limit are free is closed at once,
//!   unread (`connections_refused`), so checkpoints and the sink always have descriptors.
//! - every accepted connection has TCP keepalive on ([`set_keepalive`]), so a peer that vanished
//!   without a FIN or RST is noticed and its descriptor freed.
//! - `idle_timeout`: a connection that has sent part of a frame and then nothing for that long is
//!   closed and the partial frame dropped (`connections_idle_closed`); a connection idle between
//!   frames stays open however long. Only time spent waiting for the client counts (one wait
//!   for its bytes lasting that long), never time the core spent not reading because its sink or
//!   rings were full or it had no receive buffer.
//! - `frame_timeout`: a connection whose frame is still not whole after that much time spent
//!   waiting for its bytes, counted from the frame's first byte, is closed the same way
//!   (`connections_idle_closed`): a byte now and then no longer keeps a partial frame alive.
//! - `partial_frame_budget`: the bytes of partial frames all of a core's connections hold
//!   ([`PartialBudget`]). Past it, the connections holding the most are closed (their partial
//!   frames dropped, `connections_over_budget`) until the rest fit. Both backends grow a partial
//!   frame's memory only with the bytes received, never to the size its header announces.
//!
//! A connection that ends or fails inside a frame loses that partial frame only
//! (`connections_truncated`). On shutdown the core stops accepting, stops reading, decodes what
//! the backend had already received, and returns once every connection has.

pub(crate) mod balance;
pub(crate) mod log_limit;
mod recv;
pub(crate) mod uring;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_lite::future::or;

use self::balance::{Handoff, OpenCounts};
use crate::codec::FrameTooLarge;
use crate::metrics::CoreMetrics;
use crate::notify::Notify;
use crate::pipeline::App;
use crate::read_step::{ingest_and_flush, read_step};
use crate::source::{IoBackend, TcpSourceConfig};
use crate::worker::Worker;
use log_limit::{may_log, LogKind, LogLimit};

/// Idle time before the first keepalive probe on a TCP connection (source and sink).
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the kernel declares the connection dead (so a vanished peer is
/// noticed about 2 minutes after it last sent anything).
pub(crate) const KEEPALIVE_PROBES: u32 = 6;

/// Turns TCP keepalive on for the socket `fd` (`SO_KEEPALIVE` with [`KEEPALIVE_IDLE`],
/// [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_PROBES`]): a peer that vanished without a FIN or RST
/// (a crashed host, a dropped NAT entry) then ends the connection instead of holding its
/// descriptor forever.
pub(crate) fn set_keepalive(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller's socket owns `fd` and outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(&fd).set_tcp_keepalive(&keepalive)
}

/// Descriptors below the process's limit that the TCP source never takes: what checkpoints, the
/// sink's reconnections and the engine's own files and rings need.
pub(crate) const FD_RESERVE: usize = 64;

/// The process's soft descriptor limit (`RLIMIT_NOFILE`), read once at start; None when there is
/// none (or it cannot be read).
fn fd_limit() -> Option<usize> {
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0
            || rl.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        usize::try_from(rl.rlim_cur).ok()
    })
}

/// Source connections open in the process, over all cores (descriptors are per process).
static LIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// Descriptors open besides the source connections, at the last count of `/proc/self/fd`
/// (`usize::MAX` before the first).
static OTHER_FDS: AtomicUsize = AtomicUsize::new(usize::MAX);
/// When `/proc/self/fd` was last counted, in ms since [`fd_epoch`].
static COUNTED_AT_MS: AtomicU64 = AtomicU64::new(0);

fn fd_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Descriptors open in the process (None if they cannot be counted, for instance when none is
/// left to open the directory with).
fn count_open_fds() -> Option<usize> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    // The directory's own descriptor is among them.
    Some(n.saturating_sub(1))
}

/// Checks, for a connection just accepted (and not yet counted live), whether the process is
/// within [`FD_RESERVE`] descriptors of its limit; `Some((open, limit))` when the connection must
/// be refused. Cheap: it estimates from the live connections, and counts `/proc/self/fd` only
/// near the limit (at most every 100 ms) or the first time.
fn descriptors_short() -> Option<(usize, usize)> {
    let limit = fd_limit()?;
    let usable = limit.saturating_sub(FD_RESERVE);
    let live = LIVE_CONNECTIONS.load(Ordering::Relaxed);
    let mut other = OTHER_FDS.load(Ordering::Relaxed);
    let now_ms = fd_epoch().elapsed().as_millis() as u64;
    let near = other == usize::MAX || other + live + FD_RESERVE >= usable;
    if near
        && (other == usize::MAX
            || now_ms.saturating_sub(COUNTED_AT_MS.load(Ordering::Relaxed)) >= 100)
    {
        match count_open_fds() {
            // The count includes the connection just accepted, which is not live yet.
            Some(n) => {
                other = n.saturating_sub(live + 1);
                OTHER_FDS.store(other, Ordering::Relaxed);
                COUNTED_AT_MS.store(now_ms, Ordering::Relaxed);
            }
            // Not even the directory could be opened: as short as it gets.
            None => return Some((limit, limit)),
        }
    }
    let open = other + live + 1;
    (open > usable).then_some((open, limit))
}

/// One core's bound listener, on the backend it will be read with.
pub(crate) enum Listener {
    /// glommio's sockets.
    Glommio(glommio::net::TcpListener),
    /// The core's own io_uring.
    Uring(uring::UringListener),
}

/// Binds this core's listener on the backend `cfg.io` asks for; where io_uring is unavailable,
/// says so and binds glommio's instead. Called on the core itself.
pub(crate) fn listen(cfg: &TcpSourceConfig, core: usize) -> Result<Listener, crate::Error> {
    // The descriptor limit is read at start, before any connection.
    fd_limit();
    fd_epoch();
    let bind_error = |source: io::Error| crate::Error::Bind {
        addr: cfg.addr,
        core,
        source,
    };
    if cfg.io == IoBackend::Uring {
        match uring::listen(cfg, uring::RingParams::for_source(cfg)) {
            Ok(listener) => return Ok(Listener::Uring(listener)),
            Err(uring::ListenError::Bind(e)) => return Err(bind_error(e)),
            Err(uring::ListenError::Unavailable(e)) => tracing::warn!(
                core,
                "io_uring sockets are not available here ({e}); core {core} uses glommio's \
                 sockets instead (set BETTONG_IO=glommio to choose them and silence this)"
            ),
        }
    }
    glommio::net::TcpListener::bind(cfg.addr)
        .map(Listener::Glommio)
        .map_err(|e| bind_error(io::Error::other(e.to_string())))
}

/// Accepts and reads connections until shutdown, then waits for every connection to finish
/// what it had received.
/// Runs source `source` of the pipeline on this core: accepts and reads until the stop.
/// `counts` are the source's open connections per core, shared to balance them
/// ([`balance`]).
pub(crate) async fn run<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    listener: Listener,
    cfg: TcpSourceConfig,
    counts: Option<Arc<OpenCounts>>,
) {
    match listener {
        Listener::Glommio(l) => {
            let accept = recv::RecvAccept::new(l, &cfg);
            serve(worker, source, accept, cfg, counts).await;
        }
        Listener::Uring(l) => {
            let ring = l.ring().clone();
            let driver = glommio::spawn_local(ring.clone().drive());
            serve(worker, source, l.into_accept(&cfg), cfg, counts).await;
            ring.close();
            driver.await;
        }
    }
}

/// A backend's listener: hands out accepted connections.
pub(crate) trait Accept {
    /// A connection of this backend.
    type Conn: Connection + 'static;
    /// Waits for the next connection and its peer. Cancel-safe: it is raced with the stop.
    async fn accept(&mut self) -> io::Result<(Self::Conn, SocketAddr)>;
    /// A connection another core accepted and handed over ([`balance`]), read here.
    fn adopt(&self, fd: OwnedFd) -> io::Result<Self::Conn>;
    /// Stops accepting; connections the kernel accepted meanwhile are closed unread.
    async fn close(self);
}

/// One connection as a backend reads it: bytes in, frames out.
pub(crate) trait Connection {
    /// Bytes of a partial frame held (0 between frames).
    fn partial(&self) -> usize;
    /// What the core must do before it waits for the client (io_uring: arm a receive once the
    /// core has a buffer for it). Not charged to the idle timeout. Cancel-safe.
    async fn prepare(&mut self) -> Result<(), Ended>;
    /// Waits for the client: until bytes, or the connection's end, are there to decode.
    /// Cancel-safe: it is raced with the stop and the idle deadline.
    async fn receive(&mut self) -> Result<(), Ended>;
    /// Hands the frames received so far to `on_frame` (about one read buffer's worth at most).
    /// `Err` when the connection ended (the frames before the end have been handed over).
    fn decode(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<(), Ended>;
    /// When the core saw the oldest bytes the next [`Connection::decode`] hands over (a
    /// receive's completion), for the arrival → decode stage; None when unknown.
    fn arrived(&self) -> Option<Instant> {
        None
    }
    /// The core is stopping: ask the socket for no more bytes.
    fn stop(&mut self);
    /// After [`Connection::stop`]: waits for what the socket had already received; false once
    /// nothing is left to decode.
    async fn drain_ready(&mut self) -> bool;
    /// Called after every read step, to let the core's other tasks run if this connection's
    /// bytes are always ready.
    async fn after_step(&mut self) {}
    /// Closes the connection.
    async fn close(self);
    /// The socket of a connection not read yet, to hand to another core; the connection back
    /// if it cannot be taken apart.
    fn into_fd(self) -> Result<OwnedFd, Self>
    where
        Self: Sized;
}

/// Why a connection's reading ended.
pub(crate) enum Ended {
    /// The peer closed the connection.
    Eof,
    /// A header announced an oversized frame.
    Oversized(FrameTooLarge),
    /// The socket failed.
    Failed(io::Error),
    /// The connection sat inside a partial frame for the idle timeout.
    Idle,
    /// The connection's frame was not whole within the frame timeout.
    Slow,
    /// The core's partial frames went over their budget and this connection held the most.
    OverBudget,
    /// The core is shutting down.
    Stopped,
}

/// One core's partial frames against `partial_frame_budget`: every connection reports the bytes
/// of the partial frame it holds, and when their sum goes over the budget the connections
/// holding the most are marked to close (and woken) until the rest fit.
pub(crate) struct PartialBudget {
    limit: usize,
    held: Cell<usize>,
    slots: RefCell<Vec<Rc<PartialSlot>>>,
}

/// One connection's entry in its core's [`PartialBudget`].
#[derive(Default)]
pub(crate) struct PartialSlot {
    bytes: Cell<usize>,
    index: Cell<usize>,
    evicted: Cell<bool>,
    wake: Notify,
}

impl PartialSlot {
    /// Marked to close: the core's partial frames went over their budget.
    fn evicted(&self) -> bool {
        self.evicted.get()
    }
}

impl PartialBudget {
    pub(crate) fn new(limit: usize) -> Self {
        PartialBudget {
            limit,
            held: Cell::new(0),
            slots: RefCell::new(Vec::new()),
        }
    }

    /// Partial frame bytes held by the connections not marked to close.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.get()
    }

    /// A new connection's slot (holding nothing).
    pub(crate) fn register(&self) -> Rc<PartialSlot> {
        let slot = Rc::new(PartialSlot::default());
        let mut slots = self.slots.borrow_mut();
        slot.index.set(slots.len());
        slots.push(slot.clone());
        slot
    }

    /// The connection of `slot` ended: its bytes are no longer held.
    pub(crate) fn unregister(&self, slot: &Rc<PartialSlot>) {
        self.set(slot, 0);
        let mut slots = self.slots.borrow_mut();
        let i = slot.index.get();
        slots.swap_remove(i);
        if let Some(moved) = slots.get(i) {
            moved.index.set(i);
        }
    }

    /// The connection of `slot` now holds `bytes` of a partial frame. Returns how many
    /// connections this marked to close (the budget was exceeded).
    pub(crate) fn set(&self, slot: &PartialSlot, bytes: usize) -> usize {
        if slot.evicted.get() {
            return 0;
        }
        self.held.set(self.held.get() - slot.bytes.get() + bytes);
        slot.bytes.set(bytes);
        if self.held.get() <= self.limit {
            return 0;
        }
        // Over budget: close the connections holding the most until the rest fit. Rare (only
        // under attack or with a budget set too low), so a sort over the core's connections
        // is cheap enough.
        let mut holders: Vec<Rc<PartialSlot>> = self
            .slots
            .borrow()
            .iter()
            .filter(|s| s.bytes.get() > 0 && !s.evicted.get())
            .cloned()
            .collect();
        holders.sort_unstable_by_key(|s| std::cmp::Reverse(s.bytes.get()));
        let mut closed = 0;
        for s in holders {
            if self.held.get() <= self.limit {
                break;
            }
            self.held.set(self.held.get() - s.bytes.get());
            s.bytes.set(0);
            s.evicted.set(true);
            s.wake.notify();
            closed += 1;
        }
        closed
    }
}

/// Counts the live connection tasks of one core, so that shutdown can wait for them.
#[derive(Default)]
struct TaskCount {
    live: Cell<usize>,
    gone: Notify,
}

impl TaskCount {
    /// Counts a new live task until the returned guard is dropped.
    fn enter(self: &Rc<Self>) -> TaskGuard {
        self.live.set(self.live.get() + 1);
        LIVE_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        TaskGuard(self.clone())
    }

    /// Resolves once no task is live.
    async fn wait_idle(&self) {
        while self.live.get() > 0 {
            self.gone.wait().await;
        }
    }
}

/// Keeps one task counted as live; dropping it ends the task's count.
struct TaskGuard(Rc<TaskCount>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.live.set(c.live.get() - 1);
        LIVE_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        c.gone.notify();
    }
}

/// The accept loop: accepts until shutdown, refusing connections over the per-core limit.
/// How the accept loop got a connection.
enum Got<C> {
    Accepted(io::Result<(C, SocketAddr)>),
    HandedOver(Handoff),
}

async fn serve<A: App, L: Accept>(
    worker: Rc<Worker<A>>,
    source: usize,
    mut listener: L,
    cfg: TcpSourceConfig,
    counts: Option<Arc<OpenCounts>>,
) {
    let tasks = Rc::new(TaskCount::default());
    let budget = Rc::new(PartialBudget::new(cfg.partial_frame_budget));
    let core = worker.index;
    let m = worker.metrics.core(core);
    // `or` prefers its first future: without this check a steady stream of connections would
    // keep the loop from ever seeing the stop.
    while !worker.shutdown.is_triggered() {
        let accepted = or(
            async { Some(Got::Accepted(listener.accept().await)) },
            or(
                async { Some(Got::HandedOver(worker.inbox.next(source).await)) },
                async {
                    worker.shutdown.wait().await;
                    None
                },
            ),
        )
        .await;
        let (conn, peer) = match accepted {
            None => break,
            Some(Got::HandedOver(h)) => match listener.adopt(h.fd) {
                Ok(conn) => (conn, h.peer),
                Err(e) => {
                    tracing::warn!(
                        core,
                        peer = %h.peer,
                        "core {core}: cannot read the connection from {} another core handed \
                         over: {e}; it is closed",
                        h.peer
                    );
                    if let Some(c) = &counts {
                        c.closed(core);
                    }
                    continue;
                }
            },
            Some(Got::Accepted(Ok((conn, peer)))) => {
                match balance(&worker, &listener, source, &counts, conn, peer) {
                    Some(conn) => (conn, peer),
                    None => continue,
                }
            }
            Some(Got::Accepted(Err(e))) => {
                // Out of file descriptors and the like: say so, back off briefly, go on.
                if let Some(held_back) = may_log(LogKind::Accept) {
                    tracing::warn!(
                        core,
                        listen = %cfg.addr,
                        "core {core}: accept on {} failed: {e}; retrying in 10 ms{}",
                        cfg.addr,
                        LogLimit::note(held_back)
                    );
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if tasks.live.get() >= cfg.max_connections_per_core {
            CoreMetrics::add(&m.connections_refused, 1);
            if let Some(held_back) = may_log(LogKind::Refused) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: refusing connection from {peer}: the core already has {} open \
                     (the per-core connection limit); closed unread{}",
                    cfg.max_connections_per_core,
                    LogLimit::note(held_back)
                );
            }
            if let Some(c) = &counts {
                c.closed(core);
            }
            conn.close().await;
            continue;
        }
        if let Some((open, limit)) = descriptors_short() {
            CoreMetrics::add(&m.connections_refused, 1);
            if let Some(held_back) = may_log(LogKind::Refused) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: refusing connection from {peer}: {open} of the process's {limit} \
                     file descriptors are open (RLIMIT_NOFILE, `ulimit -n`) and the last \
                     {FD_RESERVE} are kept for checkpoints and the sink; closed unread{}",
                    LogLimit::note(held_back)
                );
            }
            if let Some(c) = &counts {
                c.closed(core);
            }
            conn.close().await;
            glommio::yield_if_needed().await;
            continue;
        }
        CoreMetrics::add(&m.connections_accepted, 1);
        CoreMetrics::add(&m.connections_open, 1);
        let guard = tasks.enter();
        let (worker, cfg, budget) = (worker.clone(), cfg.clone(), budget.clone());
        let counts = counts.clone();
        glommio::spawn_local(async move {
            let slot = budget.register();
            read_connection(&worker, source, conn, peer, &cfg, &budget, &slot).await;
            budget.unregister(&slot);
            CoreMetrics::sub(&worker.metrics.core(worker.index).connections_open, 1);
            if let Some(c) = &counts {
                c.closed(worker.index);
            }
            drop(guard);
        })
        .detach();
        // A storm of connections must not starve the core's other tasks.
        glommio::yield_if_needed().await;
    }
    listener.close().await;
    tracing::info!(
        core,
        "core {core}: stop requested: no longer accepting on {}; finishing the frames already \
         received",
        cfg.addr
    );
    tasks.wait_idle().await;
}

/// Places a connection this core accepted ([`balance`]): None once it was handed to a core
/// with fewer open connections (or lost on the way back, logged), else the connection, to read
/// here.
fn balance<A: App, L: Accept>(
    worker: &Worker<A>,
    listener: &L,
    source: usize,
    counts: &Option<Arc<OpenCounts>>,
    conn: L::Conn,
    peer: SocketAddr,
) -> Option<L::Conn> {
    let (Some(counts), false) = (counts, worker.shutdown.is_triggered()) else {
        return Some(conn);
    };
    let me = worker.index;
    let to = counts.place(me);
    if to == me {
        return Some(conn);
    }
    let fd = match conn.into_fd() {
        Ok(fd) => fd,
        Err(conn) => {
            counts.moved(to, me);
            return Some(conn);
        }
    };
    match worker.hand_off(to, Handoff { source, fd, peer }) {
        Ok(()) => {
            CoreMetrics::add(&worker.metrics.core(me).connections_handed_off, 1);
            None
        }
        Err(h) => {
            // The ring to that core is full: read it here after all.
            counts.moved(to, me);
            match listener.adopt(h.fd) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    counts.closed(me);
                    tracing::warn!(
                        core = me,
                        "core {me}: cannot read the connection from {peer} here either: {e}; \
                         it is closed"
                    );
                    None
                }
            }
        }
    }
}

/// What waiting for the client gave.
enum Event {
    Received(Result<(), Ended>),
    Stop,
    Idle,
    Slow,
    OverBudget,
}

/// Reads one connection until it ends, fails, times out or the core shuts down.
async fn read_connection<A: App, C: Connection>(
    worker: &Worker<A>,
    source: usize,
    mut conn: C,
    peer: SocketAddr,
    cfg: &TcpSourceConfig,
    budget: &PartialBudget,
    slot: &PartialSlot,
) {
    let core = worker.index;
    tracing::debug!(core, %peer, "core {core}: connection from {peer}");
    let mut stopping = false;
    // Time spent waiting for the client since the first byte of the partial frame held.
    let mut frame_waited = Duration::ZERO;
    let ended = loop {
        if slot.evicted() && !stopping {
            break Ended::OverBudget;
        }
        if !stopping && worker.shutdown.is_triggered() {
            // Under a flood bytes are always there and the waits below (which see the stop)
            // never wait: look here too, or the connection is read for as long as it sends.
            stopping = true;
            conn.stop();
        }
        if stopping {
            // Finish what the socket had already received, then end.
            if !conn.drain_ready().await {
                break Ended::Stopped;
            }
            match ingest_and_flush(worker, source, &peer, |on_frame| conn.decode(on_frame)).await {
                Ok(()) => continue,
                Err(e) => break e,
            }
        }
        let prepared = or(async { Some(conn.prepare().await) }, async {
            worker.shutdown.wait().await;
            None
        })
        .await;
        match prepared {
            None => continue,
            Some(Err(e)) => break e,
            Some(Ok(())) => {}
        }
        let inside_frame = conn.partial() > 0;
        let received = async { Event::Received(conn.receive().await) };
        let stop = async {
            worker.shutdown.wait().await;
            Event::Stop
        };
        let evicted = async {
            slot.wake.wait().await;
            Event::OverBudget
        };
        let waiting_from = Instant::now();
        let event = if inside_frame {
            // The idle rule (no byte for idle_timeout) and the progress rule (the frame whole
            // within frame_timeout of waiting), whichever comes first.
            let frame_left = cfg.frame_timeout.saturating_sub(frame_waited);
            let timeout = async {
                if frame_left < cfg.idle_timeout {
                    glommio::timer::sleep(frame_left).await;
                    Event::Slow
                } else {
                    glommio::timer::sleep(cfg.idle_timeout).await;
                    Event::Idle
                }
            };
            or(or(or(received, stop), evicted), timeout).await
        } else {
            or(or(received, stop), evicted).await
        };
        if inside_frame {
            frame_waited += waiting_from.elapsed();
        }
        match event {
            Event::Stop => continue,
            Event::Idle => break Ended::Idle,
            Event::Slow => break Ended::Slow,
            Event::OverBudget => break Ended::OverBudget,
            Event::Received(Err(e)) => break e,
            Event::Received(Ok(())) => {}
        }
        // Decode only while the sink can take more: a stalled sink stops the reading here.
        let mut completed = false;
        let step = read_step(worker, source, &peer, |on_frame| {
            worker.note_arrival(conn.arrived());
            conn.decode(&mut |frame| {
                completed = true;
                on_frame(frame)
            })
        })
        .await;
        // A frame completed: the partial frame held now (if any) started in this read.
        let partial = conn.partial();
        if completed || partial == 0 {
            frame_waited = Duration::ZERO;
        }
        budget.set(slot, partial);
        match step {
            None => continue,
            Some(Err(e)) => break e,
            Some(Ok(())) => conn.after_step().await,
        }
    };
    report_end(worker, ended, peer, conn.partial(), cfg);
    conn.close().await;
}

/// Counts and logs (rate-limited) how a connection ended.
fn report_end<A: App>(
    worker: &Worker<A>,
    ended: Ended,
    peer: SocketAddr,
    partial: usize,
    cfg: &TcpSourceConfig,
) {
    let core = worker.index;
    let m = worker.metrics.core(core);
    match ended {
        Ended::Stopped => {}
        Ended::Eof if partial == 0 => {}
        Ended::Failed(e) if partial == 0 => {
            if let Some(held_back) = may_log(LogKind::Ended) {
                tracing::info!(
                    core,
                    %peer,
                    "core {core}: reading from {peer} failed: {e}; closing it{}",
                    LogLimit::note(held_back)
                );
            }
        }
        Ended::Eof | Ended::Failed(_) => {
            CoreMetrics::add(&m.connections_truncated, 1);
            let how = match ended {
                Ended::Failed(e) => format!("failed ({e})"),
                _ => "ended".to_string(),
            };
            if let Some(held_back) = may_log(LogKind::Ended) {
                tracing::info!(
                    core,
                    %peer,
                    "core {core}: connection from {peer} {how} inside a frame; dropped the \
                     {partial} bytes of that partial frame (the frames before it count){}",
                    LogLimit::note(held_back)
                );
            }
        }
        Ended::Oversized(too_large) => {
            CoreMetrics::add(&m.connections_oversized, 1);
            if let Some(held_back) = may_log(LogKind::Closed) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: closing connection from {peer}: {too_large}{}",
                    LogLimit::note(held_back)
                );
            }
        }
        Ended::Idle => {
            CoreMetrics::add(&m.connections_idle_closed, 1);
            if let Some(held_back) = may_log(LogKind::Closed) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: closing connection from {peer}: it sent {partial} bytes of a \
                     frame and then nothing for {:?} (the idle timeout); that \
                     partial frame is dropped{}",
                    cfg.idle_timeout,
                    LogLimit::note(held_back)
                );
            }
        }
        Ended::Slow => {
            CoreMetrics::add(&m.connections_idle_closed, 1);
            if let Some(held_back) = may_log(LogKind::Closed) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: closing connection from {peer}: its frame was not whole after \
                     {:?} spent waiting for it (the frame timeout; {partial} bytes of it had \
                     arrived); that partial frame is dropped{}",
                    cfg.frame_timeout,
                    LogLimit::note(held_back)
                );
            }
        }
        Ended::OverBudget => {
            CoreMetrics::add(&m.connections_over_budget, 1);
            if let Some(held_back) = may_log(LogKind::Closed) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: closing connection from {peer}: the core's partial frames went \
                     over their budget of {} bytes and it held one of the largest ({partial} \
                     bytes); that partial frame is dropped{}",
                    cfg.partial_frame_budget,
                    LogLimit::note(held_back)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// `set_keepalive` on a real loopback connection: keepalive on, with the idle time, interval
    /// and probe count the engine promises.
    #[test]
    fn set_keepalive_turns_keepalive_on_with_its_timings() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        for s in [&client, &accepted] {
            let sock = socket2::SockRef::from(s);
            assert!(!sock.keepalive().unwrap(), "off by default");
            set_keepalive(s.as_raw_fd()).unwrap();
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(sock.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(sock.keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        }
    }

    /// Over the budget, the connections holding the most are marked to close until the rest
    /// fit; marked ones are no longer counted, and leaving frees a slot.
    #[test]
    fn partial_budget_closes_the_largest_holders_first() {
        let budget = PartialBudget::new(100);
        let slots: Vec<_> = (0..4).map(|_| budget.register()).collect();
        assert_eq!(budget.set(&slots[0], 30), 0);
        assert_eq!(budget.set(&slots[1], 50), 0);
        assert_eq!(budget.set(&slots[2], 10), 0);
        assert_eq!(budget.held(), 90);
        // 90 + 40 = 130 > 100: the largest (50) goes, leaving 80.
        assert_eq!(budget.set(&slots[3], 40), 1);
        assert!(slots[1].evicted() && !slots[0].evicted() && !slots[3].evicted());
        assert_eq!(budget.held(), 80);
        // A marked connection's later reports are ignored.
        assert_eq!(budget.set(&slots[1], 500), 0);
        assert_eq!(budget.held(), 80);
        // 30 + 95 + 40 = 165: the one now holding the most (95) goes, leaving 70.
        assert_eq!(budget.set(&slots[2], 95), 1);
        assert!(slots[2].evicted());
        assert_eq!(budget.held(), 70);
        for s in &slots {
            budget.unregister(s);
        }
        assert_eq!(budget.held(), 0);
        assert!(budget.slots.borrow().is_empty());
    }

    /// The descriptor count sees a descriptor opened and closed.
    #[test]
    fn open_descriptors_are_counted() {
        let before = count_open_fds().unwrap();
        let files: Vec<_> = (0..10)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let during = count_open_fds().unwrap();
        drop(files);
        // Other tests run in parallel threads and open descriptors too: only a lower bound.
        assert!(during >= 10, "{before} then {during}");
        assert!(
            fd_limit().is_some(),
            "a test process has a descriptor limit"
        );
    }
}
