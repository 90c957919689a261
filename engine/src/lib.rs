//! Bettong: a thread-per-core stream-processing engine.
//!
//! You write business logic as plain functions and the engine runs them on every core:
//! one pinned glommio executor per core, each owning a shard of the keyed state, its own
//! sockets and its own sink connection. Records cross cores only at [`Pipeline::key_by`], to
//! reach the core that owns their key, in batches over SPSC rings.
//!
//! Where to look:
//! - [`pipeline`]: the API a user writes against (map, flat_map, filter, key_by, state, encode).
//! - [`runtime`]: starting and stopping an [`Engine`] on N cores.
//! - [`routing`]: key hash → owner core, and the batches that cross cores.
//! - [`state`]: one core's shard of keyed state.
//! - [`codec`]: the length-prefixed framing, decoded in place.
//! - [`source`], [`sink`]: where frames come from and output goes (TCP, a framed file, memory).
//!   Every source reads through one step (wait for sink room, ingest, log rejects, flush); the
//!   TCP source is one module over two byte backends (glommio `recv`, io_uring provided buffers).
//! - [`checkpoint`]: consistent checkpoints of all state, and recovery from them.
//! - [`metrics`]: per-core counters; [`shutdown`]: how a stop request reaches every task.
//!
//! ```
//! use bettong_engine::{Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};
//! // A running maximum per sensor, from frames like "sensor-3 21.5".
//! let pipeline = Pipeline::text()
//!     .filter(|line| line.split_once(' ').is_some())
//!     .key_by(|line| {
//!         let (id, v) = line.split_once(' ').unwrap_or((line, ""));
//!         (id, v.parse::<f64>().unwrap_or(f64::NAN))
//!     })
//!     .state(|_id: &str, max: &mut Option<f64>, v: f64| {
//!         let m = max.map_or(v, |m| m.max(v));
//!         *max = Some(m);
//!         Some(m)
//!     })
//!     .encode(|id, m, out| out.extend_from_slice(format!("{id} max {m}\n").as_bytes()));
//! let src = MemorySource::from_frames(["s1 3.0", "s2 1.0", "s1 2.0"]);
//! let report = Engine::new().cores(1).run(pipeline, SourceConfig::Memory(src), SinkConfig::Memory)?;
//! let lines: Vec<String> = report.output_lines().collect();
//! assert_eq!(lines, ["s1 max 3", "s2 max 1", "s1 max 3"]);
//! # Ok::<(), bettong_engine::Error>(())
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod codec;
mod dataflow;
mod error;
mod file_source;
pub mod key;
mod memory;
pub mod metrics;
mod notify;
pub mod pipeline;
mod read_step;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod state;
mod tcp;
mod worker;

pub use checkpoint::{Checkpoints, Persist, PersistApp};
pub use dataflow::DecodeError;
pub use error::Error;
pub use file_source::FileSourceConfig;
pub use metrics::{Metrics, MetricsSnapshot};
pub use pipeline::{App, Pipeline};
pub use runtime::{online_cpus, Engine, IntoSources, Report, Running};
pub use shutdown::StopHandle;
pub use sink::{SinkConfig, TcpSinkConfig};
pub use source::{IoBackend, MemorySource, SourceConfig, TcpSourceConfig};
