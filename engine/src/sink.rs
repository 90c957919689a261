//! Sinks: where each core's encoded output goes.
//!
//! Every core has one `SinkPort`: tasks on the core append encoded output to its current chunk,
//! and each read or batch hands the chunk to the core's sink writer over a bounded local queue.
//! The bound (chunks, and bytes: [`TcpSinkConfig::max_held_bytes`]) is the backpressure: when the
//! writer falls behind (a slow or absent receiver), the tasks that produce output wait, sources
//! stop reading, and TCP flow control pushes back on the senders. Since one core's output all
//! goes through one writer in order, every key's outputs leave on one connection in the order
//! they were produced.
//!
//! The TCP writer opens its own connection to the sink address (with a connect timeout and TCP
//! keepalive), retries with capped backoff when the receiver is not there, goes away, or accepts
//! and closes at once, holds the output meanwhile, and logs each change of state once
//! (rate-limited); `run_tcp_sink` says exactly what it promises about output across a break.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::metrics::{CoreMetrics, Metrics};
use crate::notify::Notify;
use crate::shutdown::Shutdown;
use crate::stage_latency::Stage;
use crate::tcp::log_limit::LogLimit;

/// A sink connection that breaks sooner than this after it was made "died young": the next
/// attempt waits the current backoff first (which doubles with each young death, up to
/// [`TcpSinkConfig::max_backoff`]), so a receiver that accepts and closes at once (a load
/// balancer with no backends, an address that is not a sink) costs a few attempts a second, not
/// a tight loop.
pub const YOUNG_CONNECTION: Duration = Duration::from_secs(1);

/// Where the engine writes its output.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// Each core opens its own TCP connection to this address.
    Tcp(TcpSinkConfig),
    /// Each core keeps its output in memory; it is returned in the engine's
    /// [`Report`](crate::Report) when the engine stops.
    Memory,
    /// Output is encoded, counted in `bytes_out` and dropped: for in-process benchmarks.
    Discard,
    /// Each core's output goes, chunk by chunk, to a consumer on another thread over a bounded
    /// queue (`channel_sink.rs`): a message broker's client, for instance.
    Channel(crate::channel_sink::ChannelSinkConfig),
}

/// Settings of the TCP sink.
#[derive(Debug, Clone)]
pub struct TcpSinkConfig {
    /// The receiver's address.
    pub addr: SocketAddr,
    /// First retry delay after a failed connect; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between connection attempts.
    pub max_backoff: Duration,
    /// Longest wait for one connection attempt (a blackholed address would otherwise take the
    /// kernel's SYN retries, about 2 minutes); it then counts as a failed attempt.
    pub connect_timeout: Duration,
    /// After a stop was requested, how long the sink may stay unreachable, or take no byte of a
    /// write, before the core gives up on it (dropping what it still holds, counted in
    /// `sink_bytes_dropped` and logged).
    pub shutdown_grace: Duration,
    /// Most bytes of output each core holds for its sink (handed to the writer and not yet
    /// written) before the tasks producing output wait, and with them the sources: this bounds a
    /// core's output memory while the receiver is slow, stalled or away. One chunk larger than
    /// this (the output of one read or batch) still goes through, alone.
    pub max_held_bytes: usize,
    /// Where output records end. When a connection breaks in the middle of a record, the
    /// writer sends that whole record again on the next connection, so the receiver never sees
    /// a record spliced from two halves; complete records already written into the broken
    /// connection are not sent again (they are counted in `sink_bytes_at_risk`).
    pub records: Records,
}

/// How a sink's output divides into records (see [`TcpSinkConfig::records`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Each record ends with this byte (`\n` for line-oriented output such as word count's).
    Delimited(u8),
    /// Each record is a frame: a 4-byte big-endian length, then that many bytes (Market
    /// Spread's results).
    Framed,
    /// No records: after a break, the next connection goes on from the first byte not yet
    /// written.
    Bytes,
}

