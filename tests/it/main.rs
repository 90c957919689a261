//! The one integration test binary: every integration test of the `bettong` crate is a module
//! here, so they compile and link once and share [`support`] without `dead_code` allowances.
//!
//! Run one group with `cargo test --test it server_e2e::` (any module path prefix filters).

mod support;

mod bench_placement;
mod cluster_nats;
mod engine_api;
mod engine_balance;
mod engine_channels;
mod engine_general;
mod engine_stages;
mod hardening_checkpoints;
mod hardening_commit;
mod hardening_flags;
mod hardening_keys;
mod hardening_partial_frames;
mod hardening_sink;
mod market_spread_bench;
mod market_spread_e2e;
mod observability;
mod observability_page;
mod recovery_e2e;
mod recovery_engine;
mod reliability_backpressure;
mod reliability_clients;
mod reliability_fuzz_corpus;
mod reliability_shutdown;
mod reliability_sink;
mod send_receive_tools;
mod server_e2e;
mod split_props;
mod split_rules;
