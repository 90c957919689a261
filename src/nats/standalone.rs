//! `bettong serve` with `--in nats://…` or `--out nats://…` and no `--job`: one process running
//! the ordinary engine word count on its glommio cores, with NATS JetStream as its source, its
//! sink, or both; the other side may be any other source or sink (TCP, `file:PATH`).
//!
//! The NATS client (async-nats, tokio-based) runs on one bridge thread of its own, with a
//! current-thread tokio runtime. It exchanges batches with the engine's cores over the engine's
//! bounded channel source and sink ([`super::engine_source`], [`super::engine_sink`]); a core
//! never blocks on NATS, and each queue's bound is the backpressure.
//!
//! The input stream is read from its first message at every start, since the counts are not
//! checkpointed: a restarted process recounts the whole stream and reaches the same counts (its
//! output lines repeat). That is why `--resilience-dir` is refused with a NATS input; a job that
//! must survive crashes and grow past one process is a cluster job (`--job`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bettong_engine::channel_sink::{channel_sink, ChannelSinkConfig, ChunkReceiver};
use bettong_engine::channel_source::{channel_source, BatchSender};
use bettong_engine::{SinkConfig, SourceConfig};

use super::address::{NatsUrl, StreamNames};
use super::cli::{is_nats, DEFAULT_IN_PARTITIONS, DEFAULT_PARTITIONS};
use super::engine_sink::{Layout, SinkCounts};
use super::engine_source::SourceCounts;
use super::setup::{connect, ensure_input, ensure_output};

/// Input messages queued for each core, at most.
const SOURCE_QUEUE: usize = 256;
/// Output chunks queued for the bridge, at most.
const SINK_QUEUE: usize = 64;

/// A NATS input stream feeding one of the engine's channel sources.
pub struct BridgeInput {
    /// `nats://HOST:PORT/PREFIX`: the stream `PREFIX_in`.
    pub url: NatsUrl,
    /// The source's producer end.
    pub tx: BatchSender,
    /// Input partitions, should the stream have to be created.
    pub in_partitions: u32,
}

/// A NATS output stream fed by the engine's channel sink.
pub struct BridgeOutput {
    /// `nats://HOST:PORT/PREFIX`: the stream `PREFIX_out`.
    pub url: NatsUrl,
    /// The sink's consumer end.
    pub rx: ChunkReceiver,
    /// Key partitions: subjects `PREFIX.out.<q>`.
    pub partitions: u32,
    /// How the output divides into records, and their keys.
    pub layout: Layout,
}

/// The number of cores the engine runs on with `opts` (one lane of a NATS source each).
pub fn engine_cores(opts: &crate::serve::ServeOptions) -> usize {
    opts.cores
        .or(opts.cpus.as_ref().map(Vec::len))
        .unwrap_or_else(|| bettong_engine::online_cpus().len())
        .max(1)
}

/// A channel source reading `url`'s input stream, with one lane per engine core of `opts`, and
/// the bridge's end of it.
pub fn nats_source(
    url: &NatsUrl,
    opts: &crate::serve::ServeOptions,
    in_partitions: u32,
) -> (SourceConfig, BridgeInput) {
    nats_source_on(url, engine_cores(opts), opts.max_frame, in_partitions)
}

/// A channel source reading `url`'s input stream with `lanes` lanes (give it the engine's core
/// count) and frames of at most `max_frame` bytes, and the bridge's end of it: [`nats_source`]
/// for a caller without [`ServeOptions`](crate::serve::ServeOptions) (the Python runner).
pub fn nats_source_on(
    url: &NatsUrl,
    lanes: usize,
    max_frame: usize,
    in_partitions: u32,
) -> (SourceConfig, BridgeInput) {
    let (tx, mut src) = channel_source(&url.to_string(), lanes.max(1), SOURCE_QUEUE);
    src.max_frame = max_frame;
    let input = BridgeInput {
        url: url.clone(),
        tx,
        in_partitions,
    };
    (SourceConfig::Channel(src), input)
}

