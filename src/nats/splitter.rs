//! An input partition's work: split each input message's frames into words and publish them,
//! grouped by key partition, on the repartition stream. Each repartition message holds the
//! words of a batch of input messages for one key partition, in sections tagged with each input
//! message's sequence ([`super::repartition`]), and carries a deterministic `Nats-Msg-Id`.

use std::sync::Arc;

use async_nats::jetstream;
use async_nats::HeaderMap;
use bettong_engine::codec::{FrameDecoder, FrameError};
use bettong_engine::LogLimit;

use super::driver::{publish, Snapshot, Work};
use super::lease::{now_ms, Checkpoint, Held};
use super::member::Ctx;
use super::metrics::Metrics;
use super::partition::Modulo;
use super::repartition::SectionWriter;

/// The header naming the input partition a repartition message comes from.
pub const IN_HEADER: &str = "Bettong-In";

/// A repartition payload is published once it holds this many bytes.
const FLUSH_BYTES: usize = 256 * 1024;

/// Input partition `i`'s work.
pub struct Splitter {
    ctx: Arc<Ctx>,
    i: u32,
    pos: u64,
    writers: Vec<SectionWriter>,
    first_seq: Vec<u64>,
    bad_log: LogLimit,
}

impl Splitter {
    /// Input partition `i`, resuming after stream sequence `pos`.
    pub fn new(ctx: Arc<Ctx>, i: u32, pos: u64) -> Self {
        let p = ctx.job.settings.partitions as usize;
        Splitter {
            ctx,
            i,
            pos,
            writers: (0..p).map(|_| SectionWriter::default()).collect(),
            first_seq: vec![0; p],
            bad_log: LogLimit::default(),
        }
    }

    /// Splits one message's frames into the writers; returns (frames, rejected).
    fn split(&mut self, seq: u64, payload: &[u8]) -> (u64, u64) {
        let parts = Modulo::new(self.ctx.job.settings.partitions);
        let (mut n, mut rejected, mut words) = (0, 0, 0);
        for frame in FrameDecoder::new(self.ctx.max_frame).frames(payload) {
            n += 1;
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    rejected += 1;
                    let why = match e {
                        FrameError::Truncated { offset, .. } => {
                            format!("the message ends inside the frame at offset {offset}")
                        }
                        FrameError::TooLarge { offset, error } => {
                            format!("the frame at offset {offset} announces {} bytes", error.len)
                        }
                    };
                    self.log_bad(seq, &format!("{why}: the rest of the message is rejected"));
                    break;
                }
            };
            let Ok(text) = std::str::from_utf8(frame.payload) else {
                rejected += 1;
                self.log_bad(
                    seq,
                    &format!("the frame at offset {} is not UTF-8", frame.offset),
                );
                continue;
            };
            crate::split::for_each_word(text, |w| {
                words += 1;
                let q = parts.partition(w.as_bytes()) as usize;
                if self.writers[q].is_empty() {
                    self.first_seq[q] = seq;
                }
                self.writers[q].push(seq, &w);
            });
        }
        Metrics::add(&self.ctx.metrics.words, words);
        (n, rejected)
    }

    fn log_bad(&self, seq: u64, what: &str) {
        if let Some(held_back) = self.bad_log.allow() {
            tracing::warn!(
                "bad input message {seq} on {}: {what}; its valid leading frames are applied{}",
                self.ctx.job.streams.in_subject(self.i),
                LogLimit::note(held_back)
            );
        }
    }

    /// Publishes key partition `q`'s pending words, returning the ack to wait for.
    async fn publish(
        &mut self,
        q: usize,
        last_seq: u64,
        held: &Held,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let payload = self.writers[q].take();
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}-{last_seq}:{q}", self.i, self.first_seq[q]).as_str(),
        );
        headers.insert(IN_HEADER, self.i.to_string().as_str());
        let subject = self.ctx.job.names.rp_subject(q as u32);
        Metrics::add(&self.ctx.metrics.repartition_messages, 1);
        publish(&self.ctx, held, subject, headers, payload).await
    }
}

impl Work for Splitter {
    async fn apply(&mut self, batch: Vec<jetstream::Message>, held: &Held) -> anyhow::Result<()> {
        let mut last = self.pos;
        for m in &batch {
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("input message without JetStream info: {e}"))?
                .stream_sequence;
            let (n, rejected) = self.split(seq, &m.payload);
            Metrics::add(&self.ctx.metrics.input_messages, 1);
            Metrics::add(&self.ctx.metrics.frames_in, n);
            Metrics::add(&self.ctx.metrics.frames_rejected, rejected);
            last = seq;
            // A large batch: publish the big payloads now, each acknowledged before the next
            // of its subject, so a subject never holds a later section without an earlier one.
            for q in 0..self.writers.len() {
                if self.writers[q].len() >= FLUSH_BYTES {
                    self.publish(q, seq, held).await?.await.map_err(|e| {
                        anyhow::anyhow!("repartition publish not acknowledged: {e}")
                    })?;
                }
            }
        }
        let mut acks = Vec::new();
        for q in 0..self.writers.len() {
            if !self.writers[q].is_empty() {
                acks.push(self.publish(q, last, held).await?);
            }
        }
        for ack in acks {
            ack.await
                .map_err(|e| anyhow::anyhow!("repartition publish not acknowledged: {e}"))?;
        }
        self.pos = last;
        Ok(())
    }

    fn snapshot(&mut self, held: &Held) -> anyhow::Result<Option<Snapshot>> {
        if self.pos == held.record.ckpt.pos {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            ckpt: Checkpoint {
                pos: self.pos,
                at_ms: now_ms(),
                ..Default::default()
            },
            object: None,
        }))
    }
}