impl Records {
    /// How many of the first `pos` bytes of `chunk` (which starts at a record boundary) belong
    /// to the record that `pos` cuts: 0 when `pos` is at a boundary.
    ///
    /// ```
    /// use bettong_engine::sink::Records;
    /// assert_eq!(Records::Delimited(b'\n').cut(b"ab\ncd\n", 4), 1);
    /// let framed = [0, 0, 0, 1, b'x', 0, 0, 0, 2, b'y', b'z'];
    /// assert_eq!(Records::Framed.cut(&framed, 5), 0);
    /// assert_eq!(Records::Framed.cut(&framed, 7), 2);
    /// assert_eq!(Records::Bytes.cut(&framed, 7), 0);
    /// ```
    pub fn cut(self, chunk: &[u8], pos: usize) -> usize {
        match self {
            Records::Delimited(end) => {
                pos - chunk[..pos]
                    .iter()
                    .rposition(|&b| b == end)
                    .map_or(0, |i| i + 1)
            }
            Records::Framed => {
                let mut start = 0;
                for f in crate::codec::frames(chunk) {
                    let Ok(f) = f else { break };
                    let end = f.end();
                    if end > pos {
                        break;
                    }
                    start = end;
                }
                pos - start
            }
            Records::Bytes => 0,
        }
    }
}

/// The default [`TcpSinkConfig::max_held_bytes`]: 4 MiB per core.
pub const DEFAULT_MAX_HELD_BYTES: usize = 4 << 20;

impl TcpSinkConfig {
    /// Default settings for a sink at `addr`: backoff from 20 ms up to 2 s, a 5 s connect
    /// timeout, 10 s of grace at a stop, 4 MiB held per core, records ending in `\n`.
    pub fn new(addr: SocketAddr) -> Self {
        TcpSinkConfig {
            addr,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            max_held_bytes: DEFAULT_MAX_HELD_BYTES,
            records: Records::Delimited(b'\n'),
        }
    }
}

/// One core's sink queue: the chunk being filled, and the chunks waiting for the writer.
///
/// Producers append to the current chunk and call [`SinkPort::flush`], which waits until the
/// queue has room and then enqueues the chunk without yielding, so chunks (and every key's
/// outputs) reach the writer in the order they were produced. The queue is full when it holds
/// `depth` chunks or when the bytes handed to the writer and not yet written reach the writer's
/// limit ([`SinkPort::limit_held`]); sources also wait for room before they read
/// ([`SinkPort::wait_room`]), so a stalled sink stops the reading instead of piling up output.
pub(crate) struct SinkPort {
    chunk: RefCell<Vec<u8>>,
    /// Emptied chunks handed back by the writer, reused so that a chunk does not regrow from
    /// nothing after every flush.
    spare: RefCell<Vec<Vec<u8>>>,
    /// When the oldest input behind the current chunk's output arrived.
    chunk_born: Cell<Option<Instant>>,
    /// When the first output of the current chunk was made (its apply ended).
    chunk_applied: Cell<Option<Instant>>,
    queue: RefCell<VecDeque<Chunk>>,
    depth: usize,
    /// Bytes enqueued and not yet released by the writer (queued, or being written).
    held: Cell<usize>,
    /// The most bytes held before producers wait.
    max_held: Cell<usize>,
    closed: Cell<bool>,
    /// Notified when a chunk is queued or the port closes.
    queued: Notify,
    /// Notified when the writer takes or finishes a chunk.
    room: Notify,
    /// Notified when the port closes.
    closing: Notify,
}

impl SinkPort {
    /// A port whose queue holds up to `depth` chunks (and any number of bytes until
    /// [`SinkPort::limit_held`] says otherwise).
    pub(crate) fn new(depth: usize) -> Self {
        SinkPort {
            chunk: RefCell::new(Vec::new()),
            spare: RefCell::new(Vec::new()),
            chunk_born: Cell::new(None),
            chunk_applied: Cell::new(None),
            queue: RefCell::new(VecDeque::new()),
            depth: depth.max(1),
            held: Cell::new(0),
            max_held: Cell::new(usize::MAX),
            closed: Cell::new(false),
            queued: Notify::default(),
            room: Notify::default(),
            closing: Notify::default(),
        }
    }

