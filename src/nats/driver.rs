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

    /// A snapshot of everything applied so far, `None` when nothing changed since `held`'s
    /// checkpoint. Only this pauses the partition; the object is stored in the background.
    fn snapshot(&mut self, held: &Held) -> anyhow::Result<Option<Snapshot>>;
}

/// A partition's state at one position, ready to be stored and committed.
#[derive(Debug)]
pub struct Snapshot {
    /// What the partition's KV entry will say once committed.
    pub ckpt: Checkpoint,
    /// The Object Store object to write first (named as `ckpt.object`), for a stateful partition.
    pub object: Option<Vec<u8>>,
}

/// Stores a snapshot's object; returns its checkpoint, to commit.
async fn store(ctx: Arc<Ctx>, snap: Snapshot) -> anyhow::Result<Checkpoint> {
    if let (Some(bytes), Some(name)) = (&snap.object, &snap.ckpt.object) {
        ctx.job
            .objects
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| anyhow::anyhow!("cannot store checkpoint {name}: {e}"))?;
    }
    Ok(snap.ckpt)
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
    let mut every = tokio::time::interval(ctx.checkpoint_interval);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The checkpoint being stored in the background, if any.
    let mut storing: Option<tokio::task::JoinHandle<anyhow::Result<Checkpoint>>> = None;
    loop {
        tokio::select! {
            biased;
            changed = release.changed() => {
                if changed.is_err() || *release.borrow() {
                    if let Some(task) = storing.take() {
                        if let Err(e) = commit_stored(&ctx, &mut held, task).await {
                            return lease_lost(&ctx, &held, e);
                        }
                    }
                    if !held.valid(ctx.margin) {
                        return Ok(fenced(&ctx, &held, "its lease ran out before the hand-over"));
                    }
                    if let Some(snap) = snapshot(&ctx, &held, &mut work)? {
                        let task = tokio::spawn(store(ctx.clone(), snap));
                        if let Err(e) = commit_stored(&ctx, &mut held, task).await {
                            return lease_lost(&ctx, &held, e);
                        }
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
            stored = async { storing.as_mut().expect("guarded").await }, if storing.is_some() => {
                storing = None;
                let stored = stored.map_err(|e| anyhow::anyhow!("partition {part}: checkpoint task failed: {e}"));
                if let Err(e) = commit(&ctx, &mut held, stored??).await {
                    return lease_lost(&ctx, &held, e);
                }
            }
            _ = every.tick(), if storing.is_none() => {
                if !held.valid(ctx.margin) {
                    return Ok(fenced(&ctx, &held, "its lease ran out (the process was paused or cut off from NATS)"));
                }
                if let Some(snap) = snapshot(&ctx, &held, &mut work)? {
                    storing = Some(tokio::spawn(store(ctx.clone(), snap)));
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

/// Takes `work`'s snapshot, timing the partition's pause.
fn snapshot<W: Work>(ctx: &Ctx, held: &Held, work: &mut W) -> anyhow::Result<Option<Snapshot>> {
    let started = std::time::Instant::now();
    let snap = work.snapshot(held)?;
    if snap.is_some() {
        let pause = started.elapsed().as_micros() as u64;
        Metrics::add(&ctx.metrics.checkpoint_pause_us_total, pause);
        Metrics::max(&ctx.metrics.checkpoint_pause_us_max, pause);
    }
    Ok(snap)
}

/// Waits for a checkpoint being stored, then commits it.
async fn commit_stored(
    ctx: &Ctx,
    held: &mut Held,
    task: tokio::task::JoinHandle<anyhow::Result<Checkpoint>>,
) -> Result<(), CheckpointError> {
    let stored = task
        .await
        .map_err(|e| CheckpointError::Work(anyhow::anyhow!("checkpoint task failed: {e}")))?;
    commit(ctx, held, stored.map_err(CheckpointError::Work)?).await
}

/// Commits stored checkpoint `ckpt` on `held`'s entry (a compare-and-set), unless the lease is
/// no longer ours; then deletes the checkpoint it replaces.
async fn commit(ctx: &Ctx, held: &mut Held, ckpt: Checkpoint) -> Result<(), CheckpointError> {
    let old = held.record.ckpt.object.clone();
    let new = ckpt.object.clone();
    let bytes = ckpt.bytes;
    let result = if held.valid(ctx.margin) {
        held.commit(&ctx.job.kv, ckpt, ctx.ttl).await
    } else {
        Err(LeaseError::Expired {
            part: held.part.key(),
        })
    };
    match result {
        Ok(()) => {
            Metrics::add(&ctx.metrics.checkpoints, 1);
            Metrics::max(&ctx.metrics.checkpoint_bytes_max, bytes);
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
        LeaseError::Expired { .. } => Some(fenced(
            ctx,
            held,
            "its lease ran out while its checkpoint was stored",
        )),
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
