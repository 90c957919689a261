//! NATS as a source of the engine: read a JetStream input stream (`PREFIX_in`, every input
//! partition) with an ordered consumer and hand each message, many frames back to back, to the
//! engine's cores as one batch of its channel source (`bettong_engine::channel_source`):
//! input partition `i` (`PREFIX.in.<i>`) goes to lane `i % lanes`, read by one core, so one
//! partition's order is kept (as one TCP connection's is).
//!
//! It runs on the bridge's tokio runtime ([`super::standalone`]), never on an engine core. The
//! source's queue is bounded: when the cores take no more (a full sink, a full ring), `send`
//! waits, the consumer stops pulling, and the messages stay in the stream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use async_nats::jetstream::{consumer, stream};
use bettong_engine::channel_source::BatchSender;
use futures_util::StreamExt;

/// What the source has handed to the engine.
#[derive(Debug, Default)]
pub struct SourceCounts {
    /// Input messages.
    pub messages: AtomicU64,
    /// Their payload bytes.
    pub bytes: AtomicU64,
}

/// An ordered consumer of every subject of `input`, from stream sequence `from` on (1: its
/// first message; `name` names the stream in errors).
pub async fn open(
    input: &stream::Stream,
    name: &str,
    from: u64,
) -> anyhow::Result<consumer::pull::Ordered> {
    let deliver_policy = match from {
        0 | 1 => consumer::DeliverPolicy::All,
        start_sequence => consumer::DeliverPolicy::ByStartSequence { start_sequence },
    };
    let consumer = input
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))?;
    consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read stream {name}: {e}"))
}

/// Hands every message of `messages`, then of the consumers that replace it, to `tx`, until
/// the engine's source finishes. The ordered consumer recreates itself after some failures but
/// not all (a pull failing with "consumer not found" after the server restarted, for one): on
/// any error this opens a new one at the message after the last one handed over.
pub async fn feed(
    input: stream::Stream,
    mut messages: consumer::pull::Ordered,
    name: String,
    tx: BatchSender,
    counts: Arc<SourceCounts>,
) {
    let errors = bettong_engine::LogLimit::default();
    let mut next = 1;
    loop {
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    if let Some(held_back) = errors.allow() {
                        tracing::warn!(
                            "reading stream {name}: {e}; reading again from its message {next}{}",
                            bettong_engine::LogLimit::note(held_back)
                        );
                    }
                    break;
                }
            };
            if let Ok(info) = m.info() {
                next = info.stream_sequence + 1;
            }
            let len = m.payload.len() as u64;
            // `PREFIX.in.<i>`: input partition i goes to lane i, so its order is kept.
            let lane = m
                .subject
                .rsplit('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .unwrap_or(0);
            if tx.send(lane, Box::new(m.message.payload)).await.is_err() {
                // The engine's cores have finished: nothing more is read.
                return;
            }
            counts.messages.fetch_add(1, Relaxed);
            counts.bytes.fetch_add(len, Relaxed);
        }
        // An error, or the consumer ended: a new one, once the server answers.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            match open(&input, &name, next).await {
                Ok(m) => {
                    messages = m;
                    break;
                }
                Err(e) => {
                    if let Some(held_back) = errors.allow() {
                        tracing::warn!(
                            "{e:#}; retrying{}",
                            bettong_engine::LogLimit::note(held_back)
                        );
                    }
                }
            }
        }
    }
}
