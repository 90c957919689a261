//! Bettong on NATS JetStream: one word-count job run by any number of member processes, which
//! never talk to each other, only to NATS (contract: `../shared/spec/cluster.md`).
//!
//! The job has two stages, each split into partitions with one owner at a time:
//! - **input partitions** `in.<i>` ([`splitter`]): read `PREFIX.in.<i>`, split the frames into
//!   words and publish them, grouped by key partition, on the repartition stream;
//! - **key partitions** `kp.<q>` ([`counter`]): read the repartition subject of `q`, count, and
//!   publish `word => count` lines on `PREFIX.out.<q>`; checkpoint the counts to the Object Store.
//!
//! Ownership lives in a KV bucket ([`lease`]); [`member`] runs the loop that joins, balances and
//! leaves. All NATS I/O runs on one tokio runtime owned by the member ([`member::serve`]).
//!
//! Without `--job`, NATS is a plain source and sink of the engine ([`standalone`]): the engine's
//! word count on its glommio cores reads the input stream ([`engine_source`]) and publishes
//! its lines by key partition ([`engine_sink`]), over the engine's bounded channel source and
//! sink, from one bridge thread running the NATS client.

pub mod address;
pub mod cli;
pub mod cores;
pub mod counter;
pub mod driver;
pub mod engine_sink;
pub mod engine_source;
pub mod lease;
pub mod member;
pub mod metrics;
pub mod partition;
pub mod receive;
pub mod repartition;
pub mod send;
pub mod setup;
pub mod splitter;
pub mod standalone;
pub mod status;
