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
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_lite::future::or;
use glommio::channels::channel_mesh::FullMesh;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::checkpoint::{
    describe_source, scan, Checkpoints, Codec, Coordinator, CoordinatorConfig, CoreCheckpoint,
    Decoders, Link, Persist, SourceKind, Valid,
};
use crate::file_source::{self, run_file_source, FilePlan};
use crate::memory::run_memory_source;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pipeline::App;
use crate::routing::{Envelope, Router};
use crate::shutdown::{Shutdown, StopHandle};
use crate::sink::{run_memory_sink, run_tcp_sink, SinkConfig, SinkPort};
use crate::source::SourceConfig;
use crate::worker::{drain_peer, run_initiator, Worker};
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
        self.launch(app, source, sink, None)
    }

    /// Like [`Engine::start`], with consistent checkpoints of all state (see
    /// [`crate::checkpoint`]). First restores the newest usable checkpoint in the directory, if
    /// any, re-sharded onto this engine's cores, before any input is read. A
    /// [file source](SourceConfig::File) resumes from its read positions in it (exactly-once
    /// state); a TCP source cannot replay, so frames received after the checkpoint are lost; a
    /// memory source is fed again from its start on top of the restored state.
    ///
    /// ```
    /// use bettong_engine::{Checkpoints, Engine, FileSourceConfig, Pipeline, SinkConfig, SourceConfig};
    /// # let dir = std::env::temp_dir().join(format!("bettong-doc-ck-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let file = dir.join("in.bin");
    /// let mut framed = Vec::new();
    /// bettong_engine::codec::encode_frame(b"a b a", &mut framed);
    /// std::fs::write(&file, &framed).unwrap();
    /// let pipeline = Pipeline::text()
    ///     .flat_map(|t, emit| t.split(' ').for_each(|w| emit(w.into())))
    ///     .key_by(|w| (w, ()))
    ///     .state(|_w: &str, n: &mut u64, ()| { *n += 1; Some(*n) })
    ///     .encode(|w, n, out| out.extend_from_slice(format!("{w}={n}\n").as_bytes()));
    /// let run = || Engine::new().cores(1).run_with_checkpoints(
    ///     pipeline.clone(),
    ///     SourceConfig::File(FileSourceConfig::new(&file)),
    ///     SinkConfig::Memory,
    ///     Checkpoints::new(dir.join("ck")),
    /// );
    /// assert_eq!(run()?.output_lines().count(), 3);
    /// // The final checkpoint says the file was read: a second run resumes at its end.
    /// assert_eq!(run()?.output_lines().count(), 0);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), bettong_engine::Error>(())
    /// ```
    pub fn start_with_checkpoints<A: App>(
        self,
        app: A,
        source: SourceConfig,
        sink: SinkConfig,
        checkpoints: Checkpoints,
    ) -> Result<Running, Error>
    where
        A::State: Persist,
        A::Value: Persist,
    {
        self.launch(
            app,
            source,
            sink,
            Some((checkpoints, (Codec::of(), Codec::of()))),
        )
    }

    /// [`Engine::start_with_checkpoints`], then waits until the engine finishes.
    pub fn run_with_checkpoints<A: App>(
        self,
        app: A,
        source: SourceConfig,
        sink: SinkConfig,
        checkpoints: Checkpoints,
    ) -> Result<Report, Error>
    where
        A::State: Persist,
        A::Value: Persist,
    {
        self.start_with_checkpoints(app, source, sink, checkpoints)?
            .join()
    }

    fn launch<A: App>(
        self,
        app: A,
        source: SourceConfig,
        sink: SinkConfig,
        checkpoints: Option<(Checkpoints, Codecs<A>)>,
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
            _ => None,
        };
        let stop = StopHandle::new();
        let metrics = Metrics::new(n);
        let router = Router::new(n, self.seed);
        let recovery = match &checkpoints {
            Some((cfg, codecs)) => Some(recover::<A>(cfg, codecs, &source, &router, &metrics)?),
            None => None,
        };
        let file_plan = match &source {
            SourceConfig::File(cfg) => {
                let resume = recovery
                    .as_ref()
                    .and_then(|r| r.valid.as_ref())
                    .map(|v| &v.manifest.source);
                let plan = file_source::plan(cfg, n, resume)?;
                tracing::info!(
                    "reading file:{} ({} bytes of frames) on {n} cores: {} bytes left to read \
                     in {} ranges",
                    plan.path.display(),
                    plan.len,
                    plan.remaining(),
                    plan.per_core.iter().map(Vec::len).sum::<usize>()
                );
                Some(plan)
            }
            _ => None,
        };
        let (coordinator, ck_setup) = match (checkpoints, recovery) {
            (Some((cfg, codecs)), Some(rec)) => {
                let source_kind = match (&file_plan, &source) {
                    (Some(p), _) => SourceKind::File {
                        path: p.path.clone(),
                        len: p.len,
                    },
                    (None, SourceConfig::Tcp(_)) => SourceKind::Unreplayable("tcp".into()),
                    (None, _) => SourceKind::Unreplayable("memory".into()),
                };
                let restored_id = rec.valid.as_ref().map(|v| v.manifest.id);
                let parts: Arc<[(Vec<u8>, Vec<u8>)]> = match &rec.valid {
                    Some(v) => v.reshard(&router).into(),
                    None => vec![(Vec::new(), Vec::new()); n].into(),
                };
                let (coordinator, link) = Coordinator::start(CoordinatorConfig {
                    dir: cfg.dir.clone(),
                    interval: cfg.interval,
                    keep: cfg.keep,
                    cores: n,
                    next_id: rec.next_id,
                    restored: restored_id,
                    source: source_kind,
                    metrics: metrics.clone(),
                })?;
                let setup = CoreCkSetup {
                    link,
                    codecs,
                    last_id: rec.next_id - 1,
                    restored: parts,
                };
                (Some(coordinator), Some(setup))
            }
            _ => (None, None),
        };
        let file_plan = file_plan.map(Arc::new);
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
                ck: ck_setup.clone(),
                file: file_plan.clone(),
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
                    if let Some(c) = &coordinator {
                        c.abort();
                    }
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
            coordinator,
        };
        if let (None, Some(c)) = (&first_error, &running.coordinator) {
            c.started();
        }
        match first_error {
            Some(e) => {
                if let Some(c) = &running.coordinator {
                    c.abort();
                }
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
    /// Checkpointing, when on: the link to the coordinator and the state this core restores.
    ck: Option<CoreCkSetup<A>>,
    /// With a file source: which ranges each core reads.
    file: Option<Arc<FilePlan>>,
}

/// How a pipeline's state and values are written into checkpoints.
type Codecs<A> = (Codec<<A as App>::State>, Codec<<A as App>::Value>);

/// A core's checkpointing setup.
struct CoreCkSetup<A: App> {
    link: Link,
    codecs: Codecs<A>,
    /// The last checkpoint id before this run's first one.
    last_id: u64,
    /// Restored `(key, state)` entries and in-flight `(key, value)` records, by owner core.
    restored: Arc<[(Vec<u8>, Vec<u8>)]>,
}

impl<A: App> Clone for CoreCkSetup<A> {
    fn clone(&self) -> Self {
        CoreCkSetup {
            link: self.link.clone(),
            codecs: self.codecs,
            last_id: self.last_id,
            restored: self.restored.clone(),
        }
    }
}

/// What [`recover`] found.
struct Recovery {
    valid: Option<Valid>,
    next_id: u64,
}

/// Opens (or creates) the checkpoint directory and finds the newest usable checkpoint in it,
/// logging what is restored, how old it is, and what a TCP source loses.
fn recover<A: App>(
    cfg: &Checkpoints,
    codecs: &Codecs<A>,
    source: &SourceConfig,
    router: &Router,
    metrics: &Metrics,
) -> Result<Recovery, Error> {
    let dir = &cfg.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        what: format!("creating the checkpoint directory {}", dir.display()),
        source: e,
    })?;
    let state = |b: &[u8]| codecs.0.decode(b).is_some();
    let value = |b: &[u8]| codecs.1.decode(b).is_some();
    let found = scan(
        dir,
        &Decoders {
            state: &state,
            value: &value,
        },
    )?;
    match &found.latest {
        Some(v) => {
            let m = &v.manifest;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let age = Duration::from_millis(now.saturating_sub(m.created_unix_ms));
            crate::metrics::CoreMetrics::set(&metrics.checkpoints().restored_id, m.id);
            tracing::info!(
                "restored checkpoint {} from {}: {} keys, taken {:.1} s ago on {} cores (now \
                 re-sharded onto {}); its source was at {}",
                m.id,
                dir.display(),
                v.keys(),
                age.as_secs_f64(),
                m.cores,
                router.cores(),
                describe_source(&m.source)
            );
            if let SourceConfig::Tcp(t) = source {
                tracing::warn!(
                    "the TCP source on {} cannot replay: frames that reached the server after \
                     checkpoint {} (its last {:.1} s before the restart) are lost unless their \
                     senders send them again; counts resume from the checkpoint",
                    t.addr,
                    m.id,
                    age.as_secs_f64()
                );
            }
        }
        None => tracing::info!(
            "no usable checkpoint in {}: starting from empty state",
            dir.display()
        ),
    }
    Ok(Recovery {
        valid: found.latest,
        next_id: found.max_id + 1,
    })
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
    let mut worker = Worker::new(s.app, s.router, senders, port, s.metrics, shutdown.clone());
    if let Some(ck) = &s.ck {
        worker = worker.with_checkpoints(CoreCheckpoint::new(
            index,
            s.cores,
            ck.link.clone(),
            ck.codecs,
            ck.last_id,
        ));
        // Before any input is read (peers' batches wait in the rings until the drains start).
        let (state, in_flight) = &ck.restored[index];
        worker.restore(state, in_flight);
    }
    let worker = Rc::new(worker);
    let initiator =
        s.ck.as_ref()
            .map(|_| glommio::spawn_local(run_initiator(worker.clone())));
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
        SourceConfig::Tcp(cfg) => match crate::tcp::listen(&cfg, index) {
            Ok(listener) => {
                let _ = s.ready.send(Ok(()));
                crate::tcp::run(worker.clone(), listener, cfg).await;
            }
            Err(e) => {
                let _ = s.ready.send(Err(e));
            }
        },
        SourceConfig::Memory(src) => {
            let _ = s.ready.send(Ok(()));
            run_memory_source(worker.clone(), src, s.cores).await;
        }
        SourceConfig::File(cfg) => {
            let _ = s.ready.send(Ok(()));
            let (path, ranges) = match &s.file {
                Some(plan) => (plan.path.clone(), plan.per_core[index].clone()),
                None => (cfg.path.clone(), Vec::new()),
            };
            run_file_source(worker.clone(), cfg, path, ranges).await;
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
    // Every input is finished: the final checkpoint (and any still asked of this core).
    if let Some(initiator) = initiator {
        worker.finish_checkpoints(initiator).await;
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
    coordinator: Option<Coordinator>,
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
        // The final checkpoint is committed once every core has handed its state over.
        if let Some(c) = self.coordinator {
            c.finish();
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
