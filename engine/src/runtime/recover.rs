//! Checkpoint setup for a run: find the newest usable checkpoint, re-shard it onto this run's
//! cores, say what is restored (and what a TCP source loses), and start the coordinator.

use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{
    describe_source, open, Checkpoints, CkOps, Coordinator, CoordinatorConfig, Decoders, DirLock,
    Link, SourceKind, SourceMark, Valid,
};
use crate::file_source::FilePlan;
use crate::metrics::Metrics;
use crate::pipeline::App;
use crate::routing::Router;
use crate::source::SourceConfig;
use crate::Error;

/// What each core needs to take part in checkpoints.
pub(crate) struct CoreCkSetup<A: App> {
    pub link: Link,
    pub ops: CkOps<A::Chain>,
    /// The last checkpoint id before this run's first one.
    pub last_id: u64,
    /// Restored `(step, key, state)` entries and in-flight records, by owner core.
    pub restored: Arc<[(Vec<u8>, Vec<u8>)]>,
}

impl<A: App> Clone for CoreCkSetup<A> {
    fn clone(&self) -> Self {
        CoreCkSetup {
            link: self.link.clone(),
            ops: self.ops,
            last_id: self.last_id,
            restored: self.restored.clone(),
        }
    }
}

/// What [`recover`] found.
pub(crate) struct Recovery {
    pub valid: Option<Valid>,
    pub next_id: u64,
    /// The directory's lock, held for the run (by the coordinator once it starts).
    pub lock: DirLock,
    /// Unreadable checkpoints left in place: never deleted.
    pub protected: Vec<u64>,
}

/// Opens (or creates) the checkpoint directory and finds the newest usable checkpoint in it,
/// logging what is restored, how old it is, and what a TCP source loses. `chain` is a copy of
/// the pipeline's state steps, used only to check and hash what the checkpoint holds.
pub(crate) fn recover<A: App>(
    cfg: &Checkpoints,
    ops: &CkOps<A::Chain>,
    chain: &A::Chain,
    sources: &[SourceConfig],
    router: &Router,
    metrics: &Metrics,
) -> Result<Recovery, Error> {
    let dir = &cfg.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        what: format!("creating the checkpoint directory {}", dir.display()),
        source: e,
    })?;
    let state = |stage: usize, key: &[u8], b: &[u8]| (ops.check)(chain, stage, key, Some(b), None);
    let value = |stage: usize, key: &[u8], b: &[u8]| (ops.check)(chain, stage, key, None, Some(b));
    let opened = open(
        dir,
        &Decoders {
            state: &state,
            value: &value,
        },
        cfg.start_empty_if_unreadable,
    )?;
    let found = opened.scan;
    if let Some(v) = &found.latest {
        // A checkpoint of a run without a file records no read position: resuming a file from
        // it would read the whole file again on top of the restored state.
        let file = sources.iter().find_map(|s| match s {
            SourceConfig::File(f) => Some(f),
            _ => None,
        });
        if let (Some(f), SourceMark::Unreplayable { kind }) = (file, &v.manifest.source) {
            return Err(Error::CheckpointSourceMismatch {
                dir: dir.clone(),
                id: v.manifest.id,
                kind: kind.clone(),
                file: f.path.clone(),
            });
        }
    }
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
            for s in sources {
                if let SourceConfig::Tcp(t) = s {
                    tracing::warn!(
                        "the TCP source on {} cannot replay: frames that reached the server \
                         after checkpoint {} (its last {:.1} s before the restart) are lost \
                         unless their senders send them again; state resumes from the checkpoint",
                        t.addr,
                        m.id,
                        age.as_secs_f64()
                    );
                }
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
        lock: opened.lock,
        protected: opened.protected,
    })
}

/// Starts the coordinator for a run and re-shards what `rec` restored onto `router`'s cores.
#[allow(clippy::too_many_arguments)] // each is a separate input of the run; a struct would only rename them
pub(crate) fn start_coordinator<A: App>(
    cfg: &Checkpoints,
    ops: CkOps<A::Chain>,
    chain: &A::Chain,
    rec: Recovery,
    file: Option<&FilePlan>,
    sources: &[SourceConfig],
    router: &Router,
    metrics: &Metrics,
) -> Result<(Coordinator, CoreCkSetup<A>), Error> {
    let n = router.cores();
    let source = match file {
        Some(p) => SourceKind::File {
            path: p.path.clone(),
            len: p.len,
            fingerprint: p.fingerprint,
        },
        None => {
            let kinds: Vec<&str> = sources
                .iter()
                .map(|s| match s {
                    SourceConfig::Tcp(_) => "tcp",
                    SourceConfig::Memory(_) => "memory",
                    SourceConfig::File(_) => "file",
                    SourceConfig::Channel(_) => "channel",
                })
                .collect();
            SourceKind::Unreplayable(kinds.join("+"))
        }
    };
    let restored_id = rec.valid.as_ref().map(|v| v.manifest.id);
    let hash = |stage: usize, key: &[u8]| (ops.key_hash)(chain, stage, key, router);
    let parts: Arc<[(Vec<u8>, Vec<u8>)]> = match &rec.valid {
        Some(v) => v.reshard(router, &hash).into(),
        None => vec![(Vec::new(), Vec::new()); n].into(),
    };
    let (coordinator, link) = Coordinator::start(CoordinatorConfig {
        dir: cfg.dir.clone(),
        interval: cfg.interval,
        keep: cfg.keep,
        cores: n,
        seed: router.seed(),
        next_id: rec.next_id,
        restored: restored_id,
        protected: rec.protected,
        lock: rec.lock,
        source,
        metrics: metrics.clone(),
    })?;
    Ok((
        coordinator,
        CoreCkSetup {
            link,
            ops,
            last_id: rec.next_id - 1,
            restored: parts,
        },
    ))
}