    /// Sets the most bytes held for the writer before producers wait (at least 1).
    pub(crate) fn limit_held(&self, bytes: usize) {
        self.max_held.set(bytes.max(1));
        self.room.notify();
    }

    /// Bytes handed to the writer and not yet written.
    pub(crate) fn held(&self) -> usize {
        self.held.get()
    }

    /// The chunk being filled. Never hold it across an await.
    pub(crate) fn chunk(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.chunk.borrow_mut()
    }

    /// Notes that output of input that arrived at `born`, made at `applied`, is in the current
    /// chunk.
    pub(crate) fn note_arrival(&self, born: Instant, applied: Instant) {
        match self.chunk_born.get() {
            Some(b) if b <= born => {}
            _ => self.chunk_born.set(Some(born)),
        }
        if self.chunk_applied.get().is_none() {
            self.chunk_applied.set(Some(applied));
        }
    }

    /// True while producers must wait: the queue is full, or `extra` more bytes would take what
    /// is held to the limit. Never true once the port is closed.
    fn full(&self, extra: usize) -> bool {
        !self.closed.get()
            && (self.queue.borrow().len() >= self.depth
                || self.held.get().saturating_add(extra) >= self.max_held.get())
    }

    /// Waits until the sink can take more output: what a source awaits before it reads, so a
    /// slow sink stops the reading (and TCP flow control pushes back on the sender) instead of
    /// output piling up in the current chunk.
    pub(crate) async fn wait_room(&self) {
        while self.full(self.chunk.borrow().len()) {
            self.room.wait().await;
        }
    }

    /// Queues the current chunk for the writer, first waiting while the queue is full.
    pub(crate) async fn flush(&self) {
        while self.full(0) {
            self.room.wait().await;
        }
        if self.chunk.borrow().is_empty() {
            return;
        }
        let next = self.spare.borrow_mut().pop().unwrap_or_default();
        let bytes = std::mem::replace(&mut *self.chunk.borrow_mut(), next);
        let born = self.chunk_born.take();
        let applied = self.chunk_applied.take();
        if !bytes.is_empty() {
            let queued = Instant::now();
            let born = born.unwrap_or(queued);
            let applied = applied.unwrap_or(queued);
            self.held.set(self.held.get() + bytes.len());
            self.queue.borrow_mut().push_back(Chunk {
                bytes,
                born,
                applied,
                queued,
            });
            self.queued.notify();
        }
    }

    /// Tells the writer no more output will come. It finishes what is queued, then exits.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.queued.notify();
        self.room.notify();
        self.closing.notify();
    }

    /// True once the port is closed and every chunk was taken: no more output will come.
    fn is_done(&self) -> bool {
        self.closed.get() && self.queue.borrow().is_empty()
    }

    /// Resolves once the port is closed.
    async fn wait_closed(&self) {
        while !self.closed.get() {
            self.closing.wait().await;
        }
    }

    /// The writer's side: the next chunk, or None once the port is closed and drained. The
    /// writer calls [`SinkPort::release`] with its length once it is done with it.
    pub(crate) async fn next(&self) -> Option<Chunk> {
        loop {
            if let Some(c) = self.queue.borrow_mut().pop_front() {
                self.room.notify();
                return Some(c);
            }
            if self.closed.get() {
                return None;
            }
            self.queued.wait().await;
        }
    }

    /// Hands an emptied chunk back for reuse (a few are kept; very large ones are freed).
    pub(crate) fn recycle(&self, mut chunk: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < 4 && chunk.capacity() <= 4 << 20 {
            chunk.clear();
            spare.push(chunk);
        }
    }

    /// The writer is done with `n` bytes (written, or dropped).
    pub(crate) fn release(&self, n: usize) {
        self.held.set(self.held.get().saturating_sub(n));
        self.room.notify();
    }
}

