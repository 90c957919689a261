//! One member process of a cluster job (`bettong serve --in nats://… --job NAME`): it registers
//! a heartbeat, and every [`SCAN`] reads the job's KV bucket, takes the partitions the balance
//! gives it that are free, and hands over the ones it should no longer hold. On SIGTERM or
//! SIGINT it withdraws its heartbeat, hands every partition over (checkpoint, release) and
//! exits 0.
//!
//! Every partition task runs on exactly one of the member's `--cores` pinned cores
//! ([`super::cores`]), from its take to its release, with that core's own NATS connection. The
//! control loop (scans, heartbeats, takes, the hand-over on SIGTERM) runs on the main thread,
//! unpinned, on a current-thread runtime with a connection of its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cores::{choose_cpus, describe, least_loaded, Cores};
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
    /// Cores: threads, each running a current-thread runtime.
    pub cores: usize,
    /// The CPUs to pin them to, the first `cores` of these (`--cpus`); `None`: not pinned.
    pub cpus: Option<Vec<usize>>,
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
    /// Counters, shared by the member's cores.
    pub metrics: Arc<Metrics>,
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
    /// The core it runs on.
    core: u32,
    release: watch::Sender<bool>,
    handle: JoinHandle<anyhow::Result<Outcome>>,
}

/// Runs one member until SIGTERM/SIGINT (hand-over, `Ok`) or a fatal error.
pub fn serve(opts: &MemberOptions) -> anyhow::Result<()> {
    if opts.lease_ttl < Duration::from_secs(1) {
        anyhow::bail!("--lease-ttl must be at least 1s");
    }
    let cpus = choose_cpus(opts.cores, opts.cpus.as_deref())?;
    let me = member_id();
    let metrics = Arc::new(Metrics::default());
    let cores = {
        let (opts, me, metrics) = (opts.clone(), me.clone(), metrics.clone());
        Cores::start(&cpus, move |_| {
            let (opts, me, metrics) = (opts.clone(), me.clone(), metrics.clone());
            async move { open(&opts, me, metrics).await }
        })?
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the member's control runtime")?;
    let ctx = Arc::new(rt.block_on(open(opts, me, metrics))?);
    let result = rt.block_on(run(opts, ctx, &cores));
    drop(cores);
    result
}

/// Connects to NATS and opens the job: one [`Ctx`] per core, and one for the control loop.
async fn open(opts: &MemberOptions, me: String, metrics: Arc<Metrics>) -> anyhow::Result<Ctx> {
    let (_client, js) = connect(&opts.server).await?;
    let job = ensure_job(&js, &opts.job, opts.settings.clone()).await?;
    Ok(Ctx {
        job,
        me,
        ttl: opts.lease_ttl,
        margin: opts.lease_ttl / 5,
        checkpoint_interval: opts.checkpoint_interval,
        max_frame: opts.max_frame,
        metrics,
    })
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

async fn run(opts: &MemberOptions, ctx: Arc<Ctx>, cores: &Cores<Ctx>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    heartbeat(&ctx).await?;
    println!(
        "{}",
        serde_json::json!({"event": "ready", "member": ctx.me, "job": opts.job,
            "prefix": ctx.job.settings.prefix, "partitions": ctx.job.settings.partitions,
            "in_partitions": ctx.job.settings.in_partitions,
            "cores": cores.cores.iter().map(|c| c.cpu).collect::<Vec<_>>()})
    );
    tracing::info!(
        "member {} of job {} on {} ({} cores {}, {} key partitions, {} input \
         partitions, lease {:?}, checkpoint every {:?})",
        ctx.me,
        opts.job,
        opts.server,
        cores.cores.len(),
        describe(&cores.cores.iter().map(|c| c.cpu).collect::<Vec<_>>()),
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
        rebalance(&ctx, cores, &view, &mut tasks).await;
        even_out(&ctx, cores, &tasks);
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
async fn rebalance(
    ctx: &Arc<Ctx>,
    cores: &Cores<Ctx>,
    view: &View,
    tasks: &mut HashMap<Part, Task>,
) {
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
        let core = least_loaded(&loads(cores, tasks, part));
        match take(&ctx.job.kv, part, seen, (&ctx.me, core), ctx.ttl).await {
            Ok(Some(held)) => {
                Metrics::add(&ctx.metrics.takes, 1);
                tracing::info!(
                    "member {} took partition {} on core {core} (epoch {}, checkpoint at {})",
                    ctx.me,
                    part.key(),
                    held.record.epoch,
                    held.record.ckpt.pos
                );
                tasks.insert(part, spawn(cores, core, held));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }
}

/// How many partitions of `part`'s kind (input or key) each core runs, not counting those
/// being released.
fn loads(cores: &Cores<Ctx>, tasks: &HashMap<Part, Task>, part: Part) -> Vec<usize> {
    let mut loads = vec![0; cores.cores.len()];
    for (p, t) in tasks {
        if same_kind(*p, part) && !*t.release.borrow() {
            loads[t.core as usize] += 1;
        }
    }
    loads
}

fn same_kind(a: Part, b: Part) -> bool {
    matches!(a, Part::In(_)) == matches!(b, Part::In(_))
}

/// Evens the member's cores out, when nothing is being released: if one core runs two or more
/// partitions of a kind than another (after the member released some to a joining member, say),
/// it releases one of them (checkpoint, release), and the next scan takes it again onto the
/// least-loaded core. One partition per scan, like any clean hand-over: no output repeats.
fn even_out(ctx: &Ctx, cores: &Cores<Ctx>, tasks: &HashMap<Part, Task>) {
    if cores.cores.len() < 2 || tasks.values().any(|t| *t.release.borrow()) {
        return;
    }
    for kind in [Part::In(0), Part::Key(0)] {
        let loads = loads(cores, tasks, kind);
        let (busiest, most) = loads
            .iter()
            .enumerate()
            .max_by_key(|&(i, &n)| (n, std::cmp::Reverse(i)))
            .map(|(i, &n)| (i as u32, n))
            .unwrap_or_default();
        let idlest = least_loaded(&loads);
        if most < loads[idlest as usize] + 2 {
            continue;
        }
        let moving = tasks
            .iter()
            .filter(|(p, t)| same_kind(**p, kind) && t.core == busiest)
            .map(|(p, _)| *p)
            .max();
        if let Some(part) = moving {
            tracing::info!(
                "member {} moves partition {} from core {busiest} to core {idlest} (its cores \
                 run {loads:?} partitions of its kind): release, then take again",
                ctx.me,
                part.key()
            );
            let _ = tasks[&part].release.send(true);
            return;
        }
    }
}

/// Runs partition `held` on core `core`, with that core's context (and NATS connection).
fn spawn(cores: &Cores<Ctx>, core: u32, held: Held) -> Task {
    let (release, rx) = watch::channel(false);
    let on = &cores.cores[core as usize];
    let ctx = on.local.clone();
    let handle = on.spawn(async move {
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
    Task {
        core,
        release,
        handle,
    }
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
