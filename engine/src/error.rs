//! The engine's errors: each says what failed, where (which core, which address) and why.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can stop an engine from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A core could not listen on the source address.
    #[error("core {core} cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The core that tried.
        core: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A framed input ends inside a frame.
    #[error("framed input is truncated: the frame starting at byte {offset} runs past the end")]
    TruncatedInput {
        /// Byte offset of the incomplete frame's header.
        offset: usize,
    },
    /// More cores were requested than this machine lets the process use.
    #[error("asked for {requested} cores but only {available} are online for this process")]
    TooManyCores {
        /// Cores asked for.
        requested: usize,
        /// Cores available.
        available: usize,
    },
    /// A CPU asked for (`Engine::cpus`) is not online on this machine.
    #[error(
        "CPU {cpu} is not online on this machine (online: {}); pick CPUs from that list",
        crate::placement::CpuList(online)
    )]
    CpuOffline {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs online.
        online: Vec<usize>,
    },
    /// Zero cores were requested.
    #[error("an engine needs at least one core")]
    NoCores,
    /// glommio could not create or pin an executor.
    #[error("cannot start the executor for core {core} on CPU {cpu}: {reason}")]
    Executor {
        /// Core index.
        core: usize,
        /// The CPU it was to be pinned to.
        cpu: usize,
        /// glommio's explanation.
        reason: String,
    },
    /// A core's thread panicked: a bug in the engine or in user code.
    #[error("core {core} stopped abnormally: {reason}")]
    CoreFailed {
        /// Core index.
        core: usize,
        /// What the thread reported.
        reason: String,
    },
    /// The run was given another number of sources than the pipeline has.
    #[error(
        "the pipeline has {pipeline} source(s) but {given} source configuration(s) were given \
         (give one per source, in the order the pipeline merges them)"
    )]
    SourceCount {
        /// Sources of the pipeline.
        pipeline: usize,
        /// Source configurations given.
        given: usize,
    },
    /// A combination the engine does not support yet.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Committed checkpoints exist in the checkpoint directory but none of them can be read:
    /// starting from empty state would silently drop them, so the engine refuses to start.
    #[error(
        "cannot start: the checkpoint directory {dir} holds {} committed checkpoint(s) and none \
         of them can be read ({}); they are left untouched. Fix or move them away, or start with \
         `Checkpoints::start_empty_if_unreadable` (`--start-empty-if-unreadable` for `bettong \
         serve`) to start from empty state with them moved aside",
        failures.len(),
        failures.iter().map(|(id, why)| format!("checkpoint {id}: {why}")).collect::<Vec<_>>().join("; "),
        dir = dir.display()
    )]
    CheckpointsUnreadable {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Each checkpoint id that failed, with why.
        failures: Vec<(u64, String)>,
    },
    /// Another process (or another engine in this one) holds the checkpoint directory's lock.
    #[error(
        "cannot start: the checkpoint directory {dir} is in use by another Bettong engine{} \
         (its lock file {lock} is held); two engines on one directory would overwrite and \
         delete each other's checkpoints",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        lock = dir.join(crate::checkpoint::LOCK_FILE).display(),
        dir = dir.display()
    )]
    CheckpointDirLocked {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The pid written in the lock file by its holder, if it could be read.
        holder: Option<u32>,
    },
    /// A checkpoint directory's id is so large that the next ids would overflow.
    #[error(
        "cannot start: the checkpoint directory {dir} has id {id}, above the largest id a \
         checkpoint can have ({max}): the next checkpoint's id would overflow. It was not \
         written by Bettong (renamed by hand?); move it out of {parent}",
        max = crate::checkpoint::MAX_ID,
        parent = dir.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        dir = dir.display()
    )]
    CheckpointIdTooLarge {
        /// The offending checkpoint directory.
        dir: PathBuf,
        /// Its id.
        id: u64,
    },
    /// The checkpoint to restore was taken by a run whose source cannot be resumed by this
    /// run's source (a TCP run's checkpoint restored under a file source).
    #[error(
        "cannot start: checkpoint {id} in {dir} was taken by a run reading {kind}, which \
         records no file read position; reading file:{file} from its start would count every \
         record of it again on top of the restored state. Use another checkpoint directory \
         for this file, or move that one away",
        dir = dir.display(),
        file = file.display()
    )]
    CheckpointSourceMismatch {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The checkpoint's id.
        id: u64,
        /// The source kind the checkpoint recorded (`tcp`, `memory`, …).
        kind: String,
        /// The file this run reads.
        file: PathBuf,
    },
    /// An OS-level failure outside any one core.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}
