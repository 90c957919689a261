//! Bettong: a thread-per-core stream-processing engine.
//!
//! You write business logic as plain functions and the engine runs them on every core:
//! one pinned glommio executor per core, each owning a shard of the keyed state, its own
//! sockets and its own sink connection. Records cross cores only at [`Pipeline::key_by`], to
//! reach the core that owns their key, in batches over SPSC rings.
//!
//! Where to look (public modules in brackets; the others are internal, named for their job):
//! - [`pipeline`]: the API a user writes against: a decoder per source (text borrowed from the
//!   read buffer, or any typed record), map/flat_map/filter, `key_by`, `merge`, state steps,
//!   chained state steps, encode. `dataflow.rs`: the pipeline as one core runs it.
//! - [`key`]: what a key may be (any `Hash + Eq`), and its owned, inline form.
//! - [`runtime`]: starting and stopping an [`Engine`] on N cores (`runtime/core.rs`: one core's
//!   lifecycle; `runtime/recover.rs`: a run's checkpoint setup).
//! - `worker.rs`: one core's share: ingest, outboxes, flush, the drains of peers' rings.
//! - [`routing`]: key hash → owner core, and the batches that cross cores.
//! - [`state`]: one core's shard of one state step's keys.
//! - [`codec`]: the length-prefixed framing, decoded in place, and the one frame iterator.
//! - [`source`], [`sink`]: where frames come from and output goes (TCP, a framed file, memory,
//!   or another thread over a bounded queue: [`channel_source`], [`channel_sink`]).
//!   Every source reads through one step (`read_step.rs`: wait for sink room, ingest, log
//!   rejects, flush); the TCP source (`tcp/`) is one module over two byte backends (glommio
//!   `recv`, io_uring provided buffers).
//! - [`offload`]: a core hands each read, as one batch, to a helper process of its own (the
//!   Python API's process mode) and ingests the helper's answer.
//! - [`checkpoint`]: consistent checkpoints of every state step, and recovery from them; the
//!   data path calls the hooks of its `checkpoint/participant.rs`.
//! - [`metrics`]: per-core counters; [`stage_latency`]: per-core histograms of each stage of the
//!   data path; `shutdown.rs`: how a stop request reaches every task.
//! - [`monitor`]: watching a running engine: Prometheus `/metrics`, `/metrics.json` and a live
//!   page over HTTP on threads of their own, and progress lines.
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

pub mod channel_sink;
pub mod channel_source;
pub mod checkpoint;
pub mod codec;
mod dataflow;
mod error;
mod file_source;
pub mod key;
mod memory;
pub mod metrics;
pub mod monitor;
mod notify;
pub mod offload;
pub mod pipeline;
pub mod placement;
mod read_step;
mod remote_notify;
pub mod routing;
pub mod runtime;
mod shutdown;
pub mod sink;
pub mod source;
pub mod stage_latency;
pub mod state;
mod tcp;
mod worker;

pub use checkpoint::{Checkpoints, Persist, PersistApp};
pub use dataflow::DecodeError;
pub use error::Error;
pub use file_source::FileSourceConfig;
pub use metrics::{Metrics, MetricsSnapshot};
pub use offload::Offload;
pub use pipeline::{App, Pipeline};
pub use runtime::{online_cpus, Engine, IntoSources, Report, Running};
pub use shutdown::StopHandle;
pub use sink::{SinkConfig, TcpSinkConfig};
pub use source::{IoBackend, MemorySource, SourceConfig, TcpSourceConfig};
/// Rate limit for repeated log lines (also used by the `bettong` NATS bridge).
pub use tcp::log_limit::LogLimit;
