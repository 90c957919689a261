//! Sources: where frames come from, and the settings for each kind.
//!
//! [`SourceConfig::Tcp`] listens on an address on every core (`tcp/`);
//! [`SourceConfig::Channel`] takes batches of frames from another thread (`channel_source.rs`);
//! [`SourceConfig::Memory`] feeds a framed buffer from memory (`memory.rs`), for embedding,
//! tests and in-process benchmarks. A memory source is finite: the engine stops by itself once
//! it is consumed and everything is flushed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::{frames, FrameError, DEFAULT_MAX_FRAME};

/// Where the engine reads frames from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// Every core listens on the same address (SO_REUSEPORT) and reads its own connections.
    Tcp(TcpSourceConfig),
    /// A framed buffer in memory, split between the cores at frame boundaries.
    Memory(MemorySource),
    /// A framed file, split between the cores at frame boundaries; replayable, so with
    /// checkpoints its read positions are restored too ([`crate::FileSourceConfig`]).
    File(crate::FileSourceConfig),
    /// Batches of frames handed over by another thread over a bounded queue that every core
    /// takes from (`channel_source.rs`): a message broker's client, for instance.
    Channel(crate::channel_source::ChannelSource),
}

/// The default [`TcpSourceConfig::partial_frame_budget`]: 128 MiB per core.
pub const DEFAULT_PARTIAL_FRAME_BUDGET: usize = 128 << 20;

/// Settings of the TCP source.
#[derive(Debug, Clone)]
pub struct TcpSourceConfig {
    /// The address to listen on. Port 0 picks a free port, the same one on every core; the
    /// running engine reports it.
    pub addr: SocketAddr,
    /// Largest accepted payload; a connection announcing a larger frame is closed.
    pub max_frame: usize,
    /// Bytes of each connection's read buffer ([`IoBackend::Glommio`]), or of each of the
    /// core's provided receive buffers ([`IoBackend::Uring`]).
    pub read_buffer: usize,
    /// Largest number of open connections per core; further connections are closed at once.
    pub max_connections_per_core: usize,
    /// A connection that has sent part of a frame and then nothing for this long is closed (slow
    /// loris). Connections idle between frames are left open.
    pub idle_timeout: Duration,
    /// A connection whose frame is not whole after this much time spent waiting for its bytes,
    /// counted from the frame's first byte, is closed (a slow loris that keeps sending a byte
    /// now and then, within `idle_timeout`). Time the core spent not reading (backpressure) does
    /// not count. The default is three times `idle_timeout`'s default.
    pub frame_timeout: Duration,
    /// Bytes of partial frames (received, not yet whole) all of one core's connections may hold
    /// together. Past it the connections holding the most are closed until the rest fit.
    pub partial_frame_budget: usize,
    /// How sockets are read: see [`IoBackend`].
    pub io: IoBackend,
}

/// How the TCP source does its socket I/O. Both decode the same frames under the same rules.
///
/// [`TcpSourceConfig::new`] sets [`IoBackend::DEFAULT`]. The library reads no environment
/// variable: the `bettong` binary takes the backend from `BETTONG_IO` (`uring` or `glommio`) and
/// parses it with [`str::parse`].
///
/// ```
/// use bettong_engine::IoBackend;
/// assert_eq!("glommio".parse::<IoBackend>(), Ok(IoBackend::Glommio));
/// assert_eq!("io_uring".parse::<IoBackend>(), Ok(IoBackend::Uring));
/// assert!("epoll".parse::<IoBackend>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// Each core's own io_uring: multishot accept, multishot receive into provided buffers,
    /// frames decoded in place from the buffers the kernel filled. Falls back to
    /// [`IoBackend::Glommio`], saying so, where io_uring is unavailable.
    Uring,
    /// glommio's `TcpListener`/`TcpStream`: `recv(2)` into a per-connection buffer.
    Glommio,
}

impl IoBackend {
    /// The backend of [`TcpSourceConfig::new`]. Measured over loopback on two cores the two
    /// read at the same rate; the io_uring path keeps the full-speed tail latency lower.
    pub const DEFAULT: IoBackend = IoBackend::Uring;
}

impl std::str::FromStr for IoBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uring" | "io_uring" | "io-uring" => Ok(IoBackend::Uring),
            "glommio" => Ok(IoBackend::Glommio),
            _ => Err(format!(
                "{s:?} is not an I/O backend (expected \"uring\" or \"glommio\")"
            )),
        }
    }
}

impl TcpSourceConfig {
    /// Default settings for listening on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        TcpSourceConfig {
            addr,
            max_frame: DEFAULT_MAX_FRAME,
            read_buffer: 64 * 1024,
            max_connections_per_core: 10_000,
            idle_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(90),
            partial_frame_budget: DEFAULT_PARTIAL_FRAME_BUDGET,
            io: IoBackend::DEFAULT,
        }
    }
}

/// A framed buffer (4-byte big-endian length, then payload, repeated) fed from memory.
///
/// ```
/// use bettong_engine::MemorySource;
/// let src = MemorySource::from_frames(["a b", "c"]);
/// assert_eq!(src.frames(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct MemorySource {
    pub(crate) framed: Arc<[u8]>,
    pub(crate) repeat: usize,
    /// Bytes handed to the pipeline per step (then batches and the sink are flushed).
    pub(crate) slice_bytes: usize,
    /// Optional pause between steps, to feed at a bounded rate.
    pub(crate) pause: Option<Duration>,
}

impl MemorySource {
    /// A source over an already framed buffer. Errors if the buffer does not end on a frame
    /// boundary, naming the offset of the truncated frame.
    pub fn from_framed(framed: impl Into<Arc<[u8]>>) -> Result<Self, crate::Error> {
        let framed = framed.into();
        if let Some(Err(
            FrameError::Truncated { offset, .. } | FrameError::TooLarge { offset, .. },
        )) = frames(&framed).find(Result::is_err)
        {
            return Err(crate::Error::TruncatedInput { offset });
        }
        Ok(MemorySource {
            framed,
            repeat: 1,
            slice_bytes: 64 * 1024,
            pause: None,
        })
    }

    /// A source of the given payloads, one frame each.
    pub fn from_frames<I, T>(frames: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut buf = Vec::new();
        for f in frames {
            crate::codec::encode_frame(f.as_ref(), &mut buf);
        }
        Self::from_framed(buf).expect("frames encoded here are complete")
    }

    /// Feeds the whole buffer `n` times.
    pub fn repeat(mut self, n: usize) -> Self {
        self.repeat = n;
        self
    }

    /// Sets how many bytes each core decodes before it flushes its batches and output.
    pub fn slice_bytes(mut self, n: usize) -> Self {
        self.slice_bytes = n.max(1);
        self
    }

    /// Pauses between slices (to feed below saturation).
    pub fn pause(mut self, d: Duration) -> Self {
        self.pause = Some(d);
        self
    }

    /// Number of frames in one pass over the buffer.
    pub fn frames(&self) -> usize {
        frames(&self.framed).take_while(Result::is_ok).count()
    }

    /// The part of the buffer core `core` of `cores` feeds: contiguous, cut at frame boundaries.
    pub(crate) fn share(&self, core: usize, cores: usize) -> &[u8] {
        // The first frame boundary at or after an even share of the bytes.
        let cut = |i: usize| -> usize {
            let target = self.framed.len() * i / cores;
            if target == 0 {
                return 0;
            }
            frames(&self.framed)
                .map(|f| f.expect("validated framing").end())
                .find(|&end| end >= target)
                .unwrap_or(self.framed.len())
        };
        &self.framed[cut(core)..cut(core + 1)]
    }
}