/// Encoded output on its way to the writer, with the arrival time of the oldest input behind it.
pub(crate) struct Chunk {
    pub bytes: Vec<u8>,
    pub born: Instant,
    /// When its first output was made.
    pub applied: Instant,
    /// When it was queued for the writer.
    pub queued: Instant,
}

impl Chunk {
    /// Records the chunk's latencies once its last byte is written: end to end, and the
    /// apply → sink buffer → write stages.
    pub(crate) fn written(&self, metrics: &Metrics, core: usize) {
        metrics.latency(core).record(self.born);
        let stages = metrics.stages(core);
        stages.record(Stage::ApplyToSinkBuffer, self.applied, self.queued);
        stages.record_since(Stage::SinkBufferToWrite, self.queued);
    }
}

/// Drains a core's output into memory (or drops it when `keep` is false), returning everything
/// kept, in order, once the port closes.
pub(crate) async fn run_memory_sink(
    rx: Rc<SinkPort>,
    metrics: Metrics,
    core: usize,
    keep: bool,
) -> Vec<u8> {
    let m = metrics.core(core);
    let mut all = Vec::new();
    while let Some(c) = rx.next().await {
        rx.release(c.bytes.len());
        CoreMetrics::add(&m.bytes_out, c.bytes.len() as u64);
        c.written(&metrics, core);
        let chunk = c.bytes;
        if !keep {
            rx.recycle(chunk);
            continue;
        }
        if all.is_empty() {
            all = chunk;
        } else {
            all.extend_from_slice(&chunk);
        }
    }
    all
}

