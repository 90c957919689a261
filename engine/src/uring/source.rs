//! The io_uring TCP source: each core's listener and connections, on the core's own ring.
//!
//! Every core binds the same address with SO_REUSEPORT, so the kernel spreads new connections
//! over the cores, and keeps one multishot accept armed on its listener. Each connection keeps
//! one multishot receive armed: the kernel fills a provided buffer whenever bytes arrive and
//! posts it, and the connection's task decodes every frame in place, straight from the buffers
//! posted since it last looked, in one [`Worker::ingest`], hands the buffers back, then awaits
//! [`Worker::flush`]. That wait is the backpressure: while a ring to another core or the sink
//! queue is full, the task takes no completions, the kernel keeps filling buffers until the core
//! has none left, then ends the receive (`ENOBUFS`) and leaves the bytes in the socket, where TCP
//! flow control pushes back on the sender. The task re-arms its receive once it has caught up and
//! buffers are back.
//!
//! The rules are those of the glommio path ([`crate::net`]): an oversized header closes the
//! connection (counted in `connections_oversized`), invalid UTF-8 is counted by the worker and
//! logged at most once a second per core, a connection that ends inside a frame is counted in
//! `connections_truncated`, one that stays inside a partial frame for `idle_timeout` is closed,
//! and at most `max_connections_per_core` are open per core. On shutdown the core stops
//! accepting, cancels each receive, decodes what had already been received, and returns.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use socket2::{Domain, Protocol, Socket, Type};

use super::reassembly::Reassembly;
use super::ring::{Op, Ring, RingParams};
use crate::codec::{FrameDecoder, FrameTooLarge};
use crate::metrics::CoreMetrics;
use crate::net::TaskCount;
use crate::net::{may_log, LogKind, LogLimit};
use crate::pipeline::App;
use crate::source::TcpSourceConfig;
use crate::worker::Worker;

/// One core's listening socket and the ring its connections live on.
pub(crate) struct UringListener {
    ring: Rc<Ring>,
    socket: Socket,
}

impl UringListener {
    /// The address the listener is bound to.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound TCP listener has an address")
    }

    /// The ring the listener's connections live on.
    #[cfg(test)]
    pub(crate) fn ring(&self) -> &Rc<Ring> {
        &self.ring
    }
}

/// Builds this core's ring and listener. Called on the core itself.
///
/// Returns `Ok(None)` when io_uring (or a feature this source needs) is not available here, after
/// saying so: the caller then uses the glommio path.
pub(crate) fn listen(
    cfg: &TcpSourceConfig,
    core: usize,
) -> Result<Option<UringListener>, crate::Error> {
    listen_with(cfg, core, RingParams::for_source(cfg))
}

/// [`listen`] with explicit ring parameters.
pub(crate) fn listen_with(
    cfg: &TcpSourceConfig,
    core: usize,
    params: RingParams,
) -> Result<Option<UringListener>, crate::Error> {
    let ring = match Ring::new(params) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                core,
                "io_uring sockets are not available here ({e}); core {core} uses glommio's \
                 sockets instead (set BETTONG_IO=glommio to choose them and silence this)"
            );
            return Ok(None);
        }
    };
    let socket = listen_socket(cfg.addr).map_err(|source| crate::Error::Bind {
        addr: cfg.addr,
        core,
        source,
    })?;
    Ok(Some(UringListener { ring, socket }))
}

fn listen_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

/// Accepts connections until shutdown, then waits for every connection to finish what it had
/// received.
pub(crate) async fn run_tcp_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    listener: UringListener,
    cfg: TcpSourceConfig,
) {
    let UringListener { ring, socket } = listener;
    let driver = glommio::spawn_local(ring.clone().drive());
    let tasks = Rc::new(TaskCount::default());
    accept_until_shutdown(&worker, source, &ring, &socket, &cfg, &tasks).await;
    drop(socket);
    let core = worker.index;
    tracing::info!(
        core,
        "core {core}: stop requested: no longer accepting on {}; finishing the frames already \
         received",
        cfg.addr
    );
    tasks.wait_idle().await;
    ring.close();
    driver.await;
}

