//! The coordinator: asks for a checkpoint every interval, collects every core's snapshot,
//! writes the files and commits the checkpoint with its manifest.
//!
//! It runs on its own thread, off every core, so file I/O and fsyncs never stall a data path.
//! Cores learn that a checkpoint is due by reading [`Link::requested`] (an atomic id; the
//! coordinator wakes them when it changes, [`Link::next_request`]) and hand their snapshots back
//! over a channel. At most one checkpoint is in progress: the next one is
//! asked for only once the previous one is committed or has failed.
//!
//! Before a checkpoint commits, every core's sink must have taken the output produced before the
//! cut (`bytes_out` reaches the mark the core reported), so that after a crash only output
//! *after* the last committed checkpoint can be emitted again, never lost. For a TCP sink,
//! `bytes_out` counts only bytes the receiver's kernel acknowledged (the socket's `SIOCOUTQ`,
//! see `sink.rs`), not bytes merely written into the socket: those still die with the
//! connection if it breaks, and a checkpoint that counted them would never produce them again.
//!
//! At the end of a run (every source finished, or a stop was requested) each core sends a final
//! snapshot, and the coordinator commits a last checkpoint from them: a restart then resumes
//! exactly where this run stopped.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format::{
    checkpoint_dir_name, parse_checkpoint_dir_name, sync_dir, write_atomic, write_shard, Manifest,
    ShardContent, ShardInfo, SourceMark, MANIFEST,
};
use crate::metrics::{CoreMetrics, Metrics};
use crate::remote_notify::RemoteNotify;
use crate::Error;

/// A pause above this is logged as a warning.
const LONG_PAUSE: Duration = Duration::from_millis(100);

/// One core's part of a checkpoint.
pub(crate) struct Contribution {
    pub core: usize,
    /// The checkpoint id; for a final snapshot, the first id it stands for.
    pub id: u64,
    /// The shard's entries ([`super::format::push_entry`]).
    pub body: Vec<u8>,
    pub keys: u64,
    /// Records in flight to the core at the cut, `(key, encoded value)` entries.
    pub log: Vec<u8>,
    pub log_records: u64,
    /// `(next offset, end)` of each file range the core reads.
    pub ranges: Vec<(u64, u64)>,
    /// Output bytes the core had produced at its cut.
    pub out_mark: u64,
    /// How long the core's data path stopped for this checkpoint (the shard copy).
    pub pause: Duration,
}

/// What cores tell the coordinator.
pub(crate) enum CoreReport {
    /// The snapshot for checkpoint `id`.
    Snapshot(Contribution),
    /// The core's state at the end of the run. Its sources are finished and so are every peer's
    /// (it has heard Done from all), so this state is also the core's state at the cut of any
    /// checkpoint from `id` on.
    Final(Contribution),
}

/// What the coordinator and the cores share.
#[derive(Debug, Default)]
struct Shared {
    requested: AtomicU64,
    /// Wakes the cores' initiators when `requested` changes (they sleep on it, no timer).
    request_posted: RemoteNotify,
    /// Set once every core started: before that nothing is asked for or written.
    started: AtomicBool,
    abort: AtomicBool,
    cores_exited: AtomicBool,
}

/// A core's connection to the coordinator.
#[derive(Clone)]
pub(crate) struct Link {
    shared: Arc<Shared>,
    tx: mpsc::Sender<CoreReport>,
}

impl Link {
    /// The id of the latest checkpoint asked for.
    pub(crate) fn requested(&self) -> u64 {
        self.shared.requested.load(Ordering::Acquire)
    }

    /// Resolves at the first new request after this call: create it before reading
    /// [`Link::requested`], then await it if nothing was due.
    pub(crate) fn next_request(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.shared.request_posted.wait()
    }

    /// Hands a snapshot to the coordinator (never blocks).
    pub(crate) fn send(&self, r: CoreReport) {
        // The coordinator only goes away after every core has finished, or on an aborted
        // start, when nothing is to be written anyway.
        let _ = self.tx.send(r);
    }
}

/// What the engine's source is, for the manifest.
#[derive(Debug, Clone)]
pub(crate) enum SourceKind {
    File {
        path: PathBuf,
        len: u64,
        fingerprint: u64,
    },
    Unreplayable(String),
}

