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
//! - `idle_timeout`: a connection that has sent part of a frame and then nothing for that long is
//!   closed and the partial frame dropped (`connections_idle_closed`); a connection idle between
//!   frames stays open however long. Only time spent waiting for the client counts (one wait
//!   for its bytes lasting that long), never time the core spent not reading because its sink or
//!   rings were full or it had no receive buffer.
//!
//! A connection that ends or fails inside a frame loses that partial frame only
//! (`connections_truncated`). On shutdown the core stops accepting, stops reading, decodes what
//! the backend had already received, and returns once every connection has.

mod log_limit;
mod recv;
pub(crate) mod uring;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future::or;

use crate::codec::FrameTooLarge;
use crate::metrics::CoreMetrics;
use crate::notify::Notify;
use crate::pipeline::App;
use crate::read_step::{ingest_and_flush, read_step};
use crate::source::{IoBackend, TcpSourceConfig};
use crate::worker::Worker;
use log_limit::{may_log, LogKind, LogLimit};

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
pub(crate) async fn run<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    listener: Listener,
    cfg: TcpSourceConfig,
) {
    match listener {
        Listener::Glommio(l) => {
            let accept = recv::RecvAccept::new(l, &cfg);
            serve(worker, source, accept, cfg).await;
        }
        Listener::Uring(l) => {
            let ring = l.ring().clone();
            let driver = glommio::spawn_local(ring.clone().drive());
            serve(worker, source, l.into_accept(&cfg), cfg).await;
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
    /// The core is shutting down.
    Stopped,
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
        c.gone.notify();
    }
}

/// The accept loop: accepts until shutdown, refusing connections over the per-core limit.
async fn serve<A: App, L: Accept>(
    worker: Rc<Worker<A>>,
    source: usize,
    mut listener: L,
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
        let (conn, peer) = match accepted {
            None => break,
            Some(Ok(c)) => c,
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
            conn.close().await;
            continue;
        }
        CoreMetrics::add(&m.connections_accepted, 1);
        let guard = tasks.enter();
        let (worker, cfg) = (worker.clone(), cfg.clone());
        glommio::spawn_local(async move {
            read_connection(&worker, source, conn, peer, &cfg).await;
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

/// What waiting for the client gave.
enum Event {
    Received(Result<(), Ended>),
    Stop,
    Idle,
}

/// Reads one connection until it ends, fails, times out or the core shuts down.
async fn read_connection<A: App, C: Connection>(
    worker: &Worker<A>,
    source: usize,
    mut conn: C,
    peer: SocketAddr,
    cfg: &TcpSourceConfig,
) {
    let core = worker.index;
    tracing::debug!(core, %peer, "core {core}: connection from {peer}");
    let mut stopping = false;
    let ended = loop {
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
        let event = if inside_frame {
            let idle = async {
                glommio::timer::sleep(cfg.idle_timeout).await;
                Event::Idle
            };
            or(or(received, stop), idle).await
        } else {
            or(received, stop).await
        };
        match event {
            Event::Stop => continue,
            Event::Idle => break Ended::Idle,
            Event::Received(Err(e)) => break e,
            Event::Received(Ok(())) => {}
        }
        // Decode only while the sink can take more: a stalled sink stops the reading here.
        match read_step(worker, source, &peer, |on_frame| conn.decode(on_frame)).await {
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
    }
}
