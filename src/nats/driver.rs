//! The life of one held partition, whatever its kind: consume its subject from the checkpoint's
//! position, hand batches to its [`Work`], renew the lease, commit checkpoints, and end by a clean
//! release, or by dropping everything when the lease is lost (fencing).

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::lease::{Checkpoint, Held, LeaseError};
use super::member::Ctx;
use super::metrics::Metrics;

/// Input messages handed to [`Work::apply`] at most at once.
pub const MAX_BATCH: usize = 64;

/// What a partition does with its messages.
pub trait Work: Send {
    /// Applies a batch (in stream order) and publishes what it makes, every publish
    /// acknowledged before it returns. It must not publish once `held` is no longer valid.
    fn apply(
        &mut self,
        batch: Vec<jetstream::Message>,
        held: &Held,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A checkpoint of everything applied so far, `None` when nothing changed since `held`'s.
    fn checkpoint(
        &mut self,
        held: &Held,
    ) -> impl Future<Output = anyhow::Result<Option<Checkpoint>>> + Send;
}

/// How a partition's task ended.
#[derive(Debug)]
pub enum Outcome {
    /// Checkpointed and released on request.
    Released,
    /// The lease was lost; the state was dropped. The string says why.
    Fenced(String),
}

/// Errors that end a partition task before any release: its state is dropped, and the member
/// takes it again from its last checkpoint.
pub type Failed = anyhow::Error;

/// Runs `work` on partition `held`, reading `filter` on `source` from the checkpoint on, until
/// `release` turns true (checkpoint, release) or the lease is lost.
pub async fn drive<W: Work>(
    ctx: Arc<Ctx>,
    mut held: Held,
    source: &stream::Stream,
    filter: String,
    mut work: W,
    mut release: watch::Receiver<bool>,
) -> Result<Outcome, Failed> {
    let part = held.part.key();
    let deliver_policy = match held.record.ckpt.pos {
        0 => consumer::DeliverPolicy::All,
        pos => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: pos + 1,
        },
    };
    let consumer = source
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("partition {part}: cannot read {filter}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("partition {part}: cannot read {filter}: {e}"))?
        .ready_chunks(MAX_BATCH);
    let mut renew = tokio::time::interval(ctx.ttl / 3);
    let mut commit = tokio::time::interval(ctx.checkpoint_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            changed = release.changed() => {
                if changed.is_err() || *release.borrow() {
                    if !held.valid(ctx.margin) {
                        return Ok(fenced(&ctx, &held, "its lease ran out before the hand-over"));
                    }
                    if let Err(e) = checkpoint(&ctx, &mut held, &mut work).await {
                        return lease_lost(&ctx, &held, e);
                    }
                    held.release(&ctx.job.kv).await.map_err(anyhow::Error::new)?;
                    Metrics::add(&ctx.metrics.releases, 1);
                    return Ok(Outcome::Released);
                }
            }
            _ = renew.tick() => {
                if !held.valid(ctx.margin) {
                    return Ok(fenced(&ctx, &held, "its lease ran out (the process was paused or cut off from NATS)"));
                }
                if let Err(e) = held.renew(&ctx.job.kv, ctx.ttl).await {
                    if let Some(out) = lease_error(&ctx, &held, e) {
                        return Ok(out);
                    }
                }
            }
            _ = commit.tick() => {
                if !held.valid(ctx.margin) {
                    return Ok(fenced(&ctx, &held, "its lease ran out (the process was paused or cut off from NATS)"));
                }
                if let Err(e) = checkpoint(&ctx, &mut held, &mut work).await {
                    return lease_lost(&ctx, &held, e);
                }
            }
            batch = messages.next() => {
                let Some(batch) = batch else {
                    anyhow::bail!("partition {part}: the consumer of {filter} ended");
                };
                if !held.valid(ctx.margin) {
                    return Ok(fenced(&ctx, &held, "its lease ran out (the process was paused or cut off from NATS)"));
                }
                let batch: Vec<jetstream::Message> = batch
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("partition {part}: reading {filter} failed: {e}"))?;
                work.apply(batch, &held).await?;
            }
        }
    }
}

/// Publishes `payload` on `subject` for partition `held`, unless its lease is no longer ours by
/// our own clock (then nothing is published: the fencing rule). Returns the ack to wait for.
pub async fn publish(
    ctx: &Ctx,
    held: &Held,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    if !held.valid(ctx.margin) {
        anyhow::bail!(
            "partition {}: its lease ran out before publishing to {subject}; nothing more is \
             published for it",
            held.part.key()
        );
    }
    ctx.js_publish(subject, headers, payload).await
}

/// Checkpoints `work` and commits it on `held`'s entry; then deletes the checkpoint it replaces.
async fn checkpoint<W: Work>(
    ctx: &Ctx,
    held: &mut Held,
    work: &mut W,
) -> Result<(), CheckpointError> {
    let Some(ckpt) = work.checkpoint(held).await.map_err(CheckpointError::Work)? else {
        return Ok(());
    };
    let old = held.record.ckpt.object.clone();
    let new = ckpt.object.clone();
    match held.commit(&ctx.job.kv, ckpt, ctx.ttl).await {
        Ok(()) => {
            Metrics::add(&ctx.metrics.checkpoints, 1);
            if let Some(old) = old.filter(|o| Some(o) != new.as_ref()) {
                if let Err(e) = ctx.job.objects.delete(&old).await {
                    tracing::warn!("could not delete the replaced checkpoint {old}: {e}");
                }
            }
            Ok(())
        }
        Err(e) => {
            if let Some(new) = new {
                let _ = ctx.job.objects.delete(&new).await;
            }
            Err(CheckpointError::Lease(e))
        }
    }
}

/// Why a checkpoint was not committed.
#[derive(Debug, thiserror::Error)]
enum CheckpointError {
    #[error(transparent)]
    Lease(LeaseError),
    #[error("cannot write the checkpoint: {0}")]
    Work(anyhow::Error),
}

fn lease_lost(ctx: &Ctx, held: &Held, e: CheckpointError) -> Result<Outcome, Failed> {
    match e {
        CheckpointError::Lease(e) => match lease_error(ctx, held, e) {
            Some(out) => Ok(out),
            None => Ok(fenced(ctx, held, "NATS did not take its checkpoint")),
        },
        CheckpointError::Work(e) => Err(e.context(format!("partition {}", held.part.key()))),
    }
}

/// `Some` when the error means the partition is lost; `None` to go on (a NATS hiccup while the
/// lease is still ours).
fn lease_error(ctx: &Ctx, held: &Held, e: LeaseError) -> Option<Outcome> {
    match e {
        LeaseError::Fenced { .. } => Some(fenced(
            ctx,
            held,
            "another member took it over (its entry changed since our last write)",
        )),
        LeaseError::Nats { .. } if held.valid(ctx.margin) => {
            tracing::warn!("{e}; retrying while the lease lasts");
            None
        }
        LeaseError::Nats { .. } => Some(fenced(ctx, held, "NATS did not renew its lease in time")),
    }
}

fn fenced(ctx: &Ctx, held: &Held, why: &str) -> Outcome {
    Metrics::add(&ctx.metrics.fenced, 1);
    tracing::error!(
        "fenced: member {} no longer owns partition {} (epoch {}): {why}; dropping its state, \
         publishing and committing nothing more for it",
        ctx.me,
        held.part.key(),
        held.record.epoch
    );
    Outcome::Fenced(why.to_string())
}
