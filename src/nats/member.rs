//! One member process of a cluster job (`bettong serve --in nats://… --job NAME`): it registers
//! a heartbeat, and every [`SCAN`] reads the job's KV bucket, takes the partitions the balance
//! gives it that are free, and hands over the ones it should no longer hold. On SIGTERM or
//! SIGINT it withdraws its heartbeat, hands every partition over (checkpoint, release) and
//! exits 0.
//!
//! All of it runs on one tokio runtime (`--cores` worker threads): the NATS client is tokio-based.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::counter::Counter;
use super::driver::{drive, Outcome};
use super::lease::{assigned, now_ms, take, Held, MemberRecord, Part, View};
use super::metrics::Metrics;
use super::setup::{connect, ensure_job, Job, JobSettings};
use super::splitter::Splitter;

/// How often a member reads the bucket and rebalances.
pub const SCAN: Duration = Duration::from_millis(500);

/// What a member is started with.
#[derive(Debug, Clone)]
pub struct MemberOptions {
    /// `HOST:PORT` of a NATS server.
    pub server: String,
    /// The job's name.
    pub job: String,
    /// The job's settings (prefix, partitions).
    pub settings: JobSettings,
    /// Tokio worker threads.
    pub threads: usize,
    /// Time between checkpoints of a partition.
    pub checkpoint_interval: Duration,
    /// Lease length.
    pub lease_ttl: Duration,
    /// Largest accepted frame payload; a larger frame rejects the rest of its message.
    pub max_frame: usize,
}

/// What a member's partition tasks share.
pub struct Ctx {
    /// The job's streams and buckets.
    pub job: Job,
    /// This member's id.
    pub me: String,
    /// Lease length.
    pub ttl: Duration,
    /// A lease with less than this left is treated as lost: no publish, no commit.
    pub margin: Duration,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Largest accepted frame payload.
    pub max_frame: usize,
    /// Counters.
    pub metrics: Metrics,
}

impl Ctx {
    /// Publishes through the job's JetStream context, saying where a failure happened.
    pub async fn js_publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
        self.job
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish to {subject}: {e}"))
    }
}

struct Task {
    release: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<Outcome>>,
}

/// Runs one member until SIGTERM/SIGINT (hand-over, `Ok`) or a fatal error.
pub fn serve(opts: &MemberOptions) -> anyhow::Result<()> {
    if opts.lease_ttl < Duration::from_secs(1) {
        anyhow::bail!("--lease-ttl must be at least 1s");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads.max(1))
        .thread_name("bettong-nats")
        .enable_all()
        .build()
        .context("cannot start the NATS runtime")?;
    rt.block_on(run(opts.clone()))
}

fn member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

async fn run(opts: MemberOptions) -> anyhow::Result<()> {
    let (_client, js) = connect(&opts.server).await?;
    let job = ensure_job(&js, &opts.job, opts.settings.clone()).await?;
    let ctx = Arc::new(Ctx {
        job,
        me: member_id(),
        ttl: opts.lease_ttl,
        margin: opts.lease_ttl / 5,
        checkpoint_interval: opts.checkpoint_interval,
        max_frame: opts.max_frame,
        metrics: Metrics::default(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    heartbeat(&ctx).await?;
    println!(
        "{}",
        serde_json::json!({"event": "ready", "member": ctx.me, "job": opts.job,
            "prefix": ctx.job.settings.prefix, "partitions": ctx.job.settings.partitions,
            "in_partitions": ctx.job.settings.in_partitions})
    );
    tracing::info!(
        "member {} of job {} on {} ({} key partitions, {} input partitions, lease {:?}, \
         checkpoint every {:?})",
        ctx.me,
        opts.job,
        opts.server,
        ctx.job.settings.partitions,
        ctx.job.settings.in_partitions,
        ctx.ttl,
        ctx.checkpoint_interval
    );
    let mut tasks: HashMap<Part, Task> = HashMap::new();
    let mut scan = tokio::time::interval(SCAN);
    let mut last_beat = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = scan.tick() => {}
        }
        reap(&mut tasks, &ctx).await;
        if last_beat.elapsed() >= ctx.ttl / 3 {
            match heartbeat(&ctx).await {
                Ok(()) => last_beat = std::time::Instant::now(),
                Err(e) => tracing::warn!("heartbeat not written: {e:#}; retrying"),
            }
        }
        let view = match View::read(&ctx.job.kv).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("cannot read the job's bucket: {e:#}; retrying");
                continue;
            }
        };
        rebalance(&ctx, &view, &mut tasks).await;
    }
    leave(&ctx, tasks).await
}

/// Writes this member's heartbeat.
async fn heartbeat(ctx: &Ctx) -> anyhow::Result<()> {
    let rec = MemberRecord {
        id: ctx.me.clone(),
        pid: std::process::id(),
        expires_ms: now_ms() + ctx.ttl.as_millis() as u64,
    };
    ctx.job
        .kv
        .put(
            format!("member.{}", ctx.me),
            serde_json::to_vec(&rec)?.into(),
        )
        .await
        .context("cannot write the member's heartbeat")?;
    Ok(())
}

