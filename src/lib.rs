//! The `bettong` package: Wallaroo's canonical word count written against the public
//! `bettong-engine` API, plus the tools that feed and measure it (`send`, `receive`, `bench`).
//!
//! The binary in `main.rs` is a thin command-line layer over these modules, so that tests,
//! benches and examples can drive exactly the same code a user runs.

#![warn(missing_docs)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod corpus;
pub mod demo;
pub mod external_server;
pub mod logging;
pub mod market_spread;
pub mod metrics_table;
pub mod nats;
pub mod observe;
pub mod placement;
pub mod probes;
pub mod receive;
pub mod send;
pub mod serve;
pub mod split;
pub mod sweep;
pub mod synth;
pub mod thread_cpu;
pub mod validate;

/// The code blocks of README.md, compiled and run as doctests so the README cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