/// Everything the coordinator needs to start.
pub(crate) struct CoordinatorConfig {
    pub dir: PathBuf,
    pub interval: Duration,
    /// Committed checkpoints kept on disk (at least 2).
    pub keep: usize,
    pub cores: usize,
    /// The key hash's seed, recorded in every manifest.
    pub seed: u64,
    /// The id the next checkpoint gets (above every id in the directory).
    pub next_id: u64,
    /// The checkpoint this run restored from: kept until a newer one is committed.
    pub restored: Option<u64>,
    /// Checkpoints that could not be read and are still in place: never deleted.
    pub protected: Vec<u64>,
    /// The directory's lock: held until the coordinator thread ends (after the final commit).
    #[allow(dead_code)] // held, never read
    pub lock: super::recovery::DirLock,
    pub source: SourceKind,
    pub metrics: Metrics,
}

/// The running coordinator thread.
pub(crate) struct Coordinator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Coordinator {
    /// Starts the coordinator; the returned link is cloned to every core.
    pub(crate) fn start(cfg: CoordinatorConfig) -> Result<(Coordinator, Link), Error> {
        let shared = Arc::new(Shared::default());
        shared
            .requested
            .store(cfg.next_id.saturating_sub(1), Ordering::Release);
        let (tx, rx) = mpsc::channel();
        let link = Link {
            shared: shared.clone(),
            tx,
        };
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("bettong-checkpoint".into())
            .spawn(move || Committer::new(cfg, sh).run(rx))
            .map_err(|e| Error::Io {
                what: "starting the checkpoint coordinator thread".into(),
                source: e,
            })?;
        Ok((
            Coordinator {
                shared,
                thread: Some(thread),
            },
            link,
        ))
    }

    /// Every core started: checkpoints may begin.
    pub(crate) fn started(&self) {
        self.shared.started.store(true, Ordering::Release);
    }

    /// The engine failed to start: write nothing.
    pub(crate) fn abort(&self) {
        self.shared.abort.store(true, Ordering::Release);
    }

    /// Every core has exited: commit the final checkpoint if every core sent one, and return
    /// once that is done.
    pub(crate) fn finish(mut self) {
        self.shared.cores_exited.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the checkpoint coordinator thread panicked");
            }
        }
    }
}

/// A checkpoint asked for and not yet committed.
struct Pending {
    id: u64,
    asked: Instant,
    created_unix_ms: u64,
    snapshots: Vec<Option<Contribution>>,
}

