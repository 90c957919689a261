//! `bettong cluster status --nats nats://HOST:PORT --job NAME [--json]`: the members, which
//! partitions each owns, each partition's last committed checkpoint, and the lag: messages
//! not yet consumed past the checkpoint's position, on the input and the repartition stream.

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
    let mut owned: BTreeMap<String, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
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
        if let Some(o) = &owner {
            let e = owned.entry(o.clone()).or_default();
            match part {
                Part::In(i) => e.0.push(i),
                Part::Key(q) => e.1.push(q),
            }
        }
        parts.push(json!({
            "partition": part.key(),
            "owner": owner,
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
            let (ins, kps) = owned.get(id).cloned().unwrap_or_default();
            let pid = view.members.iter().find(|m| &m.id == id).map(|m| m.pid);
            json!({"id": id, "pid": pid, "input_partitions": ins, "key_partitions": kps})
        })
        .collect();
    let key_counts: Vec<usize> = live
        .iter()
        .map(|id| owned.get(id).map(|o| o.1.len()).unwrap_or(0))
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
    }
    for p in status["partition_details"].as_array().into_iter().flatten() {
        let c = &p["checkpoint"];
        out += &format!(
            "  {:<6} owner {:<40} epoch {:<4} checkpoint pos {:<8} {} bytes, {} keys, lag {}\n",
            p["partition"].as_str().unwrap_or(""),
            p["owner"].as_str().unwrap_or("-"),
            p["epoch"],
            c["pos"],
            c["bytes"],
            c["keys"],
            p["lag"]
        );
    }
    out
}