/// Forgets the tasks that ended, logging how.
async fn reap(tasks: &mut HashMap<Part, Task>, ctx: &Ctx) {
    let done: Vec<Part> = tasks
        .iter()
        .filter(|(_, t)| t.handle.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for part in done {
        let task = tasks.remove(&part).expect("listed above");
        match task.handle.await {
            Ok(Ok(Outcome::Released)) => {
                tracing::info!("member {} handed partition {} over", ctx.me, part.key())
            }
            Ok(Ok(Outcome::Fenced(_))) => {}
            Ok(Err(e)) => tracing::warn!(
                "partition {} stopped: {e:#}; its state is dropped and it restarts from its \
                 last checkpoint",
                part.key()
            ),
            Err(e) => tracing::error!("partition {} task failed: {e}", part.key()),
        }
    }
}

/// Takes what the balance gives this member and is free; releases what it gives to another
/// live member.
async fn rebalance(ctx: &Arc<Ctx>, view: &View, tasks: &mut HashMap<Part, Task>) {
    let now = now_ms();
    let mut members = view.live_members(now);
    if !members.contains(&ctx.me) {
        members.push(ctx.me.clone());
        members.sort();
    }
    let s = &ctx.job.settings;
    let parts = (0..s.in_partitions)
        .map(Part::In)
        .chain((0..s.partitions).map(Part::Key));
    for part in parts {
        let mine = assigned(part, &members) == Some(ctx.me.as_str());
        let seen = view.parts.get(&part).cloned();
        if let Some(task) = tasks.get(&part) {
            if !mine && !*task.release.borrow() {
                let _ = task.release.send(true);
            }
            continue;
        }
        if !mine {
            continue;
        }
        let free = match &seen {
            None => true,
            Some((_, rec)) => rec.free_at(now) || rec.owner.as_deref() == Some(ctx.me.as_str()),
        };
        if !free {
            continue;
        }
        match take(&ctx.job.kv, part, seen, &ctx.me, ctx.ttl).await {
            Ok(Some(held)) => {
                Metrics::add(&ctx.metrics.takes, 1);
                tracing::info!(
                    "member {} took partition {} (epoch {}, checkpoint at {})",
                    ctx.me,
                    part.key(),
                    held.record.epoch,
                    held.record.ckpt.pos
                );
                tasks.insert(part, spawn(ctx.clone(), held));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

fn spawn(ctx: Arc<Ctx>, held: Held) -> Task {
    let (release, rx) = watch::channel(false);
    let handle = tokio::spawn(async move {
        match held.part {
            Part::In(i) => {
                let work = Splitter::new(ctx.clone(), i, held.record.ckpt.pos);
                let filter = ctx.job.streams.in_subject(i);
                let stream = ctx.job.input.clone();
                drive(ctx, held, &stream, filter, work, rx).await
            }
            Part::Key(q) => {
                let work = Counter::restore(ctx.clone(), q, &held).await?;
                let filter = ctx.job.names.rp_subject(q);
                let stream = ctx.job.rp.clone();
                drive(ctx, held, &stream, filter, work, rx).await
            }
        }
    });
    Task { release, handle }
}

/// SIGTERM: withdraw the heartbeat (the others rebalance without us), hand every partition
/// over, print the `stopped` line.
async fn leave(ctx: &Arc<Ctx>, tasks: HashMap<Part, Task>) -> anyhow::Result<()> {
    tracing::info!(
        "member {} leaving: handing {} partitions over",
        ctx.me,
        tasks.len()
    );
    if let Err(e) = ctx.job.kv.delete(format!("member.{}", ctx.me)).await {
        tracing::warn!("cannot withdraw the heartbeat: {e}; it expires within the lease");
    }
    for task in tasks.values() {
        let _ = task.release.send(true);
    }
    let mut failed = Vec::new();
    for (part, task) in tasks {
        match tokio::time::timeout(Duration::from_secs(20), task.handle).await {
            Ok(Ok(Ok(Outcome::Released))) => {}
            Ok(Ok(Ok(Outcome::Fenced(why)))) => failed.push(format!("{} ({why})", part.key())),
            Ok(Ok(Err(e))) => failed.push(format!("{} ({e:#})", part.key())),
            Ok(Err(e)) => failed.push(format!("{} ({e})", part.key())),
            Err(_) => failed.push(format!("{} (no hand-over within 20 s)", part.key())),
        }
    }
    println!(
        "{}",
        serde_json::json!({"event": "stopped", "member": ctx.me, "metrics": ctx.metrics.json()})
    );
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "member {} could not hand over {}: the others take them from their last checkpoints \
             once the leases run out (output since then repeats)",
            ctx.me,
            failed.join(", ")
        )
    }
}
