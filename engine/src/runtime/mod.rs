//! The runtime: start one pinned glommio executor per core, wire them together, run a pipeline,
//! stop it. This file is the engine builder and its handles; `core.rs` is one core's lifecycle
//! and `recover.rs` the checkpoint setup of a run.
//!
//! Each core joins a full mesh of SPSC rings (glommio's `MeshBuilder::full`), so every pair of
//! cores has a ring in each direction; its index in the mesh (`Senders::peer_id`) is its shard
//! index. Each core then builds its own copy of the pipeline and runs every source.

mod core;
mod recover;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::channel_mesh::FullMesh;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use self::core::{run_core, CoreOutcome, CoreSetup};
use crate::checkpoint::{Checkpoints, CkOps, Coordinator, PersistApp};
use crate::dataflow::Fronts;
use crate::file_source;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pipeline::App;
use crate::routing::{Envelope, Router, DEFAULT_MAX_KEY_BYTES};
use crate::shutdown::StopHandle;
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::tcp::balance::OpenCounts;
use crate::Error;

/// The sources of a run: one [`SourceConfig`], or one per source of a merged pipeline (in
/// merge order), as a `Vec` or an array.
pub trait IntoSources {
    /// The sources, in order.
    fn into_sources(self) -> Vec<SourceConfig>;
}

impl IntoSources for SourceConfig {
    fn into_sources(self) -> Vec<SourceConfig> {
        vec![self]
    }
}

impl IntoSources for Vec<SourceConfig> {
    fn into_sources(self) -> Vec<SourceConfig> {
        self
    }
}

impl<const N: usize> IntoSources for [SourceConfig; N] {
    fn into_sources(self) -> Vec<SourceConfig> {
        self.into()
    }
}

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
    cpus: Option<Vec<usize>>,
    ring_capacity: usize,
    sink_queue: usize,
    seed: Option<u64>,
    max_key_bytes: usize,
    spin_before_park: Option<Duration>,
    balance_connections: bool,
    offload: Option<Arc<crate::offload::Offload>>,
}

/// The hash seed every engine used before seeds were random and recorded in checkpoints: a
/// checkpoint whose manifest names no seed was made with it.
pub(crate) const LEGACY_SEED: u64 = 0x6265_7474_6f6e_6721;

impl Default for Engine {
    fn default() -> Self {
        Engine {
            cores: None,
            cpus: None,
            ring_capacity: 32,
            sink_queue: 16,
            seed: None,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            spin_before_park: spin_from_env(),
            balance_connections: std::env::var("BETTONG_BALANCE").map_or(true, |v| v != "0"),
            offload: None,
        }
    }
}