/// A channel sink publishing to `url`'s output stream, and the bridge's end of it.
pub fn nats_sink(
    url: &NatsUrl,
    opts: &crate::serve::ServeOptions,
    partitions: u32,
    layout: Layout,
) -> (SinkConfig, BridgeOutput) {
    let (mut cfg, output) = nats_channel_sink(url, partitions, layout);
    cfg.max_held_bytes = opts.limits.sink_buffer;
    cfg.shutdown_grace = opts.limits.shutdown_grace;
    (SinkConfig::Channel(cfg), output)
}

/// A channel sink, with the engine's default limits, publishing to `url`'s output stream, and
/// the bridge's end of it: [`nats_sink`] for a caller without
/// [`ServeOptions`](crate::serve::ServeOptions) (the Python runner).
pub fn nats_channel_sink(
    url: &NatsUrl,
    partitions: u32,
    layout: Layout,
) -> (ChannelSinkConfig, BridgeOutput) {
    let (cfg, rx) = channel_sink(SINK_QUEUE);
    let output = BridgeOutput {
        url: url.clone(),
        rx,
        partitions,
        layout,
    };
    (cfg, output)
}

/// Parses a `nats://HOST:PORT/PREFIX` given to `flag`.
pub fn parse_url(s: &str, flag: &str) -> anyhow::Result<NatsUrl> {
    let url: NatsUrl = s.parse().map_err(anyhow::Error::msg)?;
    url.require_prefix(flag)?;
    Ok(url)
}

/// Refuses the cluster-only flags on a process that is not a cluster member; `--partitions`
/// and `--in-partitions` only where a NATS stream is used (`uses_nats`).
pub fn refuse_member_flags(a: &super::cli::NatsServeArgs, uses_nats: bool) -> anyhow::Result<()> {
    if !uses_nats {
        return super::cli::refuse_cluster_flags(a);
    }
    if a.lease_ttl.is_some() {
        bail!("--lease-ttl applies to cluster members only: add --job NAME");
    }
    if a.job.is_some() {
        bail!("--job needs --in nats://HOST:PORT/PREFIX: a cluster member reads its job's input stream");
    }
    Ok(())
}

/// `serve` with a `nats://` `--in` or `--out` and no `--job`.
pub fn serve(a: crate::cli::ServeArgs) -> anyhow::Result<()> {
    refuse_member_flags(&a.nats, true)?;
    let nats_in = is_nats(&a.input);
    let nats_out = is_nats(&a.output);
    if nats_in && (a.resilience_dir.is_some() || a.start_empty_if_unreadable) {
        bail!(
            "--resilience-dir cannot be used with --in nats://…: without --job the input stream \
             is read from its start at every start, so a restored checkpoint would count it \
             twice; run a cluster job (--job NAME) for checkpoints in NATS"
        );
    }
    let partitions = a.nats.partitions.unwrap_or(DEFAULT_PARTITIONS);
    let in_partitions = a.nats.in_partitions.unwrap_or(DEFAULT_IN_PARTITIONS);
    let observe = a.observe();
    let opts = a.options();
    crate::serve::check_limits(&opts)?;
    crate::serve::install_signal_handlers()?;
    crate::serve::first_line("serve", &observe, &opts);

    let mut inputs = Vec::new();
    let source = if nats_in {
        let (source, input) = nats_source(&parse_url(&opts.input, "--in")?, &opts, in_partitions);
        inputs.push(input);
        source
    } else {
        crate::serve::word_count_source(&opts)?.1
    };
    let (sink, output) = if nats_out {
        let url = parse_url(&opts.output, "--out")?;
        let (sink, output) = nats_sink(&url, &opts, partitions, Layout::Lines);
        (sink, Some(output))
    } else {
        let records = bettong_engine::sink::Records::Delimited(b'\n');
        (crate::serve::tcp_sink(&opts, records)?, None)
    };
    let bridge = Bridge::start(inputs, output, opts.limits.shutdown_grace)?;
    let started =
        crate::serve::start_app_with_sink(&opts, crate::app::word_count(), vec![source], sink)
            .with_context(|| format!("starting the word-count server on {}", opts.input));
    let ran = started.and_then(|running| {
        tracing::info!(
            "word count on {} cores (CPUs {:?}): input {}, output {}",
            running.cpus().len(),
            running.cpus(),
            opts.input,
            opts.output
        );
        crate::serve::run_until_signal(&opts, &observe, running, &opts.input, "word-count server")
    });
    // The engine has stopped (its sink queue is closed): publish the rest, then stop.
    let bridged = bridge.finish();
    ran.and(bridged)
}

