//! Checkpoints and recovery: consistent snapshots of every core's keyed state, taken while the
//! engine runs, and the restart that resumes from the newest one.
//!
//! # The protocol (Chandy–Lamport snapshots over the rings)
//!
//! Every interval the coordinator thread (`checkpoint/coordinator.rs`) asks for checkpoint `id`. A core
//! **cuts** for it at the first of: its initiator task seeing the request, or the first
//! `Barrier(id)` arriving from a peer. The cut is synchronous and is the only pause of the data
//! path: the core copies its shard out (encoded), notes its file read positions, and sets its
//! outboxes aside; they hold only records read before the cut. The next task to hold the core's
//! send lock (a source's flush or the initiator) sends those batches and then `Barrier(id)` on
//! every ring to a peer, before any batch of records read after the cut. So on every ring, the
//! records before the barrier are exactly those its sender read before its cut.
//!
//! Records that a peer read before its cut may still be on the ring when this core cuts: they
//! are applied as usual and also **logged** (the channel state), until that peer's barrier (or
//! its Done) arrives. Nothing is held or blocked. Once every peer's barrier is in, the core hands
//! the shard copy and the log to the coordinator, which writes them off the cores and commits
//! the checkpoint with a manifest once every shard file is durable and every core's sink has
//! taken the output produced before the checkpoint ([`format`] describes the files). The state
//! a checkpoint stands for is the shards with the logged records applied: exactly the effect of
//! every record read before the cut on every core, and of no other.
//!
//! # Recovery
//!
//! On start, the newest checkpoint whose files all check out is loaded (`checkpoint/recovery.rs`), its keys
//! re-hashed onto this run's cores and put in each core's shard, and its logged records applied
//! on their owner cores (their output was delivered before the checkpoint committed, so it is
//! not emitted again), all before any input is read. A
//! [file source](crate::FileSourceConfig) resumes from the read positions in the manifest, so the
//! state after a crash and restart is exactly the state of an uninterrupted run. Output produced
//! after the last committed checkpoint and before a crash is produced again (at-least-once
//! output, exactly-once state). A TCP source cannot replay: frames that arrived after the last
//! checkpoint are lost unless their senders send them again.

mod coordinator;
mod cut;
mod format;
mod participant;
mod persist;
mod recovery;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use coordinator::{describe_source, Coordinator, CoordinatorConfig, Link, SourceKind};
pub(crate) use cut::PreCut;
pub use format::SourceMark;
pub(crate) use participant::{run_initiator, CkOps, Participant};
pub use participant::{PersistApp, PersistStages};
pub use persist::Persist;
pub(crate) use recovery::{open, scan, Decoders, DirLock, Valid, LOCK_FILE, MAX_ID};

use crate::Error;

/// Where and how often the engine checkpoints.
///
/// ```
/// use bettong_engine::Checkpoints;
/// use std::time::Duration;
/// let c = Checkpoints::new("/var/lib/bettong").interval(Duration::from_millis(500));
/// assert_eq!(c.dir(), std::path::Path::new("/var/lib/bettong"));
/// ```
#[derive(Debug, Clone)]
pub struct Checkpoints {
    pub(crate) dir: PathBuf,
    pub(crate) interval: Duration,
    pub(crate) keep: usize,
    pub(crate) start_empty_if_unreadable: bool,
}