async fn accept_until_shutdown<A: App>(
    worker: &Rc<Worker<A>>,
    source: usize,
    ring: &Rc<Ring>,
    socket: &Socket,
    cfg: &TcpSourceConfig,
    tasks: &Rc<TaskCount>,
) {
    let core = worker.index;
    let m = worker.metrics.core(core);
    let mut accept: Option<Op> = None;
    // `or` prefers its first future: under a stream of connections the stop must be looked at.
    while !worker.shutdown.is_triggered() {
        let op = match &accept {
            Some(op) => op,
            None => match ring.accept_multi(socket.as_raw_fd()) {
                Ok(op) => accept.insert(op),
                Err(e) => {
                    tracing::warn!(core, listen = %cfg.addr, "accept on {} failed: {e}", cfg.addr);
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let next = or(async { Some(op.next().await) }, async {
            worker.shutdown.wait().await;
            None
        })
        .await;
        let c = match next {
            None => break,
            Some(None) => {
                accept = None;
                continue;
            }
            Some(Some(c)) => c,
        };
        if !c.more() {
            // The multishot accept ended (an error, or the kernel's choice): arm a new one.
            accept = None;
        }
        if let Some(e) = c.error() {
            // Out of file descriptors and the like: say so, back off briefly, go on.
            if let Some(n) = may_log(LogKind::Accept) {
                tracing::warn!(core, listen = %cfg.addr, "accept on {} failed: {e}{}", cfg.addr, LogLimit::note(n));
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // SAFETY: a successful accept completion's result is a new descriptor that only this
        // completion names; the socket takes ownership and closes it.
        let stream = unsafe { Socket::from_raw_fd(c.res) };
        let peer = stream
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        if tasks.live() >= cfg.max_connections_per_core {
            CoreMetrics::add(&m.connections_refused, 1);
            if let Some(n) = may_log(LogKind::Refused) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: refusing connection from {peer}: the core already has {} open \
                     (--max-connections-per-core); closed unread{}",
                    cfg.max_connections_per_core,
                    LogLimit::note(n)
                );
            }
            continue;
        }
        CoreMetrics::add(&m.connections_accepted, 1);
        let guard = tasks.enter();
        let (worker, ring, cfg) = (worker.clone(), ring.clone(), cfg.clone());
        glommio::spawn_local(async move {
            serve_connection(&worker, source, &ring, stream, peer, &cfg).await;
            drop(guard);
        })
        .detach();
    }
    // Stop accepting. Connections the kernel accepted meanwhile are closed unread.
    if let Some(op) = accept {
        op.cancel();
        while let Some(c) = op.next().await {
            if c.res >= 0 {
                // SAFETY: as above, a new descriptor nobody else owns; dropping closes it.
                drop(unsafe { Socket::from_raw_fd(c.res) });
            }
        }
    }
}

/// Why a connection's reading ended.
enum Ended {
    /// The peer closed the connection.
    Eof,
    /// A header announced an oversized frame.
    Oversized(FrameTooLarge),
    /// The socket failed.
    Failed(io::Error),
    /// The connection sat inside a partial frame for the idle timeout.
    Idle,
    /// The core is shutting down.
    Stopped,
}

/// What the completions of one pass asked for.
enum Next {
    /// Keep reading.
    Read,
    /// The multishot receive ended without the connection ending (no buffers were left, or the
    /// kernel stopped it): arm a new one.
    Rearm,
    End(Ended),
}

/// Reads one connection until it ends, fails, or the core shuts down.
async fn serve_connection<A: App>(
    worker: &Worker<A>,
    source: usize,
    ring: &Rc<Ring>,
    stream: Socket,
    peer: SocketAddr,
    cfg: &TcpSourceConfig,
) {
    let core = worker.index;
    let m = worker.metrics.core(core);
    tracing::debug!(core, %peer, "connection from {peer}");
    let decoder = FrameDecoder::new(cfg.max_frame);
    let fd = stream.as_raw_fd();
    let mut carry = Reassembly::default();
    let mut recv: Option<Op> = None;
    let mut stopping = false;
    let mut last_data = Instant::now();
    // Decode at most about `read_buffer` bytes per pass, as the glommio path reads at most that
    // much per read: the output of one pass is one sink chunk, and a bounded chunk keeps the
    // sink's queue (and the latency behind it) short.
    let pass_bytes = cfg.read_buffer.max(1);
    // When this task last waited for something (and so let the reactor run).
    let mut reactor_seen = Instant::now();
    let ended = loop {
        let op = match &recv {
            Some(op) => op,
            None if stopping => break Ended::Stopped,
            None => match arm(worker, ring, fd).await {
                Some(Ok(op)) => recv.insert(op),
                Some(Err(e)) => break Ended::Failed(e),
                None => break Ended::Stopped,
            },
        };
        if !stopping && worker.shutdown.is_triggered() {
            // Under a flood a completion is always ready and `wait` (which sees the stop) is
            // never reached: look here too, or the connection is read for as long as it sends.
            stopping = true;
            op.cancel();
        }
        if !op.has_completion() && !op.is_done() {
            reactor_seen = Instant::now();
            if stopping {
                op.ready().await;
            } else {
                match wait(worker, op, &carry, last_data, cfg.idle_timeout).await {
                    Wake::Ready => {}
                    Wake::Stop => {
                        // Finish what the kernel already received, then end.
                        stopping = true;
                        op.cancel();
                        continue;
                    }
                    Wake::Idle => break Ended::Idle,
                }
            }
        }
        if !stopping {
            // Take more input only while the sink can take more output (as the glommio path
            // does): a slow sink then stops the decoding here, and the kernel's buffers fill.
            if worker.wait_room_or_stop().await {
                stopping = true;
                op.cancel();
                continue;
            }
        }
        // Decode everything received since the last pass, in place, in one go.
        let mut next = Next::Read;
        let mut got_data = false;
        let ((), seen) = worker.ingest(source, |on_frame| {
            let mut taken = 0;
            while taken < pass_bytes {
                let Some(c) = op.try_next() else { break };
                let last = !c.more();
                match (&c.buf, c.res) {
                    (Some(buf), _) => {
                        got_data = true;
                        taken += buf.bytes().len();
                        if let Err(e) = carry.feed(buf.bytes(), &decoder, on_frame) {
                            next = Next::End(Ended::Oversized(e));
                            break;
                        }
                    }
                    (None, 0) => next = Next::End(Ended::Eof),
                    (None, res) if res == -libc::ENOBUFS => next = Next::Rearm,
                    (None, res) if res == -libc::ECANCELED && stopping => {
                        next = Next::End(Ended::Stopped)
                    }
                    (None, res) if res < 0 => {
                        next = Next::End(Ended::Failed(io::Error::from_raw_os_error(-res)))
                    }
                    (None, res) => {
                        next = Next::End(Ended::Failed(io::Error::other(format!(
                            "the kernel reported {res} bytes received without a buffer"
                        ))))
                    }
                }
                if last {
                    if matches!(next, Next::Read) {
                        next = Next::Rearm;
                    }
                    break;
                }
            }
        });
        if got_data {
            last_data = Instant::now();
        }
        if seen.rejected > 0 && worker.may_log_reject() {
            tracing::warn!(
                core,
                %peer,
                "rejected {} frame(s) from {peer} whose payload is not valid UTF-8 ({}); \
                 the connection goes on (further rejections are counted in frames_rejected, \
                 logged at most once a second)",
                seen.rejected,
                seen.first_error.map(|e| e.to_string()).unwrap_or_default()
            );
        }
        worker.flush().await;
        // Under load completions are always queued (the kernel fills buffers while this core
        // decodes), so this task never waits. glommio polls its reactor (socket readiness for
        // the sink writer, wake-ups from the other cores' rings, timers) only once no task is
        // runnable, or every preempt period (100 ms): yielding alone would still starve those,
        // and the other cores would stall on full rings. A timer due at once sends this task
        // through the next reactor poll, after the core's other runnable tasks.
        if reactor_seen.elapsed() >= REACTOR_EVERY {
            glommio::timer::sleep(Duration::from_micros(1)).await;
            reactor_seen = Instant::now();
        }
        match next {
            Next::Read => {}
            Next::Rearm => {
                ring.note_rearm();
                recv = None;
            }
            Next::End(e) => break e,
        }
    };
    // Rate-limited (crate::net::may_log): a storm of clients must not flood the log.
    match ended {
        Ended::Eof | Ended::Failed(_) if carry.pending() > 0 => {
            CoreMetrics::add(&m.connections_truncated, 1);
            let how = match &ended {
                Ended::Failed(e) => format!("failed ({e})"),
                _ => "ended".to_string(),
            };
            if let Some(n) = may_log(LogKind::Ended) {
                tracing::info!(
                    core,
                    %peer,
                    "core {core}: connection from {peer} {how} inside a frame; dropped the {} \
                     bytes of that partial frame (the frames before it count){}",
                    carry.pending(),
                    LogLimit::note(n)
                );
            }
        }
        Ended::Eof | Ended::Stopped => {}
        Ended::Oversized(too_large) => {
            CoreMetrics::add(&m.connections_oversized, 1);
            if let Some(n) = may_log(LogKind::Closed) {
                tracing::warn!(core, %peer, "core {core}: closing connection from {peer}: {too_large}{}", LogLimit::note(n));
            }
        }
        Ended::Failed(e) => {
            if let Some(n) = may_log(LogKind::Ended) {
                tracing::info!(core, %peer, "core {core}: reading from {peer} failed: {e}; closing it{}", LogLimit::note(n));
            }
        }
        Ended::Idle => {
            CoreMetrics::add(&m.connections_idle_closed, 1);
            if let Some(n) = may_log(LogKind::Closed) {
                tracing::warn!(
                    core,
                    %peer,
                    "core {core}: closing connection from {peer}: it sent {} bytes of a frame and \
                     then nothing for {:?} (the idle timeout, --idle-timeout); that partial frame \
                     is dropped{}",
                    carry.pending(),
                    cfg.idle_timeout,
                    LogLimit::note(n)
                );
            }
        }
    }
    // The receive must be over before the socket closes (the kernel holds the socket, not the
    // descriptor number, but a live request would keep taking buffers).
    if let Some(op) = recv {
        op.finish().await;
    }
    drop(stream);
}

/// How long a connection task may decode completions that are always ready before it lets the
/// reactor run (see the end of [`serve_connection`]'s loop).
const REACTOR_EVERY: Duration = Duration::from_micros(500);

/// Arms a multishot receive once the core has a buffer to receive into. None on shutdown.
async fn arm<A: App>(worker: &Worker<A>, ring: &Rc<Ring>, fd: RawFd) -> Option<io::Result<Op>> {
    if let Some(bufs) = ring.bufs() {
        if !bufs.available() {
            let stop = or(
                async {
                    bufs.wait_available().await;
                    false
                },
                async {
                    worker.shutdown.wait().await;
                    true
                },
            )
            .await;
            if stop {
                return None;
            }
        }
    }
    Some(ring.recv_multi(fd))
}

enum Wake {
    Ready,
    Stop,
    Idle,
}

/// Waits for a completion, shutdown, or (inside a partial frame) the idle deadline.
async fn wait<A: App>(
    worker: &Worker<A>,
    op: &Op,
    carry: &Reassembly,
    last_data: Instant,
    idle_timeout: Duration,
) -> Wake {
    let ready = async {
        op.ready().await;
        Wake::Ready
    };
    let stop = async {
        worker.shutdown.wait().await;
        Wake::Stop
    };
    if carry.pending() == 0 {
        return or(ready, stop).await;
    }
    let left = (last_data + idle_timeout).saturating_duration_since(Instant::now());
    let idle = async {
        glommio::timer::sleep(left).await;
        Wake::Idle
    };
    or(or(ready, stop), idle).await
}
