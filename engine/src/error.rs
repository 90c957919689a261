//! The engine's errors: each says what failed, where (which core, which address) and why.

use std::net::SocketAddr;

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
