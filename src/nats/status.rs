//! `bettong cluster status --nats nats://HOST:PORT --job NAME [--json]`: the members, which
//! partitions each owns and on which of its cores, each partition's last committed checkpoint,
//! and the lag: messages not yet consumed past the checkpoint's position, on the input and the
//! repartition stream.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, consumer, stream};
use serde_json::{json, Value};

use super::address::{JobNames, StreamNames};
use super::lease::{now_ms, Part, View};
use super::setup::{connect, read_settings};

/// Reads job `job`'s status from the server at `server` (`HOST:PORT`), as one JSON object.
pub fn status(server: &str, job: &str) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(read(server, job))
}

/// Lags measured at once, at most.
const LAG_AHEAD: usize = 16;

/// Messages on `subject` after sequence `pos`.
async fn pending(s: &stream::Stream, subject: String, pos: u64) -> anyhow::Result<u64> {
    let deliver_policy = match pos {
        0 => consumer::DeliverPolicy::All,
        p => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: p + 1,
        },
    };
    let mut c = s
        .create_consumer(consumer::pull::Config {
            filter_subject: subject,
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: std::time::Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot measure the lag: {e}"))?;
    let info = c.info().await?.clone();
    let _ = s.delete_consumer(&info.name).await;
    Ok(info.num_pending)
}

async fn read(server: &str, job: &str) -> anyhow::Result<Value> {
    let (_client, js): (_, jetstream::Context) = connect(server).await?;
    let (kv, settings) = read_settings(&js, job).await?;
    let names = JobNames {
        job: job.to_string(),
    };
    let streams = StreamNames {
        prefix: settings.prefix.clone(),
    };
    let input = js.get_stream(streams.in_stream()).await?;
    let rp = js.get_stream(names.rp_stream()).await?;
    let view = View::read(&kv).await?;
    let now = now_ms();
    let live = view.live_members(now);
    // Per live owner: its input and key partitions, and the same per core.
    let mut owned: BTreeMap<String, Owned> = BTreeMap::new();
    let mut parts = Vec::new();
    let (mut input_lag, mut rp_lag) = (0, 0);
    let all: Vec<Part> = (0..settings.in_partitions)
        .map(Part::In)
        .chain((0..settings.partitions).map(Part::Key))
        .collect();
    // Every lag costs a consumer's creation, info and deletion: up to LAG_AHEAD partitions at
    // once, or a status of 72 partitions takes seconds on a busy server (and the benchmark's
    // times to balance, which poll it, with it).
    let lags: Vec<u64> = {
        use futures_util::{StreamExt, TryStreamExt};
        let (view, input, rp, streams, names) = (&view, &input, &rp, &streams, &names);
        futures_util::stream::iter(all.iter().copied())
            .map(|part| async move {
                let pos = view.parts.get(&part).map_or(0, |(_, rec)| rec.ckpt.pos);
                match part {
                    Part::In(i) => pending(input, streams.in_subject(i), pos).await,
                    Part::Key(q) => pending(rp, names.rp_subject(q), pos).await,
                }
            })
            .buffered(LAG_AHEAD)
            .try_collect()
            .await?
    };
    for (part, lag) in all.into_iter().zip(lags) {
        let rec = view.parts.get(&part).map(|(_, rec)| rec);
        match part {
            Part::In(_) => input_lag += lag,
            Part::Key(_) => rp_lag += lag,
        }
        let owner = rec
            .filter(|r| !r.free_at(now))
            .and_then(|r| r.owner.clone());
        let core = owner.as_ref().and(rec.and_then(|r| r.core));
        if let Some(o) = &owner {
            let e = owned.entry(o.clone()).or_default();
            e.all.add(part);
            if let Some(c) = core {
                e.cores.entry(c).or_default().add(part);
            }
        }
        parts.push(json!({
            "partition": part.key(),
            "owner": owner,
            "core": core,
            "epoch": rec.map(|r| r.epoch).unwrap_or(0),
            "lease_left_ms": rec.map(|r| r.expires_ms.saturating_sub(now)).unwrap_or(0),
            "checkpoint": rec.map(|r| json!({
                "pos": r.ckpt.pos, "object": r.ckpt.object, "bytes": r.ckpt.bytes,
                "keys": r.ckpt.keys,
                "age_ms": if r.ckpt.at_ms == 0 { Value::Null } else { json!(now.saturating_sub(r.ckpt.at_ms)) },
            })),
            "lag": lag,
        }));
    }
    let members: Vec<Value> = live
        .iter()
        .map(|id| {
            let o = owned.get(id).cloned().unwrap_or_default();
            let pid = view.members.iter().find(|m| &m.id == id).map(|m| m.pid);
            let cores: Vec<Value> = o
                .cores
                .iter()
                .map(
                    |(c, p)| json!({"core": c, "input_partitions": p.ins, "key_partitions": p.kps}),
                )
                .collect();
            json!({"id": id, "pid": pid, "input_partitions": o.all.ins,
                "key_partitions": o.all.kps, "cores": cores})
        })
        .collect();
    let key_counts: Vec<usize> = live
        .iter()
        .map(|id| owned.get(id).map(|o| o.all.kps.len()).unwrap_or(0))
        .collect();
    let unowned = parts.iter().filter(|p| p["owner"].is_null()).count();
    let balanced = unowned == 0
        && !key_counts.is_empty()
        && key_counts.iter().max().unwrap_or(&0) - key_counts.iter().min().unwrap_or(&0) <= 1;
    Ok(json!({
        "job": job,
        "prefix": settings.prefix,
        "partitions": settings.partitions,
        "in_partitions": settings.in_partitions,
        "members": members,
        "unowned_partitions": unowned,
        "balanced": balanced,
        "input_lag": input_lag,
        "repartition_lag": rp_lag,
        "partition_details": parts,
    }))
}

/// Input and key partitions.
#[derive(Debug, Clone, Default)]
struct Parts {
    ins: Vec<u32>,
    kps: Vec<u32>,
}

impl Parts {
    fn add(&mut self, part: Part) {
        match part {
            Part::In(i) => self.ins.push(i),
            Part::Key(q) => self.kps.push(q),
        }
    }
}

/// What one member owns, in all and per core (partitions whose record names a core).
#[derive(Debug, Clone, Default)]
struct Owned {
    all: Parts,
    cores: BTreeMap<u32, Parts>,
}

/// The status as a few lines for people.
pub fn human(status: &Value) -> String {
    let mut out = format!(
        "job {} (prefix {}, {} key partitions, {} input partitions): {} members, {} unowned \
         partitions, balanced: {}, input lag {} msgs, repartition lag {} msgs\n",
        status["job"].as_str().unwrap_or(""),
        status["prefix"].as_str().unwrap_or(""),
        status["partitions"],
        status["in_partitions"],
        status["members"].as_array().map_or(0, |m| m.len()),
        status["unowned_partitions"],
        status["balanced"],
        status["input_lag"],
        status["repartition_lag"],
    );
    for m in status["members"].as_array().into_iter().flatten() {
        out += &format!(
            "  member {} (pid {}): input partitions {}, key partitions {}\n",
            m["id"].as_str().unwrap_or(""),
            m["pid"],
            m["input_partitions"],
            m["key_partitions"]
        );
        for c in m["cores"].as_array().into_iter().flatten() {
            out += &format!(
                "    core {}: input partitions {}, key partitions {}\n",
                c["core"], c["input_partitions"], c["key_partitions"]
            );
        }
    }
    for p in status["partition_details"].as_array().into_iter().flatten() {
        let c = &p["checkpoint"];
        let owner = match (p["owner"].as_str(), p["core"].as_u64()) {
            (Some(o), Some(core)) => format!("{o}/core {core}"),
            (Some(o), None) => o.to_string(),
            (None, _) => "-".into(),
        };
        out += &format!(
            "  {:<6} owner {:<48} epoch {:<4} checkpoint pos {:<8} {} bytes, {} keys, lag {}\n",
            p["partition"].as_str().unwrap_or(""),
            owner,
            p["epoch"],
            c["pos"],
            c["bytes"],
            c["keys"],
            p["lag"]
        );
    }
    out
}