/// Drains a core's output into its TCP connection, reconnecting as needed.
///
/// What it promises, per core:
/// - it connects at the start and again at once after a break, output or not, so the sink's
///   state is known (and logged) before output needs it; but after a connection that broke
///   within [`YOUNG_CONNECTION`] of being made it first waits the backoff, which keeps growing
///   while connections keep dying young;
/// - a connection attempt that gets no answer within [`TcpSinkConfig::connect_timeout`] fails;
/// - output goes out in the order it was produced, on one connection at a time;
/// - while the sink is unreachable it retries with capped exponential backoff and holds the
///   output (at most [`TcpSinkConfig::max_held_bytes`], then the sources wait), and writes all of
///   it once the sink is back;
/// - `bytes_out` counts a byte once the receiver's kernel acknowledged it (`SIOCOUTQ`), which is
///   what a checkpoint waits for; at the end of the output the writer waits for the last
///   acknowledgement before it closes (after a stop request, at most the shutdown grace);
/// - when a connection breaks, the complete records already written into it are not written
///   again: those the receiver had not read are lost, and they are counted in
///   `sink_bytes_at_risk` and named (with both addresses) in the log; a record the break cut in
///   two is written again whole on the next connection;
/// - every change of state (connected, unreachable, broken, connected again, given up) is
///   logged once, not once per attempt; the `connected` and `broke` lines are rate-limited
///   besides (at most [`LogLimit::BURST`] of each a second per core, the next one counting those
///   held back), since a sink that accepts and closes at once changes state at every attempt;
/// - after a stop request it gives up on a sink that stays unreachable, or takes no byte of a
///   write, for [`TcpSinkConfig::shutdown_grace`], counting what it drops in
///   `sink_bytes_dropped`.
pub(crate) async fn run_tcp_sink(
    cfg: TcpSinkConfig,
    rx: Rc<SinkPort>,
    metrics: Metrics,
    core: usize,
    shutdown: Shutdown,
) {
    rx.limit_held(cfg.max_held_bytes);
    let m = metrics.core(core);
    let mut link = Link::new(&cfg, core);
    let mut gave_up = false;
    let mut dropped = 0usize;
    loop {
        // Connected whenever possible, output or not: at the start, and again at once after a
        // break, so that the state of the sink is known (and logged) before output needs it.
        if link.conn.is_none() && !gave_up {
            match link.connect(m, &rx, &shutdown, false).await {
                Connect::Up => {}
                Connect::GaveUp => gave_up = true,
                Connect::Finished => break,
            }
        }
        // While there is nothing to write, watch the connection: a receiver that closes or
        // resets it is noticed now (and logged, and reconnected to), not at the next write,
        // which would otherwise go into a dead connection.
        // While bytes written are not yet acknowledged by the receiver, look again every
        // ACK_POLL: `bytes_out` (what a checkpoint waits for) only counts acknowledged bytes.
        let waiting_acks = !link.poll_acks(m);
        let next = match link.conn.as_mut() {
            Some(conn) => {
                futures_lite::future::or(async { Event::Next(rx.next().await) }, async {
                    futures_lite::future::or(
                        async { Event::Gone(peer_gone(&mut conn.stream).await) },
                        async {
                            if !waiting_acks {
                                futures_lite::future::pending::<()>().await;
                            }
                            glommio::timer::sleep(ACK_POLL).await;
                            Event::Tick
                        },
                    )
                    .await
                })
                .await
            }
            None => Event::Next(rx.next().await),
        };
        let chunk = match next {
            Event::Next(Some(chunk)) => chunk,
            Event::Next(None) => break,
            Event::Gone(e) => {
                link.broke(m, e, 0);
                continue;
            }
            Event::Tick => continue,
        };
        let bytes = &chunk.bytes;
        let mut pos = 0;
        while pos < bytes.len() && !gave_up {
            if link.conn.is_none() {
                match link.connect(m, &rx, &shutdown, true).await {
                    Connect::Up => {}
                    Connect::GaveUp | Connect::Finished => {
                        gave_up = true;
                        break;
                    }
                }
            }
            match link.write(&bytes[pos..], &shutdown).await {
                Wrote::Bytes(n) => {
                    pos += n;
                    link.poll_acks(m);
                    if pos == bytes.len() {
                        chunk.written(&metrics, core);
                    }
                }
                Wrote::Failed(e) => {
                    // Rewind to the start of the record the break cut, if any.
                    let cut = cfg.records.cut(bytes, pos);
                    link.broke(m, e, cut);
                    pos -= cut;
                }
                Wrote::Stalled => {
                    link.stalled();
                    gave_up = true;
                }
            }
        }
        if gave_up {
            let n = bytes.len() - pos;
            dropped += n;
            CoreMetrics::add(&m.sink_bytes_dropped, n as u64);
        }
        rx.release(bytes.len());
        rx.recycle(chunk.bytes);
    }
    if dropped > 0 {
        tracing::error!(
            core,
            sink = %cfg.addr,
            "core {core}: dropped {dropped} bytes of output held for sink {}: it stayed \
             unreachable or took nothing for {:?} after the stop request (counted in \
             sink_bytes_dropped)",
            cfg.addr,
            cfg.shutdown_grace
        );
    }
    if !gave_up {
        link.wait_acks(m, &shutdown).await;
    }
    link.close().await;
    CoreMetrics::set(&m.sink_connected, 0);
}

/// How often the writer asks the kernel how much of what it wrote the receiver acknowledged,
/// while some of it is not.
const ACK_POLL: Duration = Duration::from_millis(1);

/// What the idle writer woke up for.
enum Event {
    /// The next chunk, or None once the port is closed and drained.
    Next(Option<Chunk>),
    /// The receiver closed or reset the connection.
    Gone(io::Error),
    /// Time to look at the acknowledgements again.
    Tick,
}

/// Bytes written into the TCP socket `fd` that its receiver's kernel has not acknowledged yet
/// (`SIOCOUTQ`: unsent, or sent and not acknowledged).
fn unacked(fd: std::os::fd::RawFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ on Linux) writes one int through the pointer, which is
    // valid for the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Resolves when the receiver closes or resets `stream` (it is not expected to send anything;
