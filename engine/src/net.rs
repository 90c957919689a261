//! The TCP source on glommio's sockets: each core's listener and connections.
//!
//! Every core binds the same address with SO_REUSEPORT, so the kernel spreads new connections
//! over the cores and each connection is read only by the core that accepted it. A connection's
//! bytes are read into its [`ReadBuf`] and decoded in place; after each read the core flushes
//! its batches and output, waiting there when a ring or the sink is full, and before each read it
//! waits until the sink has room ([`SinkPort::wait_room`](crate::sink::SinkPort)). Either wait
//! stops the reading and lets TCP flow control push back on the sender.
//!
//! Limits ([`TcpSourceConfig`]), the same on the io_uring path ([`crate::uring`]):
//! - `max_frame`: a header announcing a larger payload closes that connection
//!   (`connections_oversized`); the frames before it count.
//! - `max_connections_per_core`: a connection accepted while the core already has that many
//!   open is closed at once, unread (`connections_refused`).
//! - `idle_timeout`: a connection that has sent part of a frame and then nothing for that long is
//!   closed and the partial frame dropped (`connections_idle_closed`); a connection idle between
//!   frames stays open however long. Only time spent waiting for the client counts, never time
//!   the core spent not reading because its sink or rings were full.
//!
//! A connection that ends or fails inside a frame loses that partial frame only
//! (`connections_truncated`). Events that a storm of clients could repeat thousands of times a
//! second are logged through a [`LogLimit`]. A connection costs no read buffer until its first
//! byte arrives, so idle connections are cheap.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::codec::{FrameDecoder, FrameTooLarge, ReadBuf};
use crate::metrics::CoreMetrics;
use crate::notify::Notify;
use crate::pipeline::App;
use crate::source::TcpSourceConfig;
use crate::worker::Worker;

/// Counts the live connection tasks of one core, so that shutdown can wait for them.
#[derive(Default)]
pub(crate) struct TaskCount {
    live: Cell<usize>,
    gone: Notify,
}

impl TaskCount {
    /// Counts a new live task until the returned guard is dropped.
    pub(crate) fn enter(self: &Rc<Self>) -> TaskGuard {
        self.live.set(self.live.get() + 1);
        TaskGuard(self.clone())
    }

    /// Tasks live now.
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Resolves once no task is live.
    pub(crate) async fn wait_idle(&self) {
        while self.live.get() > 0 {
            self.gone.wait().await;
        }
    }
}

/// Keeps one task counted as live; dropping it ends the task's count.
pub(crate) struct TaskGuard(Rc<TaskCount>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.live.set(c.live.get() - 1);
        c.gone.notify();
    }
}

/// Rate-limits one kind of log line on one core: at most [`LogLimit::BURST`] lines a second;
/// the lines held back are counted and the count is given with the next line logged.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    window: Cell<Option<Instant>>,
    logged: Cell<u32>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// Lines logged per second, at most.
    pub(crate) const BURST: u32 = 5;

    /// `Some(n)` when a line may be logged now, `n` being the lines held back since the last
    /// one; None when this one must be held back (it is counted).
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        match self.window.get() {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window.set(Some(now));
                self.logged.set(0);
            }
        }
        if self.logged.get() < Self::BURST {
            self.logged.set(self.logged.get() + 1);
            Some(self.held_back.replace(0))
        } else {
            self.held_back.set(self.held_back.get() + 1);
            None
        }
    }

    /// The suffix saying how many lines were held back ("" when none were).
    pub(crate) fn note(held_back: u64) -> String {
        if held_back == 0 {
            String::new()
        } else {
            format!(" ({held_back} more like this were not logged)")
        }
    }
}

/// The kinds of connection event whose log lines are rate-limited, each on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogKind {
    /// An accept failed.
    Accept,
    /// A connection over the per-core limit was refused.
    Refused,
    /// A connection ended or failed (inside a frame or not).
    Ended,
    /// The core closed a connection (oversized header, idle timeout).
    Closed,
}

thread_local! {
    /// This core's limits, one per [`LogKind`] (each core is one thread).
    static LOG_LIMITS: [LogLimit; 4] = Default::default();
}

/// `Some(n)` when a line of this kind may be logged on this core now (`n` lines of it were held
/// back since the last one: say so with [`LogLimit::note`]); None when it must be held back.
/// Both TCP sources use it, so a storm of clients cannot flood the log.
pub(crate) fn may_log(kind: LogKind) -> Option<u64> {
    LOG_LIMITS.with(|l| l[kind as usize].allow())
}

