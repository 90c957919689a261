//! The runtime: start one pinned glommio executor per core, wire them together, run a pipeline,
//! stop it.
//!
//! Each core joins a full mesh of SPSC rings (glommio's `MeshBuilder::full`), so every pair of
//! cores has a ring in each direction; its index in the mesh (`Senders::peer_id`) is its shard
//! index. Each core then starts its sink writer, one drain task per peer ring, and its source.
//! When the source ends (a memory source is consumed, or a stop was requested) the core flushes,
//! tells every peer it is done, waits until every peer has said the same, and flushes its sink.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use futures_lite::future::or;
use glommio::channels::channel_mesh::FullMesh;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::memory::run_memory_source;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::net::{bind, run_tcp_source};
use crate::pipeline::App;
use crate::routing::{Envelope, Router};
use crate::shutdown::{Shutdown, StopHandle};
use crate::sink::{run_memory_sink, run_tcp_sink, SinkConfig, SinkPort};
use crate::source::SourceConfig;
use crate::worker::{drain_peer, Worker};
use crate::Error;

/// Builds and starts engines.
///
/// ```
/// use bettong_engine::{Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};
/// use std::borrow::Cow;
///
/// let pipeline = Pipeline::text()
///     .flat_map(|text, emit| text.split(' ').for_each(|w| emit(Cow::Borrowed(w))))
///     .key_by(|w| (w, ()))
///     .state(|_w: &str, n: &mut u64, ()| {
///         *n += 1;
///         Some(*n)
///     })
///     .encode(|w, n, out| out.extend_from_slice(format!("{w}={n}\n").as_bytes()));
/// let source = SourceConfig::Memory(MemorySource::from_frames(["a b", "a"]));
/// let report = Engine::new().cores(2).run(pipeline, source, SinkConfig::Memory).unwrap();
/// let mut lines: Vec<String> = report.output_lines().collect();
/// lines.sort();
/// assert_eq!(lines, ["a=1", "a=2", "b=1"]);
/// ```
#[derive(Debug, Clone)]
pub struct Engine {
    cores: Option<usize>,
    ring_capacity: usize,
    sink_queue: usize,
    seed: u64,
    spin_before_park: Option<Duration>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            cores: None,
            ring_capacity: 64,
            sink_queue: 16,
            seed: 0x6265_7474_6f6e_6721,
            spin_before_park: None,
        }
    }
}

/// The CPUs this process may run on, in order.
pub fn online_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    if ids.is_empty() {
        ids.push(0);
    }
    ids
}

impl Engine {
    /// An engine on every online core, with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs on `n` cores (pinned to the first `n` online CPUs).
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n);
        self
    }

    /// Batches each ring between two cores holds before the sender waits.
    pub fn ring_capacity(mut self, n: usize) -> Self {
        self.ring_capacity = n.max(1);
        self
    }

    /// Output chunks each core's sink queue holds before producers wait.
    pub fn sink_queue(mut self, n: usize) -> Self {
        self.sink_queue = n.max(1);
        self
    }

    /// Seed of the key hash (every core shares it).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How long an idle executor spins before it parks (glommio's `spin_before_park`).
    pub fn spin_before_park(mut self, d: Duration) -> Self {
        self.spin_before_park = Some(d);
        self
    }

    /// Starts `app` and returns at once. Sources are listening when this returns.
    pub fn start<A: App>(
        self,
        app: A,
        source: SourceConfig,
        sink: SinkConfig,
    ) -> Result<Running, Error> {
        let cpus = online_cpus();
        let n = self.cores.unwrap_or(cpus.len());
        if n == 0 {
            return Err(Error::NoCores);
        }
        if n > cpus.len() {
            return Err(Error::TooManyCores {
                requested: n,
                available: cpus.len(),
            });
        }
        // Port 0 must mean one port for every core: reserve it with a bound, non-listening
        // SO_REUSEPORT socket that the cores' listeners join, then let it go once they have.
        let (source, reservation) = match source {
            SourceConfig::Tcp(mut cfg) if cfg.addr.port() == 0 => {
                let (sock, addr) = reserve_port(cfg.addr)?;
                cfg.addr = addr;
                (SourceConfig::Tcp(cfg), Some(sock))
            }
            other => (other, None),
        };
        let local_addr = match &source {
            SourceConfig::Tcp(cfg) => Some(cfg.addr),
            SourceConfig::Memory(_) => None,
        };
        let stop = StopHandle::new();
        let metrics = Metrics::new(n);
        let router = Router::new(n, self.seed);
        let mesh = FullMesh::<Envelope<A::Value>>::full(n, self.ring_capacity);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let mut threads = Vec::with_capacity(n);
        for (i, &cpu) in cpus.iter().take(n).enumerate() {
            let ctx = CoreSetup {
                app: app.clone(),
                source: source.clone(),
                sink: sink.clone(),
                router: router.clone(),
                mesh: mesh.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
                ready: ready_tx.clone(),
                sink_queue: self.sink_queue,
                cores: n,
            };
            let mut builder =
                LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("bettong-{i}"));
            if let Some(d) = self.spin_before_park {
                builder = builder.spin_before_park(d);
            }
            match builder.spawn(move || run_core(ctx)) {
                Ok(h) => threads.push(h),
                Err(e) => {
                    stop.stop();
                    return Err(Error::Executor {
                        core: i,
                        cpu,
                        reason: e.to_string(),
                    });
                }
            }
        }
        drop(ready_tx);
        let mut first_error = None;
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => break,
            }
        }
        drop(reservation);
        let running = Running {
            threads,
            stop,
            metrics,
            local_addr,
            cpus: cpus[..n].to_vec(),
        };
        match first_error {
            Some(e) => {
                running.stop();
                let _ = running.join();
                Err(e)
            }
            None => Ok(running),
        }
    }

    /// Starts `app` and waits until it finishes: for finite sources (memory), or until a stop
    /// requested through [`Running::stop_handle`] elsewhere.
    pub fn run<A: App>(
        self,
        app: A,
        source: SourceConfig,
        sink: SinkConfig,
    ) -> Result<Report, Error> {
        self.start(app, source, sink)?.join()
    }
}