/// whatever it does send is read and ignored).
async fn peer_gone(stream: &mut TcpStream) -> io::Error {
    use futures_lite::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                return io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the receiver closed the connection",
                )
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// How an attempt to (re)connect ended.
enum Connect {
    /// Connected.
    Up,
    /// A stop was requested and the sink stayed unreachable for the shutdown grace.
    GaveUp,
    /// The port closed with nothing left to deliver: there is no need to connect.
    Finished,
}

/// What one write did.
enum Wrote {
    /// This many bytes went into the connection (at least 1).
    Bytes(usize),
    /// The connection broke.
    Failed(io::Error),
    /// A stop was requested and the write took nothing for the shutdown grace.
    Stalled,
}

/// An open sink connection.
struct Conn {
    stream: TcpStream,
    local: SocketAddr,
    /// When it was made.
    since: Instant,
    /// Bytes written into it so far.
    written: u64,
    /// Bytes of `written` the receiver's kernel acknowledged (and that are counted in
    /// `bytes_out`).
    acked: u64,
}

/// One core's link to its sink: the connection, if any, and what to say about changes to it.
struct Link<'a> {
    cfg: &'a TcpSinkConfig,
    core: usize,
    conn: Option<Conn>,
    /// Failed attempts since the link was last up.
    failures: u64,
    /// When the link went down (broke, or could not connect), if it is down.
    down_since: Option<Instant>,
    ever_connected: bool,
    /// When this writer first saw the stop request.
    stop_seen: Option<Instant>,
    /// The next wait between attempts: it doubles with every failed attempt and every
    /// connection that dies young, and is back to `min_backoff` once a connection lived.
    backoff: Duration,
    /// A wait due before the next attempt: the last connection died young.
    pause: Option<Duration>,
    /// Connections in a row that died young.
    young_deaths: u64,
    /// Rate limits of the `connected` and `broke` lines.
    log_up: LogLimit,
    log_broke: LogLimit,
}

impl<'a> Link<'a> {
    fn new(cfg: &'a TcpSinkConfig, core: usize) -> Self {
        Link {
            cfg,
            core,
            conn: None,
            failures: 0,
            down_since: None,
            ever_connected: false,
            stop_seen: None,
            backoff: cfg.min_backoff,
            pause: None,
            young_deaths: 0,
            log_up: LogLimit::default(),
            log_broke: LogLimit::default(),
        }
    }