/// Binds this core's listener. Called on the core itself.
pub(crate) fn bind(cfg: &TcpSourceConfig, core: usize) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(cfg.addr).map_err(|e| crate::Error::Bind {
        addr: cfg.addr,
        core,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Accepts connections until shutdown, then waits for every connection task to finish what it
/// had received.
pub(crate) async fn run_tcp_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    listener: TcpListener,
    cfg: TcpSourceConfig,
) {
    let tasks = Rc::new(TaskCount::default());
    let core = worker.index;
    let m = worker.metrics.core(core);
    // `or` prefers its first future: without this check a steady stream of connections would
    // keep the loop from ever seeing the stop.
    while !worker.shutdown.is_triggered() {
        let accepted = or(async { Some(listener.accept().await) }, async {
            worker.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
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
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if tasks.live.get() >= cfg.max_connections_per_core {
            CoreMetrics::add(&m.connections_refused, 1);
            if let Some(held_back) = may_log(LogKind::Refused) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: refusing connection from {peer}: the core already has {} open \
                     (--max-connections-per-core); closed unread{}",
                    cfg.max_connections_per_core,
                    LogLimit::note(held_back)
                );
            }
            drop(stream);
            continue;
        }
        CoreMetrics::add(&m.connections_accepted, 1);
        let guard = tasks.enter();
        let (worker, cfg) = (worker.clone(), cfg.clone());
        glommio::spawn_local(async move {
            serve_connection(&worker, source, stream, peer, &cfg).await;
            drop(guard);
        })
        .detach();
        // A storm of connections must not starve the core's other tasks.
        glommio::yield_if_needed().await;
    }
    drop(listener);
    tracing::info!(
        core,
        "core {core}: stop requested: no longer accepting on {}; finishing the frames already \
         received",
        cfg.addr
    );
    tasks.wait_idle().await;
}

/// What waiting for a connection's next bytes gave.
enum Event {
    Read(io::Result<usize>),
    Stop,
    Idle,
}

/// Why a connection's reading ended.
enum Ended {
    Eof,
    Oversized(FrameTooLarge),
    Failed(io::Error),
    Idle,
    Stopped,
}

/// Reads one connection until it ends, fails, times out or the core shuts down.
async fn serve_connection<A: App>(
    worker: &Worker<A>,
    source: usize,
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &TcpSourceConfig,
) {
    let core = worker.index;
    let m = worker.metrics.core(core);
    let decoder = FrameDecoder::new(cfg.max_frame);
    tracing::debug!(core, %peer, "connection from {peer}");
    // No read buffer until the first byte is there: a thousand idle connections cost no memory.
    let first = or(
        async {
            let mut probe = [0u8; 1];
            Some(stream.peek(&mut probe).await)
        },
        async {
            worker.shutdown.wait().await;
            None
        },
    )
    .await;
    let mut rb = match first {
        None | Some(Ok(0)) => return,
        Some(Err(e)) => {
            if let Some(held_back) = may_log(LogKind::Ended) {
                tracing::info!(
                    core,
                    %peer,
                    "core {core}: reading from {peer} failed: {e}; closing it{}",
                    LogLimit::note(held_back)
                );
            }
            return;
        }
        Some(Ok(_)) => ReadBuf::with_capacity(cfg.read_buffer),
    };
    let ended = loop {
        if worker.shutdown.is_triggered() {
            break Ended::Stopped;
        }
        // Read only while the sink can take more: a stalled sink stops the reading here.
        if worker.wait_room_or_stop().await {
            break Ended::Stopped;
        }
        let inside_frame = !rb.pending().is_empty();
        let spare = rb.spare(&decoder);
        let read = async { Event::Read(stream.read(spare).await) };
        let stop = async {
            worker.shutdown.wait().await;
            Event::Stop
        };
        let event = if inside_frame {
            let idle = async {
                glommio::timer::sleep(cfg.idle_timeout).await;
                Event::Idle
            };
            or(or(read, stop), idle).await
        } else {
            or(read, stop).await
        };
        let n = match event {
            Event::Stop => break Ended::Stopped,
            Event::Idle => break Ended::Idle,
            Event::Read(Ok(0)) => break Ended::Eof,
            Event::Read(Ok(n)) => n,
            Event::Read(Err(e)) => break Ended::Failed(e),
        };
        rb.filled_by(n);
        let (result, seen) = worker.ingest(source, |on_frame| rb.drain_frames(&decoder, on_frame));
        if seen.rejected > 0 && worker.may_log_reject() {
            tracing::warn!(
                core,
                %peer,
                "core {core}: rejected {} frame(s) from {peer} whose payload is not valid UTF-8 \
                 ({}); the connection goes on (further rejections are counted in \
                 frames_rejected, logged at most once a second)",
                seen.rejected,
                seen.first_error.map(|e| e.to_string()).unwrap_or_default()
            );
        }
        worker.flush().await;
        // A connection whose bytes are always there never waits: let the core's other tasks
        // (other connections, the sink writer, the stop watcher) run when they are due.
        glommio::yield_if_needed().await;
        if let Err(too_large) = result {
            break Ended::Oversized(too_large);
        }
    };
    let partial = rb.pending().len();
    match ended {
        Ended::Stopped => {}
        Ended::Eof | Ended::Failed(_) if partial == 0 => {
            if let Ended::Failed(e) = ended {
                if let Some(held_back) = may_log(LogKind::Ended) {
                    tracing::info!(
                        core,
                        %peer,
                        "core {core}: reading from {peer} failed: {e}; closing it{}",
                        LogLimit::note(held_back)
                    );
                }
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
                     frame and then nothing for {:?} (the idle timeout, --idle-timeout); that \
                     partial frame is dropped{}",
                    cfg.idle_timeout,
                    LogLimit::note(held_back)
                );
            }
        }
    }
}