impl Checkpoints {
    /// Checkpoints in `dir` (created if missing) every second. Restarting with the same
    /// directory resumes from the newest checkpoint in it. The engine holds an exclusive lock
    /// on the directory (`flock` on its `LOCK` file, which holds the engine's pid) while it
    /// runs: a second engine on the same directory is refused at once.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Checkpoints {
            dir: dir.into(),
            interval: Duration::from_secs(1),
            keep: 2,
            start_empty_if_unreadable: false,
        }
    }

    /// Time between checkpoints (from one request to the next; at least 1 ms).
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d.max(Duration::from_millis(1));
        self
    }

    /// How many committed checkpoints to keep on disk (at least 2, the default: the newest and
    /// the one a restart falls back to if the newest is damaged). Older ones are deleted.
    pub fn keep(mut self, n: usize) -> Self {
        self.keep = n.max(2);
        self
    }

    /// What to do when the directory holds committed checkpoints and none of them can be read
    /// (damaged, written by another build or pipeline, or not readable by this process). By
    /// default (`false`) the engine refuses to start, naming each checkpoint and why it failed.
    /// With `true` it starts from empty state. Either way no unreadable checkpoint is ever
    /// deleted: one the engine skips is moved aside, renamed `unreadable-ckpt-…-<unix time>`.
    pub fn start_empty_if_unreadable(mut self, yes: bool) -> Self {
        self.start_empty_if_unreadable = yes;
        self
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// How the engine encodes and decodes the pipeline's state and values: [`Persist`] as plain
/// functions, so that the runtime needs no `Persist` bound unless checkpoints are on.
pub(crate) struct StateCodec<S> {
    pub restore: fn(&mut &[u8]) -> Option<S>,
}

impl<S> Clone for StateCodec<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for StateCodec<S> {}

impl<S: Persist> StateCodec<S> {
    pub(crate) fn of() -> Self {
        StateCodec {
            restore: <S as Persist>::restore,
        }
    }
}

impl<S> StateCodec<S> {
    /// Decodes one value, which must use all of `bytes`.
    pub(crate) fn decode(&self, mut bytes: &[u8]) -> Option<S> {
        let s = (self.restore)(&mut bytes)?;
        bytes.is_empty().then_some(s)
    }
}

/// A committed checkpoint read back from disk: for tools and tests.
#[derive(Debug, Clone)]
pub struct Checkpoint<S> {
    /// Its id (increasing over the life of the directory).
    pub id: u64,
    /// When it was asked for (its cut is within milliseconds of this).
    pub created: SystemTime,
    /// Cores of the run that wrote it.
    pub cores: usize,
    /// Where the source was at the cut.
    pub source: SourceMark,
    /// Every key of the first state step and its state. Keys are given as text: string keys
    /// as they are, other keys as their [`PersistKey`](crate::key::PersistKey) bytes, lossily.
    pub state: Vec<(String, S)>,
    /// Records that were on their way between cores at the cut to the first state step:
    /// `(key, encoded value)`. A
    /// restore applies them to `state` through the pipeline's state step; the state a
    /// checkpoint stands for is `state` with these applied.
    pub in_flight: Vec<(String, Vec<u8>)>,
}

/// The ids of the checkpoint directories in `dir` (committed or not), oldest first.
pub fn ids(dir: &Path) -> Result<Vec<u64>, Error> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::Io {
        what: format!("listing the checkpoint directory {}", dir.display()),
        source: e,
    })?;
    let mut ids: Vec<u64> = read
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(format::parse_checkpoint_dir_name)
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Reads checkpoint `id` in `dir`, checking every file as a restart does.
pub fn read<S: Persist>(dir: &Path, id: u64) -> Result<Checkpoint<S>, Error> {
    let codec = StateCodec::<S>::of();
    let cdir = dir.join(format::checkpoint_dir_name(id));
    // Values are not checked here: their type is not known.
    let state = |stage: usize, _: &[u8], b: &[u8]| stage != 0 || codec.decode(b).is_some();
    let decoders = Decoders {
        state: &state,
        value: &|_, _, _| true,
    };
    let v = recovery::load(&cdir, id, &decoders).map_err(|why| Error::Io {
        what: format!("reading checkpoint {id} in {}", dir.display()),
        source: std::io::Error::other(why.to_string()),
    })?;
    Ok(to_checkpoint(&v, &codec))
}

/// A key's bytes as text (string keys are stored as their UTF-8).
fn key_text(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

fn to_checkpoint<S>(v: &Valid, codec: &StateCodec<S>) -> Checkpoint<S> {
    Checkpoint {
        id: v.manifest.id,
        created: UNIX_EPOCH + Duration::from_millis(v.manifest.created_unix_ms),
        cores: v.manifest.cores,
        source: v.manifest.source.clone(),
        state: v
            .entries()
            .filter(|(stage, _, _)| *stage == 0)
            .filter_map(|(_, k, s)| Some((key_text(k), codec.decode(s)?)))
            .collect(),
        in_flight: v
            .in_flight()
            .filter(|(stage, _, _)| *stage == 0)
            .map(|(_, k, b)| (key_text(k), b.to_vec()))
            .collect(),
    }
}

/// Reads the newest usable checkpoint in `dir` (falling back past damaged ones, as a restart
/// does). `Ok(None)` when there is none, or no such directory.
///
/// ```no_run
/// let c = bettong_engine::checkpoint::latest::<u64>("/var/lib/bettong".as_ref())?;
/// if let Some(c) = c {
///     println!("checkpoint {} has {} keys", c.id, c.state.len());
/// }
/// # Ok::<(), bettong_engine::Error>(())
/// ```
pub fn latest<S: Persist>(dir: &Path) -> Result<Option<Checkpoint<S>>, Error> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let codec = StateCodec::<S>::of();
    let state = |stage: usize, _: &[u8], b: &[u8]| stage != 0 || codec.decode(b).is_some();
    let decoders = Decoders {
        state: &state,
        value: &|_, _, _| true,
    };
    let found = scan(dir, &decoders)?;
    Ok(found.latest.map(|v| to_checkpoint(&v, &codec)))
}
