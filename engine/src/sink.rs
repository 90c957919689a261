//! Sinks: where each core's encoded output goes.
//!
//! Every core has one [`SinkPort`]: tasks on the core append encoded output to its current chunk,
//! and each read or batch hands the chunk to the core's sink writer over a bounded local queue.
//! The bound is the backpressure: when the writer falls behind (a slow or absent receiver), the
//! tasks that produce output wait, sources stop reading, and TCP flow control pushes back on the
//! senders. Since one core's output all goes through one writer in order, every key's outputs
//! leave on one connection in the order they were produced.
//!
//! The TCP writer opens its own connection to the sink address, retries with capped backoff when
//! the receiver is not there or goes away, and logs each change of state once.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::metrics::{CoreMetrics, Metrics};
use crate::notify::Notify;
use crate::shutdown::Shutdown;

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
    /// After a stop was requested, how long to keep trying to deliver held output to a sink
    /// that is down before giving up on it (and saying how much was dropped).
    pub shutdown_grace: Duration,
}

impl TcpSinkConfig {
    /// Default settings for a sink at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        TcpSinkConfig {
            addr,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// One core's sink queue: the chunk being filled, and the chunks waiting for the writer.
///
/// Producers append to the current chunk and call [`SinkPort::flush`], which waits until the
/// queue has room and then enqueues the chunk without yielding, so chunks (and every key's
/// outputs) reach the writer in the order they were produced.
pub(crate) struct SinkPort {
    chunk: RefCell<Vec<u8>>,
    /// When the oldest input behind the current chunk's output arrived.
    chunk_born: Cell<Option<Instant>>,
    queue: RefCell<VecDeque<Chunk>>,
    depth: usize,
    closed: Cell<bool>,
    /// Notified when a chunk is queued or the port closes.
    queued: Notify,
    /// Notified when the writer takes a chunk.
    room: Notify,
}

impl SinkPort {
    /// A port whose queue holds up to `depth` chunks.
    pub(crate) fn new(depth: usize) -> Self {
        SinkPort {
            chunk: RefCell::new(Vec::new()),
            chunk_born: Cell::new(None),
            queue: RefCell::new(VecDeque::new()),
            depth: depth.max(1),
            closed: Cell::new(false),
            queued: Notify::default(),
            room: Notify::default(),
        }
    }

    /// The chunk being filled. Never hold it across an await.
    pub(crate) fn chunk(&self) -> std::cell::RefMut<'_, Vec<u8>> {
        self.chunk.borrow_mut()
    }

    /// Notes that output of input that arrived at `born` is in the current chunk.
    pub(crate) fn note_arrival(&self, born: Instant) {
        match self.chunk_born.get() {
            Some(b) if b <= born => {}
            _ => self.chunk_born.set(Some(born)),
        }
    }

    /// Queues the current chunk for the writer, first waiting while the queue is full.
    pub(crate) async fn flush(&self) {
        while self.queue.borrow().len() >= self.depth && !self.closed.get() {
            self.room.wait().await;
        }
        let bytes = std::mem::take(&mut *self.chunk.borrow_mut());
        let born = self.chunk_born.take();
        if !bytes.is_empty() {
            let born = born.unwrap_or_else(Instant::now);
            self.queue.borrow_mut().push_back(Chunk { bytes, born });
            self.queued.notify();
        }
    }

    /// Tells the writer no more output will come. It finishes what is queued, then exits.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        self.queued.notify();
    }

    /// The writer's side: the next chunk, or None once the port is closed and drained.
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
}

