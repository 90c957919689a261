//! Connecting to NATS and making sure a job's streams and buckets exist with the settings this
//! run asks for: created when absent, refused (with what differs and what to do) when they exist
//! with other settings.

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv, object_store, stream};
use serde::{Deserialize, Serialize};

use super::address::{JobNames, StreamNames};

/// The settings fixed for the life of a job, kept under the key `job` of its KV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    /// The prefix of its input and output streams.
    pub prefix: String,
    /// Key partitions `P`.
    pub partitions: u32,
    /// Input partitions `I`.
    pub in_partitions: u32,
}

/// A job's streams and buckets, opened.
pub struct Job {
    /// Its settings.
    pub settings: JobSettings,
    /// The names of its input and output streams.
    pub streams: StreamNames,
    /// The names of its own streams and buckets.
    pub names: JobNames,
    /// The JetStream context.
    pub js: jetstream::Context,
    /// The input stream.
    pub input: stream::Stream,
    /// The repartition stream.
    pub rp: stream::Stream,
    /// Members, owners and checkpoint positions.
    pub kv: kv::Store,
    /// Checkpoint contents.
    pub objects: object_store::ObjectStore,
}

/// Connects to `server` (`HOST:PORT`). The client reconnects by itself if the server goes away
/// later; only the first connection must succeed.
pub async fn connect(server: &str) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(server)
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {server}: is `nats-server -js` running there and \
                 reachable?"
            )
        })?;
    let js = jetstream::new(client.clone());
    Ok((client, js))
}

/// Gets stream `config.name`, creating it if absent; refuses one whose description (which
/// carries Bettong's settings) differs. `what` names the stream in errors.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    fix: &str,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    let want = config.description.clone();
    let mut s = match js.get_stream(&name).await {
        Ok(s) => s,
        Err(_) => match js.create_stream(config).await {
            Ok(s) => s,
            // Another process may have created it meanwhile: look again.
            Err(e) => js.get_stream(&name).await.with_context(|| {
                format!("cannot create JetStream stream {name} ({e}): is JetStream enabled (-js)?")
            })?,
        },
    };
    let info = s
        .info()
        .await
        .with_context(|| format!("cannot read stream {name}'s settings"))?;
    if info.config.description != want {
        bail!(
            "stream {name} exists with other settings ({:?}) than this run's ({:?}): {fix}",
            info.config
                .description
                .as_deref()
                .unwrap_or("none: not made by Bettong"),
            want.as_deref().unwrap_or("")
        );
    }
    Ok(s)
}

fn file_stream(name: String, subjects: String, description: String) -> stream::Config {
    stream::Config {
        name,
        subjects: vec![subjects],
        description: Some(description),
        storage: stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    }
}

/// Makes sure the input stream of `streams` exists with `in_partitions` input partitions.
pub async fn ensure_input(
    js: &jetstream::Context,
    streams: &StreamNames,
    in_partitions: u32,
) -> anyhow::Result<stream::Stream> {
    let name = streams.in_stream();
    ensure_prefix_stream(js, streams, name, "in", "in_partitions", in_partitions).await
}

/// Makes sure the output stream of `streams` exists with `partitions` key partitions.
pub async fn ensure_output(
    js: &jetstream::Context,
    streams: &StreamNames,
    partitions: u32,
) -> anyhow::Result<stream::Stream> {
    let name = streams.out_stream();
    ensure_prefix_stream(js, streams, name, "out", "partitions", partitions).await
}

/// Makes sure stream `name` of `streams`' prefix exists, holding the subjects `PREFIX.<dir>.*`
/// and made with `setting` (`in_partitions` or `partitions`, the flag of the same name) `n`.
async fn ensure_prefix_stream(
    js: &jetstream::Context,
    streams: &StreamNames,
    name: String,
    dir: &str,
    setting: &str,
    n: u32,
) -> anyhow::Result<stream::Stream> {
    let kind = if dir == "in" { "input" } else { "output" };
    ensure_stream(
        js,
        file_stream(
            name,
            format!("{}.{dir}.*", streams.prefix),
            format!("bettong {kind}; {setting}={n}"),
        ),
        &format!(
            "pass the --{} it was made with, or delete the stream to start over",
            setting.replace('_', "-")
        ),
    )
    .await
}