/// The coordinator thread's state.
struct Committer {
    cfg: CoordinatorConfig,
    shared: Arc<Shared>,
    /// The last committed checkpoint (or the restored one): the fallback.
    previous: Option<u64>,
    /// The checkpoints kept on disk, oldest first (the restored one, then this run's).
    kept: std::collections::VecDeque<u64>,
    committed: u64,
    max_pause: Duration,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Committer {
    fn new(cfg: CoordinatorConfig, shared: Arc<Shared>) -> Self {
        Committer {
            previous: cfg.restored,
            kept: cfg.restored.into_iter().collect(),
            cfg,
            shared,
            committed: 0,
            max_pause: Duration::ZERO,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<CoreReport>) {
        let n = self.cfg.cores;
        let mut pending: Option<Pending> = None;
        let mut finals: Vec<Option<Contribution>> = (0..n).map(|_| None).collect();
        let mut next_at = Instant::now() + self.cfg.interval;
        loop {
            let wait = match &pending {
                Some(_) => Duration::from_millis(100),
                None => next_at.saturating_duration_since(Instant::now()),
            };
            let disconnected = match rx.recv_timeout(wait) {
                Ok(CoreReport::Snapshot(c)) => {
                    match pending.as_mut() {
                        Some(p) if p.id == c.id => {
                            let core = c.core;
                            p.snapshots[core] = Some(c);
                        }
                        _ => tracing::error!(
                            core = c.core,
                            "core {} sent a snapshot for checkpoint {}, which is not the one in \
                             progress; ignored",
                            c.core,
                            c.id
                        ),
                    }
                    false
                }
                Ok(CoreReport::Final(c)) => {
                    let core = c.core;
                    finals[core] = Some(c);
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            if self.shared.abort.load(Ordering::Acquire) {
                return;
            }
            if !self.shared.started.load(Ordering::Acquire) {
                if disconnected {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if finals.iter().all(Option::is_some) {
                // Every source is finished: the final state supersedes anything in progress.
                let parts: Vec<&Contribution> = finals.iter().flatten().collect();
                let id = self.cfg.next_id;
                if self.commit(id, unix_ms(), &parts, true).is_ok() {
                    self.summary();
                }
                return;
            }
            if disconnected {
                tracing::error!(
                    "not every core finished its run cleanly, so no final checkpoint is \
                     written; a restart resumes from {}",
                    describe(self.previous)
                );
                return;
            }
            if let Some(p) = pending.take() {
                let ready: Option<Vec<&Contribution>> = (0..n)
                    .map(|i| {
                        p.snapshots[i]
                            .as_ref()
                            .or(finals[i].as_ref().filter(|f| f.id <= p.id))
                    })
                    .collect();
                match ready {
                    Some(parts) => {
                        let _ = self.commit(p.id, p.created_unix_ms, &parts, false);
                        // Keep the cadence, but never start the next one at once after a slow
                        // commit: leave the data path at least half an interval.
                        next_at = (p.asked + self.cfg.interval)
                            .max(Instant::now() + self.cfg.interval / 2);
                    }
                    None => pending = Some(p),
                }
            }
            let any_final = finals.iter().any(Option::is_some);
            if pending.is_none() && !any_final && Instant::now() >= next_at {
                let id = self.cfg.next_id;
                self.cfg.next_id += 1;
                pending = Some(Pending {
                    id,
                    asked: Instant::now(),
                    created_unix_ms: unix_ms(),
                    snapshots: (0..n).map(|_| None).collect(),
                });
                self.shared.requested.store(id, Ordering::Release);
                self.shared.request_posted.notify();
            }
        }
    }

    /// Writes and commits checkpoint `id` from one contribution per core.
    fn commit(
        &mut self,
        id: u64,
        created_unix_ms: u64,
        parts: &[&Contribution],
        last: bool,
    ) -> Result<(), ()> {
        let started = Instant::now();
        let dir = self.cfg.dir.join(checkpoint_dir_name(id));
        let result = self.write(id, created_unix_ms, parts, &dir);
        let m = self.cfg.metrics.checkpoints();
        match result {
            Ok(manifest) => {
                let keys: u64 = manifest.shards.iter().map(|s| s.keys).sum();
                let in_flight: u64 = manifest.shards.iter().map(|s| s.log).sum();
                let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
                let (slowest, pause) = parts
                    .iter()
                    .map(|c| (c.core, c.pause))
                    .max_by_key(|&(_, p)| p)
                    .unwrap_or((0, Duration::ZERO));
                self.max_pause = self.max_pause.max(pause);
                self.committed += 1;
                CoreMetrics::add(&m.committed, 1);
                CoreMetrics::set(&m.last_id, id);
                CoreMetrics::set(&m.last_unix_ms, created_unix_ms);
                CoreMetrics::set(&m.last_pause_us, pause.as_micros() as u64);
                CoreMetrics::set(&m.max_pause_us, self.max_pause.as_micros() as u64);
                CoreMetrics::set(&m.last_commit_us, started.elapsed().as_micros() as u64);
                CoreMetrics::set(&m.last_bytes, bytes);
                let what = if last {
                    "final checkpoint"
                } else {
                    "checkpoint"
                };
                let line = format!(
                    "{what} {id} committed in {}: {keys} keys and {in_flight} records in flight, \
                     {bytes} bytes in {} shard files; longest pause {:.3} ms (core {slowest}); \
                     source at {}",
                    dir.display(),
                    parts.len(),
                    pause.as_secs_f64() * 1e3,
                    describe_source(&manifest.source),
                );
                if last || self.committed == 1 {
                    tracing::info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                if pause > LONG_PAUSE {
                    tracing::warn!(
                        "checkpoint {id} stopped core {slowest} for {:.1} ms to copy its shard \
                         out",
                        pause.as_secs_f64() * 1e3
                    );
                }
                self.kept.push_back(id);
                while self.kept.len() > self.cfg.keep.max(2) {
                    self.kept.pop_front();
                }
                self.collect_garbage(id);
                self.previous = Some(id);
                Ok(())
            }
            Err(why) => {
                CoreMetrics::add(&m.failed, 1);
                tracing::error!(
                    "checkpoint {id} was not committed: {why}; {} stays the one a restart \
                     resumes from{}",
                    describe(self.previous),
                    if last {
                        ""
                    } else {
                        " (the next one is tried at the next interval)"
                    }
                );
                let _ = fs::remove_dir_all(&dir);
                Err(())
            }
        }
    }

    fn write(
        &self,
        id: u64,
        created_unix_ms: u64,
        parts: &[&Contribution],
        dir: &std::path::Path,
    ) -> Result<Manifest, String> {
        let n = parts.len();
        let io = |what: String| move |e: std::io::Error| format!("{what}: {e}");
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        sync_dir(&self.cfg.dir).map_err(io(format!("fsyncing {}", self.cfg.dir.display())))?;
        // Every core's file in parallel: large shards are written at disk speed.
        let shards: Vec<Result<ShardInfo, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let content = ShardContent {
                            core: c.core,
                            keys: c.keys,
                            state: &c.body,
                            log: c.log_records,
                            log_body: &c.log,
                        };
                        write_shard(dir, id, n, &content).map_err(|e| {
                            format!("writing shard {} in {}: {e}", c.core, dir.display())
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a shard writer thread panicked".into()))
                })
                .collect()
        });
        let shards = shards.into_iter().collect::<Result<Vec<_>, _>>()?;
        sync_dir(dir).map_err(io(format!("fsyncing {}", dir.display())))?;
        self.wait_for_sinks(id, parts)?;
        let source = match &self.cfg.source {
            SourceKind::Unreplayable(kind) => SourceMark::Unreplayable { kind: kind.clone() },
            SourceKind::File {
                path,
                len,
                fingerprint,
            } => {
                let mut ranges: Vec<(u64, u64)> = parts
                    .iter()
                    .flat_map(|c| c.ranges.iter().copied())
                    .filter(|(a, b)| a < b)
                    .collect();
                ranges.sort_unstable();
                SourceMark::File {
                    path: path.clone(),
                    len: *len,
                    fingerprint: Some(*fingerprint),
                    ranges,
                }
            }
        };
        let manifest = Manifest {
            id,
            created_unix_ms,
            cores: n,
            seed: Some(self.cfg.seed),
            shards,
            source,
        };
        let text = manifest.to_text();
        write_atomic(dir, MANIFEST, |f| {
            use std::io::Write;
            f.write_all(text.as_bytes())
        })
        .map_err(io(format!("writing {}/{MANIFEST}", dir.display())))?;
        sync_dir(dir).map_err(io(format!("fsyncing {}", dir.display())))?;
        Ok(manifest)
    }

    /// Waits until every core's sink has taken the output produced before the cut: for a TCP
    /// sink, until the receiver's kernel acknowledged it.
    fn wait_for_sinks(&self, id: u64, parts: &[&Contribution]) -> Result<(), String> {
        let started = Instant::now();
        let mut warned = false;
        loop {
            let exited = self.shared.cores_exited.load(Ordering::Acquire);
            let behind: Vec<(usize, u64)> = parts
                .iter()
                .filter_map(|c| {
                    let out = self.cfg.metrics.core(c.core).snapshot().bytes_out;
                    (out < c.out_mark).then(|| (c.core, c.out_mark - out))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if exited {
                return Err(format!(
                    "the sink never took output produced before it ({} bytes of core {}): that \
                     output would be lost if this checkpoint were used",
                    behind[0].1, behind[0].0
                ));
            }
            if self.shared.abort.load(Ordering::Acquire) {
                return Err("the engine is aborting".into());
            }
            if !warned && started.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(
                    "checkpoint {id} waits for core {}'s sink to take {} more bytes of output \
                     produced before it (is the sink down, or not reading?); it commits once the \
                     receiver acknowledged them",
                    behind[0].0,
                    behind[0].1
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Deletes every checkpoint directory older than `latest` but the kept ones. Checkpoints
    /// this run could not read were moved aside at start (or, if that failed, are in
    /// `protected`): never deleted.
    fn collect_garbage(&self, latest: u64) {
        let Ok(entries) = fs::read_dir(&self.cfg.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(parse_checkpoint_dir_name) else {
                continue;
            };
            if self.kept.contains(&id) || id >= latest || self.cfg.protected.contains(&id) {
                continue;
            }
            if let Err(err) = fs::remove_dir_all(e.path()) {
                tracing::warn!("cannot delete old checkpoint {}: {err}", e.path().display());
            }
        }
    }

    fn summary(&self) {
        tracing::info!(
            "checkpoints this run: {} committed, longest pause {:.3} ms",
            self.committed,
            self.max_pause.as_secs_f64() * 1e3
        );
    }
}

fn describe(id: Option<u64>) -> String {
    match id {
        Some(id) => format!("checkpoint {id}"),
        None => "the empty state (no checkpoint)".into(),
    }
}

/// "file /x: 1234 of 5678 bytes read" or "tcp (not replayable)".
pub(crate) fn describe_source(s: &SourceMark) -> String {
    match s {
        SourceMark::Unreplayable { kind } => format!("{kind} (not replayable)"),
        SourceMark::File { path, len, .. } => format!(
            "file:{}: {} of {len} bytes read",
            path.display(),
            s.consumed()
        ),
    }
}

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;