/// Encoded output on its way to the writer, with the arrival time of the oldest input behind it.
pub(crate) struct Chunk {
    pub bytes: Vec<u8>,
    pub born: Instant,
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
    let latency = metrics.latency(core);
    let mut all = Vec::new();
    while let Some(Chunk { bytes: chunk, born }) = rx.next().await {
        CoreMetrics::add(&m.bytes_out, chunk.len() as u64);
        latency.record(born);
        if !keep {
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
pub(crate) async fn run_tcp_sink(
    cfg: TcpSinkConfig,
    rx: Rc<SinkPort>,
    metrics: Metrics,
    core: usize,
    shutdown: Shutdown,
) {
    let m = metrics.core(core);
    let mut conn = Connector::new(&cfg, core);
    let mut stream: Option<TcpStream> = None;
    // Set once the sink stayed unreachable past the shutdown grace: the rest is counted, not sent.
    let mut dropped: Option<usize> = None;
    let latency = metrics.latency(core);
    while let Some(Chunk { bytes: chunk, born }) = rx.next().await {
        let mut written = 0;
        while written < chunk.len() {
            if let Some(d) = dropped.as_mut() {
                *d += chunk.len() - written;
                break;
            }
            let s = match stream.as_mut() {
                Some(s) => s,
                None => match conn.connect(m, &shutdown).await {
                    Some(s) => stream.insert(s),
                    None => {
                        dropped = Some(0);
                        continue;
                    }
                },
            };
            match s.write(&chunk[written..]).await {
                Ok(0) => {
                    conn.broke(m, written, io::Error::from(io::ErrorKind::WriteZero));
                    stream = None;
                }
                Ok(n) => {
                    written += n;
                    CoreMetrics::add(&m.bytes_out, n as u64);
                    if written == chunk.len() {
                        latency.record(born);
                    }
                }
                Err(e) => {
                    conn.broke(m, written, e);
                    stream = None;
                }
            }
        }
    }
    if let Some(d) = dropped {
        tracing::error!(
            core,
            sink = %cfg.addr,
            "gave up on sink {}: still unreachable {:?} after the stop request; dropped {d} bytes \
             of output held for it",
            cfg.addr,
            cfg.shutdown_grace
        );
    }
    if let Some(mut s) = stream {
        if let Err(e) = s.flush().await {
            tracing::warn!(core, sink = %cfg.addr, "flushing sink {} on exit failed: {e}", cfg.addr);
        }
        let _ = s.close().await;
    }
}

/// Connection attempts with capped exponential backoff, logging each change of state once.
struct Connector<'a> {
    cfg: &'a TcpSinkConfig,
    core: usize,
    failures: u64,
    ever_connected: bool,
}

impl<'a> Connector<'a> {
    fn new(cfg: &'a TcpSinkConfig, core: usize) -> Self {
        Connector {
            cfg,
            core,
            failures: 0,
            ever_connected: false,
        }
    }

    /// Connects, retrying until it works. Returns None when a stop was requested and the sink
    /// stayed unreachable for the shutdown grace period.
    async fn connect(&mut self, m: &CoreMetrics, shutdown: &Shutdown) -> Option<TcpStream> {
        let (core, addr) = (self.core, self.cfg.addr);
        let mut backoff = self.cfg.min_backoff;
        let mut stopped_at = None;
        loop {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    CoreMetrics::add(&m.sink_connects, 1);
                    if self.failures > 0 || self.ever_connected {
                        tracing::info!(
                            core,
                            sink = %addr,
                            "sink {addr} connected again after {} failed attempts",
                            self.failures
                        );
                    } else {
                        tracing::debug!(core, sink = %addr, "sink {addr} connected");
                    }
                    self.failures = 0;
                    self.ever_connected = true;
                    return Some(s);
                }
                Err(e) => {
                    CoreMetrics::add(&m.sink_connect_failures, 1);
                    if self.failures == 0 {
                        tracing::warn!(
                            core,
                            sink = %addr,
                            "cannot connect to sink {addr}: {e}; holding output and retrying \
                             every {:?} at most (sources slow down while output is held)",
                            self.cfg.max_backoff
                        );
                    }
                    self.failures += 1;
                }
            }
            if shutdown.is_triggered() {
                let since = *stopped_at.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= self.cfg.shutdown_grace {
                    return None;
                }
            }
            glommio::timer::sleep(backoff).await;
            backoff = (backoff * 2).min(self.cfg.max_backoff);
        }
    }

    /// Records a connection that broke while `written` bytes of the current chunk had gone out.
    fn broke(&mut self, m: &CoreMetrics, written: usize, e: io::Error) {
        CoreMetrics::add(&m.sink_bytes_at_risk, written as u64);
        tracing::warn!(
            core = self.core,
            sink = %self.cfg.addr,
            "connection to sink {} broke: {e}; output written to it just before may be lost \
             (counted in sink_bytes_at_risk); reconnecting and resending the rest",
            self.cfg.addr
        );
    }
}