fn reserve_port(addr: SocketAddr) -> Result<(socket2::Socket, SocketAddr), Error> {
    let io = |what: &str, e: std::io::Error| Error::Io {
        what: format!("{what} for {addr}"),
        source: e,
    };
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| io("creating a socket to reserve a port", e))?;
    sock.set_reuse_port(true)
        .map_err(|e| io("setting SO_REUSEPORT", e))?;
    sock.bind(&addr.into())
        .map_err(|e| io("binding to pick a free port", e))?;
    let bound = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| {
            io(
                "reading the picked port",
                std::io::Error::other("no address"),
            )
        })?;
    Ok((sock, bound))
}

/// What a core thread needs to start.
struct CoreSetup<A: App> {
    app: A,
    source: SourceConfig,
    sink: SinkConfig,
    router: Router,
    mesh: FullMesh<Envelope<A::Value>>,
    metrics: Metrics,
    stop: StopHandle,
    ready: mpsc::Sender<Result<(), Error>>,
    sink_queue: usize,
    cores: usize,
}

/// What a core thread hands back: its index and its memory-sink output.
type CoreOutcome = (usize, Vec<u8>);

async fn run_core<A: App>(s: CoreSetup<A>) -> CoreOutcome {
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
        SinkConfig::Tcp(cfg) => {
            let (m, sd) = (s.metrics.clone(), shutdown.clone());
            glommio::spawn_local(async move {
                run_tcp_sink(cfg, rx, m, index, sd).await;
                Vec::new()
            })
        }
    };
    let worker = Rc::new(Worker::new(
        s.app,
        s.router,
        senders,
        port,
        s.metrics,
        shutdown.clone(),
    ));
    let receivers = Rc::new(receivers);
    let drains: Vec<_> = (0..s.cores)
        .filter(|&p| p != index)
        .map(|p| glommio::spawn_local(drain_peer(worker.clone(), receivers.clone(), p)))
        .collect();
    let stop = s.stop.clone();
    let watcher = glommio::spawn_local(async move {
        while !stop.is_stopped() {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        shutdown.trigger();
    });

    match s.source {
        SourceConfig::Tcp(cfg) => match bind(&cfg, index) {
            Ok(listener) => {
                let _ = s.ready.send(Ok(()));
                run_tcp_source(worker.clone(), listener, cfg).await;
            }
            Err(e) => {
                let _ = s.ready.send(Err(e));
            }
        },
        SourceConfig::Memory(src) => {
            let _ = s.ready.send(Ok(()));
            run_memory_source(worker.clone(), src, s.cores).await;
        }
    }
    // The source is finished: deliver what it left in the outboxes, then tell the peers.
    worker.flush().await;
    worker.send_done().await;
    for d in drains {
        // While peers are still sending, keep honouring a stop request in the watcher.
        or(d, async {
            std::future::pending::<()>().await;
        })
        .await;
    }
    worker.sink.flush().await;
    worker.sink.close();
    drop(watcher);
    let out = sink_task.await;
    (index, out)
}

/// A started engine.
pub struct Running {
    threads: Vec<ExecutorJoinHandle<CoreOutcome>>,
    stop: StopHandle,
    metrics: Metrics,
    local_addr: Option<SocketAddr>,
    cpus: Vec<usize>,
}

impl Running {
    /// Requests a graceful stop (see [`StopHandle::stop`]).
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops this engine from any thread (for instance a signal handler).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Live metrics of every core.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The TCP source's address (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The CPU each core thread is pinned to, in start order.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Waits for every core to finish and returns what they did.
    pub fn join(self) -> Result<Report, Error> {
        let n = self.threads.len();
        let mut outputs = vec![Vec::new(); n];
        let mut failure = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok((index, out)) if index < n => outputs[index] = out,
                Ok(_) => {
                    failure.get_or_insert(Error::CoreFailed {
                        core: i,
                        reason: "it could not join the channel mesh".into(),
                    });
                }
                Err(e) => {
                    failure.get_or_insert(Error::CoreFailed {
                        core: i,
                        reason: e.to_string(),
                    });
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Report {
            outputs,
            metrics: self.metrics.per_core(),
        })
    }
}

/// What a finished engine did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Each core's output, in order, when the sink was [`SinkConfig::Memory`] (else empty).
    pub outputs: Vec<Vec<u8>>,
    /// Each core's final counters.
    pub metrics: Vec<MetricsSnapshot>,
}

impl Report {
    /// Every output line of every core (without the newline), core by core.
    pub fn output_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.outputs
            .iter()
            .flat_map(|o| o.split(|&b| b == b'\n'))
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).into_owned())
    }

    /// The counters summed over every core.
    pub fn total(&self) -> MetricsSnapshot {
        let mut t = MetricsSnapshot::default();
        for m in &self.metrics {
            t += *m;
        }
        t
    }
}