/// The bridge thread, and how to stop it.
pub struct Bridge {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Bridge {
    /// Starts the thread and waits until it has connected and found (or made) the streams.
    /// Once the engine has stopped, the output still held is published within `grace`
    /// (`--shutdown-grace`), or given up on.
    pub fn start(
        inputs: Vec<BridgeInput>,
        output: Option<BridgeOutput>,
        grace: Duration,
    ) -> anyhow::Result<Bridge> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bettong-nats".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the NATS bridge's tokio runtime")?;
                rt.block_on(run(inputs, output, grace, ready_tx, stop_rx))
            })
            .context("starting the NATS bridge thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Bridge { stop, thread }),
            Ok(Err(e)) => Err(e),
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the NATS bridge thread ended before it was ready"),
            },
        }
    }

    /// Stops reading input, publishes the output still queued (every core has finished its
    /// output by now), and joins the thread.
    pub fn finish(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the NATS bridge thread panicked"),
        }
    }
}

/// The bridge: set up, report ready, feed and drain until the stop and the end of the output.
async fn run(
    inputs: Vec<BridgeInput>,
    output: Option<BridgeOutput>,
    grace: Duration,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let in_counts = Arc::new(SourceCounts::default());
    let out_counts = Arc::new(SinkCounts::default());
    let setup = async {
        let mut feeds = Vec::new();
        let mut drain = None;
        for input in inputs {
            let url = input.url;
            let (client, js) = connect(&url.server).await?;
            let streams = StreamNames {
                prefix: url.require_prefix("--in")?.to_string(),
            };
            // An existing input stream is read whatever its input partitions: every subject.
            let stream = match js.get_stream(streams.in_stream()).await {
                Ok(s) => s,
                Err(_) => ensure_input(&js, &streams, input.in_partitions).await?,
            };
            let name = streams.in_stream();
            let counts = in_counts.clone();
            let messages = super::engine_source::open(&stream, &name, 1).await?;
            tracing::info!("reading stream {name} on {url} from its first message");
            let tx = input.tx;
            feeds.push(tokio::spawn(async move {
                super::engine_source::feed(stream, messages, name, tx, counts).await;
                drop(client);
            }));
        }
        if let Some(out) = output {
            let url = out.url;
            let (client, js) = connect(&url.server).await?;
            let streams = StreamNames {
                prefix: url.require_prefix("--out")?.to_string(),
            };
            ensure_output(&js, &streams, out.partitions).await?;
            tracing::info!(
                "publishing output on {}.out.<0..{}> ({url})",
                streams.prefix,
                out.partitions
            );
            let counts = out_counts.clone();
            let (partitions, layout, rx) = (out.partitions, out.layout, out.rx);
            drain = Some(tokio::spawn(async move {
                let r =
                    super::engine_sink::drain(js, streams, partitions, layout, rx, counts).await;
                // Publishes were acknowledged: nothing is left in the client to flush.
                drop(client);
                r
            }));
        }
        anyhow::Ok((feeds, drain))
    };
    let (feeds, drain) = match setup.await {
        Ok(tasks) => {
            let _ = ready.send(Ok(()));
            tasks
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let _ = stop.await;
    for feed in feeds {
        feed.abort();
    }
    let result = match drain {
        Some(drain) => match tokio::time::timeout(grace, drain).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("the NATS output task failed: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "the output was not all acknowledged by NATS within {grace:?} after the \
                 engine stopped (--shutdown-grace): what was not is lost"
            )),
        },
        None => Ok(()),
    };
    let load = std::sync::atomic::Ordering::Relaxed;
    tracing::info!(
        "NATS bridge: read {} input messages ({} bytes); published {} output messages ({} lines, \
         {} publishes retried)",
        in_counts.messages.load(load),
        in_counts.bytes.load(load),
        out_counts.messages.load(load),
        out_counts.lines.load(load),
        out_counts.retries.load(load)
    );
    result
}
