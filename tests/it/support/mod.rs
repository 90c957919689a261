//! Helpers shared by the integration tests, one module per concern. Tests import them from here
//! (`crate::support::{Server, WAIT, …}`); the modules say what each part is for.
//!
//! - [`busy`]: well-behaved clients beside a test's misbehaving ones.
//! - [`server`]: start and stop the real `bettong` binary, read what it prints.
//! - [`receiver`]: take the server's output (validating receiver, controllable [`TestSink`]).
//! - [`net`]: write test input over sockets (random chunking, floods, free addresses).
//! - [`corpus`]: build test input (seeded [`Rng`], random messages, framing).
//! - [`check`]: compute the reference counts and compare output with them.
//! - [`memory`]: the server's resident memory.
//! - [`sh_server`]: a server started through `sh -c`, with its own limits or environment.
//! - [`monitor`]: the server's metrics server (`--metrics-addr`) from outside, and a load to
//!   watch.
//! - [`nats`]: a real nats-server and the cluster commands that use it.

use std::time::Duration;

pub mod busy;
pub mod check;
pub mod corpus;
pub mod market;
pub mod memory;
pub mod monitor;
pub mod nats;
pub mod net;
pub mod receiver;
pub mod server;
pub mod sh_server;

pub use busy::{busy_inputs, send_busy};
pub use check::{check_counts, diff_counts, reference_counts, total_lines};
pub use corpus::{frame_all, random_message, Rng};
pub use memory::{peak_rss_mib, rss_mib};
pub use net::{chunk_cuts, free_addr, header_splits, send_in_chunks, Flood};
pub use receiver::{start_receiver, Pace, SinkConn, TestSink};
pub use server::{final_metrics, number_after, run_to_exit, Server};
pub use sh_server::ShServer;

/// Executors the test servers run on (the machine the tests run on has 2 cores).
pub const CORES: &str = "2";

/// Upper bound of every wait in the tests: long enough for a debug build on a busy machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// How long to keep listening after the expected lines arrived, to catch extra ones.
pub const SETTLE: Duration = Duration::from_millis(100);
