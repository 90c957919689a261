//! The TCP source: each core's listener and connections.
//!
//! Every core binds the same address with SO_REUSEPORT, so the kernel spreads new connections
//! over the cores and each connection is read only by the core that accepted it. A connection's
//! bytes are read into its [`ReadBuf`] and decoded in place; after each read the core flushes
//! its batches and output, waiting there when a ring or the sink is full, which stops reading and
//! lets TCP flow control push back on the sender.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use futures_lite::future::or;
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::codec::{FrameDecoder, ReadBuf};
use crate::metrics::CoreMetrics;
use crate::pipeline::App;
use crate::source::TcpSourceConfig;
use crate::worker::Worker;

/// Counts the live connection tasks of one core, so that shutdown can wait for them.
#[derive(Default)]
pub(crate) struct TaskCount {
    live: Cell<usize>,
    idle: crate::shutdown::Shutdown,
}

impl TaskCount {
    fn enter(self: &Rc<Self>) -> TaskGuard {
        self.live.set(self.live.get() + 1);
        TaskGuard(self.clone())
    }

    /// Resolves once no task is live.
    pub(crate) async fn wait_idle(self: &Rc<Self>) {
        while self.live.get() > 0 {
            self.idle.wait().await;
        }
    }
}

struct TaskGuard(Rc<TaskCount>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let c = &self.0;
        c.live.set(c.live.get() - 1);
        if c.live.get() == 0 {
            c.idle.trigger();
        }
    }
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
    listener: TcpListener,
    cfg: TcpSourceConfig,
) {
    let tasks = Rc::new(TaskCount::default());
    let core = worker.index;
    let m = worker.metrics.core(core);
    loop {
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
                tracing::warn!(core, listen = %cfg.addr, "accept on {} failed: {e}", cfg.addr);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if tasks.live.get() >= cfg.max_connections_per_core {
            tracing::warn!(
                core,
                %peer,
                "refusing connection from {peer}: core {core} already has {} connections \
                 (the per-core limit)",
                cfg.max_connections_per_core
            );
            continue;
        }
        CoreMetrics::add(&m.connections_accepted, 1);
        let guard = tasks.enter();
        let (worker, cfg) = (worker.clone(), cfg.clone());
        glommio::spawn_local(async move {
            serve_connection(&worker, stream, peer, &cfg).await;
            drop(guard);
        })
        .detach();
    }
    drop(listener);
    tasks.wait_idle().await;
}

/// Reads one connection until it ends, fails, or the core shuts down.
async fn serve_connection<A: App>(
    worker: &Worker<A>,
    mut stream: TcpStream,
    peer: SocketAddr,
    cfg: &TcpSourceConfig,
) {
    let core = worker.index;
    let m = worker.metrics.core(core);
    let decoder = FrameDecoder::new(cfg.max_frame);
    let mut rb = ReadBuf::with_capacity(cfg.read_buffer);
    tracing::debug!(core, %peer, "connection from {peer}");
    loop {
        let spare = rb.spare(&decoder);
        let read = or(async { Some(stream.read(spare).await) }, async {
            worker.shutdown.wait().await;
            None
        })
        .await;
        let n = match read {
            None => break,
            Some(Ok(0)) => {
                if !rb.pending().is_empty() {
                    CoreMetrics::add(&m.connections_truncated, 1);
                    tracing::info!(
                        core,
                        %peer,
                        "connection from {peer} ended inside a frame; dropped the {} bytes of \
                         that partial frame",
                        rb.pending().len()
                    );
                }
                break;
            }
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                tracing::info!(core, %peer, "reading from {peer} failed: {e}; closing it");
                break;
            }
        };
        rb.filled_by(n);
        let (result, seen) = worker.ingest(|on_frame| rb.drain_frames(&decoder, on_frame));
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
        if let Err(too_large) = result {
            CoreMetrics::add(&m.connections_oversized, 1);
            tracing::warn!(core, %peer, "closing connection from {peer}: {too_large}");
            break;
        }
    }
}
