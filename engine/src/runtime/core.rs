//! One core's lifecycle: join the mesh, start the sink writer, the drains, the forwarder and
//! the checkpoint initiator, restore state, run every source, then finish in order.
//!
//! When the sources end (memory and file sources are consumed, or a stop was requested), the
//! core flushes, tells every peer step by step that it is done ([`Worker::finish_steps`]),
//! waits until every peer has said the same, hands its final checkpoint over, and flushes its
//! sink.

use std::rc::Rc;
use std::sync::{mpsc, Arc};

use futures_lite::future::or;
use glommio::channels::channel_mesh::FullMesh;

use super::recover::CoreCkSetup;
use crate::channel_sink::run_channel_sink;
use crate::channel_source::run_channel_source;
use crate::checkpoint::{run_initiator, Participant};
use crate::file_source::{run_file_source, FilePlan};
use crate::memory::run_memory_source;
use crate::metrics::Metrics;
use crate::pipeline::App;
use crate::routing::{Envelope, Router};
use crate::shutdown::{Shutdown, StopHandle};
use crate::sink::{run_memory_sink, run_tcp_sink, SinkConfig, SinkPort};
use crate::source::SourceConfig;
use crate::tcp;
use crate::tcp::balance::OpenCounts;
use crate::worker::{drain_peer, run_forwarder, Worker};
use crate::Error;

/// What a core thread needs to start.
pub(crate) struct CoreSetup<A: App> {
    pub app: A,
    pub sources: Vec<SourceConfig>,
    pub sink: SinkConfig,
    pub router: Router,
    pub mesh: FullMesh<Envelope>,
    pub metrics: Metrics,
    pub stop: StopHandle,
    pub ready: mpsc::Sender<Result<(), Error>>,
    pub sink_queue: usize,
    pub cores: usize,
    /// Checkpointing, when on: the link to the coordinator and the state this core restores.
    pub ck: Option<CoreCkSetup<A>>,
    /// With a file source: which ranges each core reads.
    pub file: Option<Arc<FilePlan>>,
    /// Per source: a TCP source's open connections per core, shared to balance them.
    pub balance: Vec<Option<Arc<OpenCounts>>>,
}

/// What a core thread hands back: its index and its memory-sink output.
pub(crate) type CoreOutcome = (usize, Vec<u8>);

pub(crate) async fn run_core<A: App>(s: CoreSetup<A>) -> CoreOutcome {
    let Ok((senders, receivers)) = s.mesh.join().await else {
        let _ = s.ready.send(Err(Error::CoreFailed {
            core: usize::MAX,
            reason: "could not join the channel mesh".into(),
        }));
        return (usize::MAX, Vec::new());
    };
    let index = senders.peer_id();
    let shutdown = Shutdown::new();
    let port = Rc::new(SinkPort::new(s.sink_queue));
    let rx = port.clone();
    let sink_task = match s.sink {
        SinkConfig::Memory => {
            glommio::spawn_local(run_memory_sink(rx, s.metrics.clone(), index, true))
        }
        SinkConfig::Discard => {
            glommio::spawn_local(run_memory_sink(rx, s.metrics.clone(), index, false))
        }
        SinkConfig::Channel(cfg) => {
            let (m, sd) = (s.metrics.clone(), shutdown.clone());
            glommio::spawn_local(async move {
                run_channel_sink(cfg, rx, m, index, sd).await;
                Vec::new()
            })
        }
        SinkConfig::Tcp(cfg) => {
            let (m, sd) = (s.metrics.clone(), shutdown.clone());
            glommio::spawn_local(async move {
                run_tcp_sink(cfg, rx, m, index, sd).await;
                Vec::new()
            })
        }
    };
    let mut worker = Worker::new(s.app, s.router, senders, port, s.metrics, shutdown.clone());
    if let Some(ck) = &s.ck {
        worker = worker.with_checkpoints(Participant::new(
            index,
            s.cores,
            ck.link.clone(),
            ck.ops,
            ck.last_id,
        ));
    }
    let worker = Rc::new(worker);
    if let (Some(ck), Some(p)) = (&s.ck, &worker.ck) {
        // Before any input is read (peers' batches wait in the rings until the drains start).
        let (state, in_flight) = &ck.restored[index];
        p.restore(&worker, state, in_flight);
    }
    let initiator =
        s.ck.as_ref()
            .map(|_| glommio::spawn_local(run_initiator(worker.clone())));
    let forwarder = (worker.depth > 1).then(|| glommio::spawn_local(run_forwarder(worker.clone())));
    let receivers = Rc::new(receivers);
    let drains: Vec<_> = (0..s.cores)
        .filter(|&p| p != index)
        .map(|p| glommio::spawn_local(drain_peer(worker.clone(), receivers.clone(), p)))
        .collect();
    let stop = s.stop.clone();
    let watcher = glommio::spawn_local(async move {
        stop.stopped().await;
        shutdown.trigger();
    });

    // Bind every listener first, so the engine is ready (listening) before any source runs.
    let mut tasks = Vec::with_capacity(s.sources.len());
    let mut failed = None;
    for (source, cfg) in s.sources.into_iter().enumerate() {
        let w = worker.clone();
        let task = match cfg {
            SourceConfig::Tcp(cfg) => match tcp::listen(&cfg, index) {
                Ok(listener) => {
                    let counts = s.balance.get(source).cloned().flatten();
                    glommio::spawn_local(
                        async move { tcp::run(w, source, listener, cfg, counts).await },
                    )
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            },
            SourceConfig::Memory(src) => {
                let cores = s.cores;
                glommio::spawn_local(async move { run_memory_source(w, source, src, cores).await })
            }
            SourceConfig::Channel(src) => {
                let cores = s.cores;
                glommio::spawn_local(async move { run_channel_source(w, source, src, cores).await })
            }
            SourceConfig::File(cfg) => {
                let (path, ranges) = match &s.file {
                    Some(plan) => (plan.path.clone(), plan.per_core[index].clone()),
                    None => (cfg.path.clone(), Vec::new()),
                };
                glommio::spawn_local(
                    async move { run_file_source(w, source, cfg, path, ranges).await },
                )
            }
        };
        tasks.push(task);
    }
    let _ = s.ready.send(match failed {
        Some(e) => Err(e),
        None => Ok(()),
    });
    for t in tasks {
        t.await;
    }
    // The sources are finished: deliver what they left in the outboxes, then tell the peers.
    worker.flush().await;
    worker.finish_steps().await;
    for d in drains {
        // While peers are still sending, keep honouring a stop request in the watcher.
        or(d, async {
            std::future::pending::<()>().await;
        })
        .await;
    }
    drop(forwarder);
    // Every input is finished: the final checkpoint (and any still asked of this core).
    if let (Some(initiator), Some(ck)) = (initiator, &worker.ck) {
        ck.finish(&worker, initiator).await;
    }
    worker.sink.flush().await;
    worker.sink.close();
    drop(watcher);
    let out = sink_task.await;
    (index, out)
}