/// Opens KV bucket `bucket`, creating it if absent. It is created as the stream the KV API
/// expects (`KV_<bucket>`, one value per key), since the client's own `create_key_value` first
/// reads the account's limits in a form nats-server 2.9 does not send.
async fn open_kv(js: &jetstream::Context, bucket: &str, job: &str) -> anyhow::Result<kv::Store> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(format!(
            "bettong job {job}: settings, members, partition owners"
        )),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        storage: stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another process may have created it meanwhile.
        return js.get_key_value(bucket).await.with_context(|| {
            format!("cannot create KV bucket {bucket} ({e}): is JetStream enabled (-js)?")
        });
    }
    js.get_key_value(bucket)
        .await
        .with_context(|| format!("cannot open KV bucket {bucket}"))
}

/// Opens job `job` with `settings`, creating every stream and bucket that is absent (what
/// `bettong cluster create` does, and every member and `send` on start).
pub async fn ensure_job(
    js: &jetstream::Context,
    job: &str,
    settings: JobSettings,
) -> anyhow::Result<Job> {
    if settings.partitions == 0 || settings.in_partitions == 0 {
        bail!("--partitions and --in-partitions must be at least 1");
    }
    let names = JobNames {
        job: job.to_string(),
    };
    let streams = StreamNames {
        prefix: settings.prefix.clone(),
    };
    let kv = open_kv(js, &names.kv_bucket(), job).await?;
    let encoded = serde_json::to_vec(&settings)?;
    match kv.create("job", encoded.into()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let stored = kv
                .get("job")
                .await
                .with_context(|| format!("cannot read job {job}'s settings"))?
                .with_context(|| format!("job {job}'s settings vanished while starting"))?;
            let stored: JobSettings = serde_json::from_slice(&stored)
                .with_context(|| format!("job {job}'s settings in NATS are unreadable"))?;
            if stored != settings {
                bail!(
                    "job {job} exists with prefix {}, --partitions {}, --in-partitions {}; this \
                     run asks for prefix {}, --partitions {}, --in-partitions {}: pass the job's \
                     settings, or pick another --job",
                    stored.prefix,
                    stored.partitions,
                    stored.in_partitions,
                    settings.prefix,
                    settings.partitions,
                    settings.in_partitions
                );
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot record job {job}'s settings")),
    }
    let input = ensure_input(js, &streams, settings.in_partitions).await?;
    ensure_output(js, &streams, settings.partitions).await?;
    let rp = ensure_stream(
        js,
        file_stream(
            names.rp_stream(),
            format!("bettong_{job}_rp.*"),
            format!(
                "bettong repartition of job {job}; partitions={}",
                settings.partitions
            ),
        ),
        "the job's internal stream: delete it only with the whole job",
    )
    .await?;
    let objects = match js.get_object_store(names.obj_bucket()).await {
        Ok(o) => o,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: names.obj_bucket(),
                description: Some(format!("bettong job {job}: partition checkpoints")),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create object store {}", names.obj_bucket()))?,
    };
    Ok(Job {
        settings,
        streams,
        names,
        js: js.clone(),
        input,
        rp,
        kv,
        objects,
    })
}

/// Reads job `job`'s settings from its KV bucket, for commands that only look.
pub async fn read_settings(
    js: &jetstream::Context,
    job: &str,
) -> anyhow::Result<(kv::Store, JobSettings)> {
    let names = JobNames {
        job: job.to_string(),
    };
    let kv = js.get_key_value(names.kv_bucket()).await.with_context(|| {
        format!(
            "job {job} has no KV bucket {}: start a member or run `bettong cluster create` first",
            names.kv_bucket()
        )
    })?;
    let raw = kv
        .get("job")
        .await?
        .with_context(|| format!("job {job}'s bucket has no settings"))?;
    Ok((kv, serde_json::from_slice(&raw)?))
}