/// `BETTONG_SPIN_BEFORE_PARK_US=N`: the default [`Engine::spin_before_park`], for measuring
/// the cost of parking an idle executor (a knob of tuning.md); unset or 0: no spinning.
fn spin_from_env() -> Option<Duration> {
    let us: u64 = std::env::var("BETTONG_SPIN_BEFORE_PARK_US")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (us > 0).then(|| Duration::from_micros(us.min(1_000_000)))
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

    /// Runs on `n` cores (pinned to the first `n` online CPUs, or of the [`Engine::cpus`]).
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n);
        self
    }

    /// Runs on these CPUs, one core pinned to each (all of them unless [`Engine::cores`] asks
    /// for fewer), instead of the first online ones. They need not be CPUs the calling thread
    /// may use, only CPUs the machine has online
    /// ([`placement::system_cpus`](crate::placement::system_cpus)).
    pub fn cpus(mut self, cpus: impl Into<Vec<usize>>) -> Self {
        let mut cpus = cpus.into();
        cpus.sort_unstable();
        cpus.dedup();
        self.cpus = Some(cpus);
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

    /// Seed of the key hash (every core shares it). By default each engine picks a random
    /// seed ([`routing::random_seed`](crate::routing::random_seed)), so clients cannot choose
    /// keys that all land on one core, and a run restored from a checkpoint takes the seed
    /// recorded in it (so it routes as the run that wrote it did); this overrides both.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Longest key kept, in bytes ([`Key::byte_len`](crate::key::Key::byte_len): string and
    /// byte keys); a record with a longer key is dropped and counted in `keys_rejected`, and
    /// the other records of its frame still count. Default
    /// [`DEFAULT_MAX_KEY_BYTES`](crate::routing::DEFAULT_MAX_KEY_BYTES);
    /// `usize::MAX` keeps every key.
    pub fn max_key_bytes(mut self, n: usize) -> Self {
        self.max_key_bytes = n;
        self
    }

    /// How long an idle executor spins before it parks (glommio's `spin_before_park`).
    pub fn spin_before_park(mut self, d: Duration) -> Self {
        self.spin_before_park = Some(d);
        self
    }

    /// Hands each accepted TCP connection to the core with the fewest open, when it has fewer
    /// than the core that accepted it (`tcp/balance.rs`). On by default; `BETTONG_BALANCE=0`
    /// turns the default off (see README, "Connections balanced over the cores").
    pub fn balance_connections(mut self, on: bool) -> Self {
        self.balance_connections = on;
        self
    }

    /// Hands every read, as one batch, to the core's helper process and ingests its answer
    /// instead (see [`crate::offload`]): the pipeline then decodes the helpers' frames.
    pub fn offload(mut self, offload: Arc<crate::offload::Offload>) -> Self {
        self.offload = Some(offload);
        self
    }

    /// Starts `app` and returns at once. Sources are listening when this returns. `sources`
    /// is one [`SourceConfig`] or, for a merged pipeline, one per source in merge order.
    pub fn start<A: App>(
        self,
        app: A,
        sources: impl IntoSources,
        sink: SinkConfig,
    ) -> Result<Running, Error> {
        self.launch(app, sources.into_sources(), sink, None)
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
    pub fn start_with_checkpoints<A: PersistApp>(
        self,
        app: A,
        sources: impl IntoSources,
        sink: SinkConfig,
        checkpoints: Checkpoints,
    ) -> Result<Running, Error> {
        self.launch(
            app,
            sources.into_sources(),
            sink,
            Some((checkpoints, CkOps::of())),
        )
    }

    /// [`Engine::start_with_checkpoints`], then waits until the engine finishes.
    pub fn run_with_checkpoints<A: PersistApp>(
        self,
        app: A,
        sources: impl IntoSources,
        sink: SinkConfig,
        checkpoints: Checkpoints,
    ) -> Result<Report, Error> {
        self.start_with_checkpoints(app, sources, sink, checkpoints)?
            .join()
    }

    fn launch<A: App>(
        self,
        app: A,
        sources: Vec<SourceConfig>,
        sink: SinkConfig,
        checkpoints: Option<(Checkpoints, CkOps<A::Chain>)>,
    ) -> Result<Running, Error> {
        let cpus = match &self.cpus {
            None => online_cpus(),
            Some(cpus) => {
                crate::placement::require_online(cpus)?;
                cpus.clone()
            }
        };
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
        let (fronts, chain) = app.clone().build();
        if fronts.count() != sources.len() {
            return Err(Error::SourceCount {
                pipeline: fronts.count(),
                given: sources.len(),
            });
        }
        drop(fronts);
        // Port 0 must mean one port for every core: reserve it with a bound, non-listening
        // SO_REUSEPORT socket that the cores' listeners join, then let it go once they have.
        let mut reservations = Vec::new();
        let mut sources = sources;
        for s in &mut sources {
            if let SourceConfig::Tcp(cfg) = s {
                if cfg.addr.port() == 0 {
                    let (sock, addr) = reserve_port(cfg.addr)?;
                    cfg.addr = addr;
                    reservations.push(sock);
                }
            }
        }
        let local_addrs: Vec<Option<SocketAddr>> = sources
            .iter()
            .map(|s| match s {
                SourceConfig::Tcp(cfg) => Some(cfg.addr),
                _ => None,
            })
            .collect();
        let stop = StopHandle::new();
        let metrics = Metrics::new(n);
        let mut router = Router::new(n, self.seed.unwrap_or_else(crate::routing::random_seed))
            .with_max_key_bytes(self.max_key_bytes);
        let recovery = match &checkpoints {
            Some((cfg, ops)) => Some(recover::recover::<A>(
                cfg, ops, &chain, &sources, &router, &metrics,
            )?),
            None => None,
        };
        // A restored run hashes as the run that wrote the checkpoint did, unless told otherwise
        // (re-sharding is correct with any seed: it hashes every key again).
        if let Some(v) = recovery.as_ref().and_then(|r| r.valid.as_ref()) {
            let recorded = v.manifest.seed.unwrap_or(LEGACY_SEED);
            match self.seed {
                None => router = Router::new(n, recorded).with_max_key_bytes(self.max_key_bytes),
                Some(s) if s != recorded => tracing::info!(
                    "checkpoint {} was taken with another hash seed; its keys are re-sharded \
                     with the seed this engine was given",
                    v.manifest.id
                ),
                Some(_) => {}
            }
        }
        let files: Vec<&file_source::FileSourceConfig> = sources
            .iter()
            .filter_map(|s| match s {
                SourceConfig::File(f) => Some(f),
                _ => None,
            })
            .collect();
        if files.len() > 1 && checkpoints.is_some() {
            return Err(Error::Unsupported(
                "checkpoints with more than one file source (a checkpoint records one file's \
                 read positions)"
                    .into(),
            ));
        }
        let file_plan = match files.first() {
            Some(cfg) => {
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
            None => None,
        };
        let (coordinator, ck_setup) = match (checkpoints, recovery) {
            (Some((cfg, ops)), Some(rec)) => {
                let (c, setup) = recover::start_coordinator::<A>(
                    &cfg,
                    ops,
                    &chain,
                    rec,
                    file_plan.as_ref(),
                    &sources,
                    &router,
                    &metrics,
                )?;
                (Some(c), Some(setup))
            }
            _ => (None, None),
        };
        drop(chain);
        let file_plan = file_plan.map(Arc::new);
        let mesh = FullMesh::<Envelope>::full(n, self.ring_capacity);
        let balance: Vec<Option<Arc<OpenCounts>>> = sources
            .iter()
            .map(|s| {
                (self.balance_connections && matches!(s, SourceConfig::Tcp(_)))
                    .then(|| Arc::new(OpenCounts::new(n)))
            })
            .collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Error>>();
        let mut threads = Vec::with_capacity(n);
        for (i, &cpu) in cpus.iter().take(n).enumerate() {
            let ctx = CoreSetup {
                app: app.clone(),
                sources: sources.clone(),
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
                balance: balance.clone(),
            };
            let mut builder =
                LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("bettong-{i}"));
            if let Some(d) = self.spin_before_park {
                builder = builder.spin_before_park(d);
            }
            let offload = self.offload.clone();
            match builder.spawn(move || {
                crate::offload::enter(i, offload.as_ref());
                run_core(ctx)
            }) {
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
        drop(reservations);
        let running = Running {
            threads,
            stop,
            seed: router.seed(),
            metrics,
            local_addrs,
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
        sources: impl IntoSources,
        sink: SinkConfig,
    ) -> Result<Report, Error> {
        self.start(app, sources, sink)?.join()
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

/// A started engine.
pub struct Running {
    threads: Vec<ExecutorJoinHandle<CoreOutcome>>,
    stop: StopHandle,
    seed: u64,
    metrics: Metrics,
    local_addrs: Vec<Option<SocketAddr>>,
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

    /// The first TCP source's address (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addrs.iter().flatten().next().copied()
    }

    /// Each source's address, in source order (`None` for sources that are not TCP).
    pub fn local_addrs(&self) -> &[Option<SocketAddr>] {
        &self.local_addrs
    }

    /// The seed of the key hash this engine routes with: random per engine, the checkpoint's
    /// when it restored one, or the one given to [`Engine::seed`].
    pub fn seed(&self) -> u64 {
        self.seed
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