    /// Connects, retrying with capped backoff until it works, the stop's grace runs out, or
    /// (unless the writer is `holding` a chunk) the port closes with nothing left to deliver.
    async fn connect(
        &mut self,
        m: &CoreMetrics,
        rx: &SinkPort,
        shutdown: &Shutdown,
        holding: bool,
    ) -> Connect {
        let (core, addr) = (self.core, self.cfg.addr);
        if let Some(pause) = self.pause.take() {
            // The last connection died young: do not hammer a sink that accepts and closes.
            self.sleep(rx, pause).await;
        }
        loop {
            if !holding && rx.is_done() {
                return Connect::Finished;
            }
            let attempt = if self.cfg.connect_timeout.is_zero() {
                TcpStream::connect(addr).await
            } else {
                TcpStream::connect_timeout(addr, self.cfg.connect_timeout).await
            };
            match attempt.map_err(io::Error::from) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = crate::tcp::set_keepalive(stream.as_raw_fd()) {
                        tracing::debug!(core, sink = %addr, "core {core}: cannot turn TCP keepalive on for sink {addr}: {e}");
                    }
                    let local = stream
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    CoreMetrics::add(&m.sink_connects, 1);
                    CoreMetrics::set(&m.sink_connected, 1);
                    let down_since = self.down_since.take();
                    if let Some(held_back) = self.log_up.allow() {
                        let note = LogLimit::note(held_back);
                        match down_since {
                            Some(since) if self.ever_connected || self.failures > 0 => {
                                tracing::info!(
                                    core,
                                    sink = %addr,
                                    %local,
                                    "core {core}: sink {addr} connected again from {local} after \
                                     {} failed attempts over {:.1?}; writing the {} bytes of \
                                     output held meanwhile{note}",
                                    self.failures,
                                    since.elapsed(),
                                    rx.held()
                                );
                            }
                            _ => tracing::info!(
                                core,
                                sink = %addr,
                                %local,
                                "core {core}: connected to sink {addr} from {local}{note}"
                            ),
                        }
                    }
                    self.failures = 0;
                    self.ever_connected = true;
                    self.conn = Some(Conn {
                        stream,
                        local,
                        since: Instant::now(),
                        written: 0,
                        acked: 0,
                    });
                    return Connect::Up;
                }
                Err(e) => {
                    CoreMetrics::add(&m.sink_connect_failures, 1);
                    if self.failures == 0 {
                        self.down_since.get_or_insert_with(Instant::now);
                        tracing::warn!(
                            core,
                            sink = %addr,
                            "core {core}: cannot connect to sink {addr}: {e}; holding its \
                             output (at most {} bytes, then sources wait) and retrying with \
                             backoff up to {:?} (logged again only when this changes)",
                            self.cfg.max_held_bytes,
                            self.cfg.max_backoff
                        );
                    }
                    self.failures += 1;
                }
            }
            if shutdown.is_triggered() {
                let since = *self.stop_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.cfg.shutdown_grace {
                    return Connect::GaveUp;
                }
            }
            let backoff = self.backoff;
            self.backoff = (backoff * 2).min(self.cfg.max_backoff);
            self.sleep(rx, backoff).await;
        }
    }

    /// Waits `pause` before the next attempt; a port that closes meanwhile may leave nothing to
    /// deliver, so that ends the wait too.
    async fn sleep(&self, rx: &SinkPort, pause: Duration) {
        if rx.closed.get() {
            glommio::timer::sleep(pause).await;
        } else {
            futures_lite::future::or(glommio::timer::sleep(pause), rx.wait_closed()).await;
        }
    }

    /// Writes some of `buf` into the open connection. After a stop request, a write that takes
    /// nothing for the shutdown grace is abandoned.
    async fn write(&mut self, buf: &[u8], shutdown: &Shutdown) -> Wrote {
        let grace = self.cfg.shutdown_grace;
        let conn = self.conn.as_mut().expect("write needs a connection");
        let stop = shutdown.wait();
        let result =
            futures_lite::future::or(async { Some(conn.stream.write(buf).await) }, async {
                stop.await;
                glommio::timer::sleep(grace).await;
                None
            })
            .await;
        match result {
            Some(Ok(0)) => Wrote::Failed(io::Error::from(io::ErrorKind::WriteZero)),
            Some(Ok(n)) => {
                conn.written += n as u64;
                Wrote::Bytes(n)
            }
            Some(Err(e)) => Wrote::Failed(e),
            None => Wrote::Stalled,
        }
    }

    /// Counts in `bytes_out` the bytes of the open connection its receiver's kernel has
    /// acknowledged since the last look; true once all written bytes are acknowledged (or there
    /// is no connection).
    ///
    /// A checkpoint commits only once `bytes_out` reaches the output produced before its cut:
    /// bytes merely written into the socket are still lost if the connection breaks, so a
    /// checkpoint that counted them would, after a crash, never produce them again.
    fn poll_acks(&mut self, m: &CoreMetrics) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        if conn.acked < conn.written {
            let acked = match unacked(conn.stream.as_raw_fd()) {
                Ok(q) => conn.written.saturating_sub(q).max(conn.acked),
                Err(e) => {
                    // Not a TCP socket the kernel can answer for: count what was written, as
                    // before acknowledgements were tracked.
                    tracing::debug!(core = self.core, "SIOCOUTQ failed on the sink socket: {e}");
                    conn.written
                }
            };
            CoreMetrics::add(&m.bytes_out, acked - conn.acked);
            conn.acked = acked;
        }
        conn.acked >= conn.written
    }

    /// At the end of the output, waits until the receiver acknowledged all of it, so the last
    /// checkpoint can commit. The receiver closing the connection ends the wait (the connection
    /// broke), and so does the shutdown grace after a stop request.
    async fn wait_acks(&mut self, m: &CoreMetrics, shutdown: &Shutdown) {
        loop {
            if self.poll_acks(m) {
                return;
            }
            if shutdown.is_triggered() {
                let since = *self.stop_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.cfg.shutdown_grace {
                    if let Some(conn) = &self.conn {
                        let (core, addr) = (self.core, self.cfg.addr);
                        tracing::warn!(
                            core,
                            sink = %addr,
                            "core {core}: sink {addr} did not acknowledge the last {} bytes of \
                             output within {:?} after the stop request; the last checkpoint \
                             does not count them",
                            conn.written - conn.acked,
                            self.cfg.shutdown_grace
                        );
                    }
                    return;
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let gone = futures_lite::future::or(
                async { Some(peer_gone(&mut conn.stream).await) },
                async {
                    glommio::timer::sleep(ACK_POLL).await;
                    None
                },
            )
            .await;
            if let Some(e) = gone {
                self.broke(m, e, 0);
                return;
            }
        }
    }

    /// The connection failed while writing; `cut` bytes at the end of what was written into it
    /// belong to a record the break cut short (written again on the next connection).
    fn broke(&mut self, m: &CoreMetrics, e: io::Error, cut: usize) {
        let Some(conn) = self.conn.take() else { return };
        CoreMetrics::set(&m.sink_connected, 0);
        let at_risk = conn.written.saturating_sub(cut as u64);
        CoreMetrics::add(&m.sink_bytes_at_risk, at_risk);
        // The whole records written into it and not acknowledged are lost with it (not written
        // again): they are settled here, so checkpoints after this break can commit.
        CoreMetrics::add(&m.bytes_out, at_risk.saturating_sub(conn.acked));
        self.down_since = Some(Instant::now());
        let lived = conn.since.elapsed();
        let young = if lived < YOUNG_CONNECTION {
            // Died young: wait before the next attempt, longer each time in a row.
            let pause = self.backoff;
            self.pause = Some(pause);
            self.backoff = (pause * 2).min(self.cfg.max_backoff);
            self.young_deaths += 1;
            format!(
                "; it lived only {lived:.1?} ({} in a row), so the next attempt waits {pause:?}",
                self.young_deaths
            )
        } else {
            self.backoff = self.cfg.min_backoff;
            self.young_deaths = 0;
            String::new()
        };
        let Some(held_back) = self.log_broke.allow() else {
            return;
        };
        let note = LogLimit::note(held_back);
        let (core, addr, local) = (self.core, self.cfg.addr, conn.local);
        let resent = if cut > 0 {
            format!("; the {cut} bytes of the record it cut short are written again whole")
        } else {
            String::new()
        };
        tracing::warn!(
            core,
            sink = %addr,
            %local,
            at_risk,
            "core {core}: connection {local} -> sink {addr} broke ({e}) after writing {at_risk} \
             bytes of whole records into it: those the receiver had not read are lost, not \
             written again (counted in sink_bytes_at_risk){resent}; holding output and \
             reconnecting{young}{note}"
        );
    }

    /// A stop was requested and the open connection took nothing for the shutdown grace.
    fn stalled(&mut self) {
        let (core, addr) = (self.core, self.cfg.addr);
        if let Some(conn) = self.conn.take() {
            let local = conn.local;
            tracing::error!(
                core,
                sink = %addr,
                %local,
                "core {core}: sink {addr} (connection from {local}) took nothing for {:?} after \
                 the stop request; giving up on it",
                self.cfg.shutdown_grace
            );
        }
    }

    /// Flushes and closes the connection, if open.
    async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let (core, addr) = (self.core, self.cfg.addr);
            if let Err(e) = conn.stream.flush().await {
                tracing::warn!(core, sink = %addr, "core {core}: flushing sink {addr} on exit failed: {e}");
            }
            let _ = conn.stream.close().await;
        }
    }
}
