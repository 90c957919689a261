//! A key partition's work: count the words of its repartition subject and publish
//! `word => count` lines on its output subject; checkpoint the counts, together with every
//! position it has consumed, to the Object Store.
//!
//! Replays are skipped by position: the state keeps, per input partition, the sequence of the
//! last input message it applied, and a section with a sequence not above it was applied already.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::driver::{publish, Snapshot, Work};
use super::lease::{now_ms, Checkpoint, Held};
use super::member::Ctx;
use super::metrics::Metrics;
use super::repartition::sections;
use super::splitter::IN_HEADER;

/// The header of output messages naming the key partition's epoch that published them.
pub const EPOCH_HEADER: &str = "Bettong-Epoch";
/// The header of output messages naming the member that published them.
pub const MEMBER_HEADER: &str = "Bettong-Member";

/// Output is published once this many bytes of lines are pending.
const FLUSH_BYTES: usize = 256 * 1024;

/// A key partition's state: what a checkpoint holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PartitionState {
    /// Repartition stream sequence consumed through.
    pub pos: u64,
    /// Per input partition, the sequence of the last input message applied.
    pub last_in: Vec<u64>,
    /// Word counts (foldhash: SipHash was 9.5% of a member's samples in a 2-member profile).
    pub counts: HashMap<String, u64, foldhash::fast::RandomState>,
}

/// Key partition `q`'s work.
pub struct Counter {
    ctx: Arc<Ctx>,
    q: u32,
    state: PartitionState,
    out: Vec<u8>,
}

impl Counter {
    /// Key partition `q`, restored from `held`'s checkpoint (empty when it has none).
    pub async fn restore(ctx: Arc<Ctx>, q: u32, held: &Held) -> anyhow::Result<Self> {
        let mut state = match &held.record.ckpt.object {
            None => PartitionState::default(),
            Some(name) => {
                let mut object = ctx.job.objects.get(name).await.with_context(|| {
                    format!("cannot read checkpoint {name} of key partition {q}")
                })?;
                let mut bytes = Vec::new();
                object
                    .read_to_end(&mut bytes)
                    .await
                    .with_context(|| format!("cannot read checkpoint {name}"))?;
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("checkpoint {name} of key partition {q} is damaged"))?
            }
        };
        state.pos = held.record.ckpt.pos;
        state
            .last_in
            .resize(ctx.job.settings.in_partitions as usize, 0);
        Ok(Counter {
            ctx,
            q,
            state,
            out: Vec::new(),
        })
    }

    async fn publish(
        &mut self,
        held: &Held,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let mut headers = HeaderMap::new();
        headers.insert(EPOCH_HEADER, held.record.epoch.to_string().as_str());
        headers.insert(MEMBER_HEADER, self.ctx.me.as_str());
        let subject = self.ctx.job.streams.out_subject(self.q);
        let payload = std::mem::take(&mut self.out);
        Metrics::add(&self.ctx.metrics.output_messages, 1);
        publish(&self.ctx, held, subject, headers, payload).await
    }
}

/// The `\n`-ended words of a section, as `str::split_terminator('\n')` gives them, by a plain
/// byte scan: the searcher of `split_terminator` was 7% of a member's samples in a 2-member
/// profile, for words of a few bytes.
fn words_of(section: &str) -> impl Iterator<Item = &str> {
    let mut rest = section;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.bytes().position(|b| b == b'\n').unwrap_or(rest.len());
        let word = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        Some(word)
    })
}

impl Work for Counter {
    async fn apply(&mut self, batch: Vec<jetstream::Message>, held: &Held) -> anyhow::Result<()> {
        let mut lines = 0;
        let mut skipped = 0;
        for m in &batch {
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("repartition message without JetStream info: {e}"))?
                .stream_sequence;
            let from = m
                .headers
                .as_ref()
                .and_then(|h| h.get(IN_HEADER))
                .and_then(|v| v.as_str().parse::<usize>().ok())
                .filter(|&i| i < self.state.last_in.len());
            let Some(from) = from else {
                tracing::error!(
                    "repartition message {seq} of key partition {} has no valid {IN_HEADER} \
                     header; skipped (was it published by another program?)",
                    self.q
                );
                self.state.pos = seq;
                continue;
            };
            for section in sections(&m.payload) {
                let Ok((in_seq, words)) = section else {
                    tracing::error!(
                        "repartition message {seq} of key partition {} is malformed; its rest \
                         is skipped",
                        self.q
                    );
                    break;
                };
                if in_seq <= self.state.last_in[from] {
                    skipped += 1;
                    continue;
                }
                for word in words_of(words) {
                    let count = match self.state.counts.get_mut(word) {
                        Some(c) => c,
                        None => self.state.counts.entry(word.to_string()).or_insert(0),
                    };
                    *count += 1;
                    crate::app::encode_line(word, *count, &mut self.out);
                    lines += 1;
                }
                self.state.last_in[from] = in_seq;
            }
            self.state.pos = seq;
            if self.out.len() >= FLUSH_BYTES {
                // Acknowledged before the next one, so the subject never holds a later line
                // without the earlier ones.
                self.publish(held)
                    .await?
                    .await
                    .map_err(|e| anyhow::anyhow!("output publish not acknowledged: {e}"))?;
            }
        }
        if !self.out.is_empty() {
            self.publish(held)
                .await?
                .await
                .map_err(|e| anyhow::anyhow!("output publish not acknowledged: {e}"))?;
        }
        Metrics::add(&self.ctx.metrics.lines_out, lines);
        Metrics::add(&self.ctx.metrics.replayed_sections_skipped, skipped);
        Ok(())
    }

    fn snapshot(&mut self, held: &Held) -> anyhow::Result<Option<Snapshot>> {
        if self.state.pos == held.record.ckpt.pos {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(&self.state)?;
        let name = format!("kp.{}.e{}.{}", self.q, held.record.epoch, self.state.pos);
        Ok(Some(Snapshot {
            ckpt: Checkpoint {
                pos: self.state.pos,
                object: Some(name),
                bytes: bytes.len() as u64,
                keys: self.state.counts.len() as u64,
                at_ms: now_ms(),
            },
            object: Some(bytes),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::words_of;

    #[test]
    fn words_of_splits_as_split_terminator_does() {
        for s in ["", "a\n", "a\nbb\n", "a\n\nb", "école\nß\n", "\n", "x"] {
            let want: Vec<&str> = s.split_terminator('\n').collect();
            assert_eq!(words_of(s).collect::<Vec<_>>(), want, "{s:?}");
        }
    }
}
