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
use bettong_engine::channel_sink::{channel_sink, ChunkReceiver};
use bettong_engine::channel_source::{channel_source, BatchSender};
use bettong_engine::{SinkConfig, SourceConfig};

use super::address::{NatsUrl, StreamNames};
use super::cli::{is_nats, DEFAULT_IN_PARTITIONS, DEFAULT_PARTITIONS};
use super::engine_sink::SinkCounts;
use super::engine_source::SourceCounts;
use super::setup::{connect, ensure_input, ensure_output};

/// Input messages queued for the cores, at most.
const SOURCE_QUEUE: usize = 256;
/// Output chunks queued for the bridge, at most.
const SINK_QUEUE: usize = 64;

/// The bridge thread's ends of the engine's queues.
struct BridgeEnds {
    input: Option<(NatsUrl, BatchSender)>,
    output: Option<(NatsUrl, ChunkReceiver)>,
    partitions: u32,
    in_partitions: u32,
}

/// `serve` with a `nats://` `--in` or `--out` and no `--job`.
pub fn serve(a: crate::cli::ServeArgs) -> anyhow::Result<()> {
    if a.nats.lease_ttl.is_some() {
        bail!("--lease-ttl applies to cluster members only: add --job NAME");
    }
    if a.nats.job.is_some() {
        bail!("--job needs --in nats://HOST:PORT/PREFIX: a cluster member reads its job's input stream");
    }
    let nats_in = is_nats(&a.input);
    let nats_out = is_nats(&a.output);
    if nats_in && (a.resilience_dir.is_some() || a.start_empty_if_unreadable) {
        bail!(
            "--resilience-dir cannot be used with --in nats://…: without --job the input stream \
             is read from its start at every start, so a restored checkpoint would count it \
             twice; run a cluster job (--job NAME) for checkpoints in NATS"
        );
    }
    let parse = |s: &str, flag: &str| -> anyhow::Result<NatsUrl> {
        let url: NatsUrl = s.parse().map_err(anyhow::Error::msg)?;
        url.require_prefix(flag)?;
        Ok(url)
    };
    let in_url = nats_in.then(|| parse(&a.input, "--in")).transpose()?;
    let out_url = nats_out.then(|| parse(&a.output, "--out")).transpose()?;
    let partitions = a.nats.partitions.unwrap_or(DEFAULT_PARTITIONS);
    let in_partitions = a.nats.in_partitions.unwrap_or(DEFAULT_IN_PARTITIONS);
    let observe = a.observe();
    let opts = a.options();
    crate::serve::check_limits(&opts)?;
    crate::serve::install_signal_handlers()?;
    crate::serve::first_line("serve", &observe, &opts);

    let (source, input_tx, input_shown) = match &in_url {
        Some(url) => {
            let (tx, mut src) = channel_source(&url.to_string(), SOURCE_QUEUE);
            src.max_frame = opts.max_frame;
            (SourceConfig::Channel(src), Some(tx), url.to_string())
        }
        None => {
            let (_, source) = crate::serve::word_count_source(&opts)?;
            (source, None, opts.input.clone())
        }
    };
    let (sink, output_rx) = if nats_out {
        let (mut cfg, rx) = channel_sink(SINK_QUEUE);
        cfg.max_held_bytes = opts.limits.sink_buffer;
        cfg.shutdown_grace = opts.limits.shutdown_grace;
        (SinkConfig::Channel(cfg), Some(rx))
    } else {
        (
            crate::serve::tcp_sink(&opts, bettong_engine::sink::Records::Delimited(b'\n'))?,
            None,
        )
    };
    let ends = BridgeEnds {
        input: in_url.clone().zip(input_tx),
        output: out_url.clone().zip(output_rx),
        partitions,
        in_partitions,
    };
    let bridge = Bridge::start(ends)?;
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
        crate::serve::run_until_signal(&opts, &observe, running, &input_shown, "word-count server")
    });
    // The engine has stopped (its sink queue is closed): publish the rest, then stop.
    let bridged = bridge.finish();
    ran.and(bridged)
}

/// The bridge thread, and how to stop it.
struct Bridge {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Bridge {
    /// Starts the thread and waits until it has connected and found (or made) the streams.
    fn start(ends: BridgeEnds) -> anyhow::Result<Bridge> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bettong-nats".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the NATS bridge's tokio runtime")?;
                rt.block_on(run(ends, ready_tx, stop_rx))
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
    fn finish(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the NATS bridge thread panicked"),
        }
    }
}

/// The bridge: set up, report ready, feed and drain until the stop and the end of the output.
async fn run(
    ends: BridgeEnds,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let in_counts = Arc::new(SourceCounts::default());
    let out_counts = Arc::new(SinkCounts::default());
    let setup = async {
        let mut feed = None;
        let mut drain = None;
        if let Some((url, tx)) = ends.input {
            let (_client, js) = connect(&url.server).await?;
            let streams = StreamNames {
                prefix: url.require_prefix("--in")?.to_string(),
            };
            // An existing input stream is read whatever its input partitions: every subject.
            let input = match js.get_stream(streams.in_stream()).await {
                Ok(s) => s,
                Err(_) => ensure_input(&js, &streams, ends.in_partitions).await?,
            };
            let name = streams.in_stream();
            let counts = in_counts.clone();
            let messages = super::engine_source::open(&input, &name).await?;
            tracing::info!("reading stream {name} on {url} from its first message");
            feed = Some(tokio::spawn(async move {
                super::engine_source::feed(messages, name, tx, counts).await;
                drop(_client);
            }));
        }
        if let Some((url, rx)) = ends.output {
            let (client, js) = connect(&url.server).await?;
            let streams = StreamNames {
                prefix: url.require_prefix("--out")?.to_string(),
            };
            ensure_output(&js, &streams, ends.partitions).await?;
            tracing::info!(
                "publishing output on {}.out.<0..{}> ({url})",
                streams.prefix,
                ends.partitions
            );
            let counts = out_counts.clone();
            let partitions = ends.partitions;
            drain = Some(tokio::spawn(async move {
                let r = super::engine_sink::drain(js, streams, partitions, rx, counts).await;
                // Publishes were acknowledged: nothing is left in the client to flush.
                drop(client);
                r
            }));
        }
        anyhow::Ok((feed, drain))
    };
    let (feed, drain) = match setup.await {
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
    if let Some(feed) = feed {
        feed.abort();
    }
    let result = match drain {
        Some(drain) => match tokio::time::timeout(Duration::from_secs(60), drain).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(anyhow::anyhow!("the NATS output task failed: {e}")),
            Err(_) => Err(anyhow::anyhow!(
                "the output was not all acknowledged by NATS within 60 s after the stop"
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
