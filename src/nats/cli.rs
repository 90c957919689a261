//! The command-line side of the NATS cluster: the flags `serve`, `send` and `receive` take for
//! `nats://` URLs (flattened into their argument structs), `bettong cluster create|status`, and
//! the functions `main` calls for them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::address::{valid_name, NatsUrl};
use super::setup::JobSettings;

/// Default key partitions `P`.
pub const DEFAULT_PARTITIONS: u32 = 64;
/// Default input partitions `I`.
pub const DEFAULT_IN_PARTITIONS: u32 = 8;

/// `serve`'s flags for a cluster member (`--in nats://…`).
#[derive(Debug, Args, Default, Clone)]
pub struct NatsServeArgs {
    /// With --in nats://HOST:PORT/PREFIX: the cluster job this process is a member of
    /// (letters, digits, '-', '_').
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// With --job: key partitions of the job, fixed for its life; without --job, of a
    /// nats:// --out (its subjects PREFIX.out.0..P) [default: 64].
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: Option<u32>,
    /// Input partitions (subjects PREFIX.in.0..I) of the job, or of a nats:// --in stream
    /// that does not exist yet [default: 8].
    #[arg(long, value_name = "I", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_partitions: Option<u32>,
    /// With --job: how long a member's lease on its partitions lasts without renewal; a member
    /// killed with kill -9 loses its partitions after at most this [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = crate::cli::parse_duration)]
    pub lease_ttl: Option<Duration>,
}

/// `send`'s flags for publishing into a NATS input stream.
#[derive(Debug, Args, Default, Clone)]
pub struct NatsSendArgs {
    /// Publish --framed-file into the input stream of nats://HOST:PORT/PREFIX instead of TCP.
    #[arg(long, value_name = "nats://HOST:PORT/PREFIX", conflicts_with = "host")]
    pub nats: Option<NatsUrl>,
    /// With --nats: input partitions to spread the messages over [default: 8].
    #[arg(long = "in-partitions", value_name = "I", requires = "nats",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub send_in_partitions: Option<u32>,
    /// With --nats: largest message payload; whole frames are packed up to it (a larger frame
    /// goes alone) [default: 16384].
    #[arg(long, value_name = "BYTES", requires = "nats")]
    pub batch_bytes: Option<usize>,
}

/// `receive`'s flags for reading a NATS output stream.
#[derive(Debug, Args, Default, Clone)]
pub struct NatsReceiveArgs {
    /// Read the output stream of nats://HOST:PORT/PREFIX from its start instead of listening.
    #[arg(
        long,
        value_name = "nats://HOST:PORT/PREFIX",
        conflicts_with = "listen"
    )]
    pub nats: Option<NatsUrl>,
    /// With --nats --validate: the expected counts, a JSON object word -> count or
    /// `word<TAB>count` lines (gen_corpus.py's .counts file);
    /// every word's final value must equal it.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub expect_counts: Option<PathBuf>,
    /// With --nats --validate: a repeated value fails the check (true after clean joins and
    /// leaves only; after a crash repeats are allowed).
    #[arg(long, requires = "nats")]
    pub no_repeats: bool,
    /// With --nats: read the input stream PREFIX_in instead and count its frames (the broker's
    /// own ceiling with the same batching, no Bettong in between).
    #[arg(long, requires = "nats", conflicts_with = "validate")]
    pub from_input: bool,
}

/// `bettong cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a job's streams and buckets ahead of any member.
    Create(ClusterCreateArgs),
    /// Members, partition owners, committed checkpoints and lag of a job.
    Status(ClusterStatusArgs),
}

/// `bettong cluster create`.
#[derive(Debug, Args)]
pub struct ClusterCreateArgs {
    /// nats://HOST:PORT/PREFIX.
    #[arg(long, value_name = "nats://HOST:PORT/PREFIX")]
    pub nats: NatsUrl,
    /// The job's name.
    #[arg(long)]
    pub job: String,
    /// Key partitions.
    #[arg(long, default_value_t = DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
    /// Input partitions.
    #[arg(long, default_value_t = DEFAULT_IN_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub in_partitions: u32,
}

/// `bettong cluster status`.
#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    /// nats://HOST:PORT (a prefix, if given, is ignored: the job knows its own).
    #[arg(long, value_name = "nats://HOST:PORT")]
    pub nats: NatsUrl,
    /// The job's name.
    #[arg(long)]
    pub job: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn check_job(job: &str) -> anyhow::Result<()> {
    if !valid_name(job) {
        bail!("--job {job:?}: a job name may hold only letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Whether `serve --in` names a NATS stream.
pub fn is_nats(input: &str) -> bool {
    input.starts_with("nats://")
}

/// `serve` with `--in nats://…`: one member of the job.
pub fn serve_member(a: &crate::cli::ServeArgs) -> anyhow::Result<()> {
    let url: NatsUrl = a.input.parse().map_err(anyhow::Error::msg)?;
    let prefix = url.require_prefix("--in")?.to_string();
    if a.output != a.input {
        bail!(
            "--out {} must be the same nats://HOST:PORT/PREFIX as --in {}: a cluster job reads \
             PREFIX_in and writes PREFIX_out (a NATS input with another kind of output is not \
             supported)",
            a.output,
            a.input
        );
    }
    if a.resilience_dir.is_some() || a.start_empty_if_unreadable {
        bail!(
            "--resilience-dir does not apply to a NATS job: its checkpoints go to the job's \
             Object Store in NATS"
        );
    }
    let n = &a.nats;
    let job = n.job.clone().context(
        "--in nats://… needs --job NAME: every member of a job is started with the same --job",
    )?;
    check_job(&job)?;
    let opts = super::member::MemberOptions {
        server: url.server,
        job,
        settings: JobSettings {
            prefix,
            partitions: n.partitions.unwrap_or(DEFAULT_PARTITIONS),
            in_partitions: n.in_partitions.unwrap_or(DEFAULT_IN_PARTITIONS),
        },
        cores: a.cores.unwrap_or(1),
        cpus: a.cpus.clone().map(|c| c.0),
        checkpoint_interval: a.checkpoint_interval,
        lease_ttl: n.lease_ttl.unwrap_or(Duration::from_secs(5)),
        max_frame: a.max_frame,
    };
    super::member::serve(&opts)
}

/// Fails if `serve` was given cluster flags without `--in nats://…`.
pub fn refuse_cluster_flags(a: &NatsServeArgs) -> anyhow::Result<()> {
    if a.job.is_some()
        || a.partitions.is_some()
        || a.in_partitions.is_some()
        || a.lease_ttl.is_some()
    {
        bail!("--job, --partitions, --in-partitions and --lease-ttl need --in nats://HOST:PORT/PREFIX");
    }
    Ok(())
}

/// `send --nats`.
pub fn send(a: &crate::cli::SendArgs) -> anyhow::Result<()> {
    let n = &a.nats;
    let url = n.nats.clone().expect("called with --nats");
    if a.file.is_some()
        || a.messages.is_some()
        || a.interval.is_some()
        || a.rate != 0
        || a.connections != 1
    {
        bail!(
            "send --nats takes --framed-file, --repeat, --in-partitions and --batch-bytes; \
             --file, --messages, --interval, --rate and --connections are for TCP"
        );
    }
    let framed_file = a
        .framed_file
        .clone()
        .context("send --nats needs --framed-file FILE")?;
    let opts = super::send::NatsSendOptions {
        url,
        in_partitions: n.send_in_partitions.unwrap_or(DEFAULT_IN_PARTITIONS),
        framed_file,
        batch_bytes: n.batch_bytes.unwrap_or(16 * 1024),
        repeat: a.repeat.max(1),
    };
    let r = super::send::run(&opts)?;
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{}",
        serde_json::json!({"event": "sent", "messages": r.messages, "frames": r.frames,
            "bytes": r.bytes, "seconds": secs, "messages_per_sec": r.messages as f64 / secs,
            "frames_per_sec": r.frames as f64 / secs})
    );
    eprintln!(
        "sent {} messages ({} frames, {} bytes) to {} in {:.2?}: {:.0} msgs/s",
        r.messages,
        r.frames,
        r.bytes,
        opts.url,
        r.elapsed,
        r.messages as f64 / secs
    );
    Ok(())
}

/// `receive --nats`.
pub fn receive(a: &crate::cli::ReceiveArgs) -> anyhow::Result<()> {
    let n = &a.nats;
    let url = n.nats.clone().expect("called with --nats");
    if a.market_spread || a.no_write {
        bail!("receive --nats reads word-count lines and writes none: drop --market-spread and --no-write");
    }
    let expect_counts = match &n.expect_counts {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --expect-counts {}", p.display()))?;
            Some(parse_counts(&text).with_context(|| {
                format!(
                    "--expect-counts {}: expected a JSON object word -> count, or lines \
                     `word<TAB>count` (gen_corpus.py's .counts file)",
                    p.display()
                )
            })?)
        }
    };
    let opts = super::receive::NatsReceiveOptions {
        url,
        validate: a.validate,
        idle_exit: Duration::from_secs_f64(a.idle_exit.unwrap_or(5.0)),
        expect_lines: a.expect_lines,
        expect_counts,
        no_repeats: n.no_repeats,
        from_input: n.from_input,
    };
    let report = super::receive::run(&opts)?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "received {} lines in {} messages over {:.2} s: {:.0} lines/s",
        report.lines, report.messages, report.seconds, report.lines_per_sec
    );
    report.check(&opts)
}

/// Expected counts: a JSON object word -> count, or `word<TAB>count` lines.
pub fn parse_counts(text: &str) -> anyhow::Result<HashMap<String, u64>> {
    if text.trim_start().starts_with('{') {
        return Ok(serde_json::from_str(text)?);
    }
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (w, c) = l
                .rsplit_once('\t')
                .with_context(|| format!("line {l:?} has no tab"))?;
            Ok((w.to_string(), c.trim().parse()?))
        })
        .collect()
}

/// `bettong cluster …`.
pub fn cluster(c: &ClusterCommand) -> anyhow::Result<()> {
    match c {
        ClusterCommand::Create(a) => {
            check_job(&a.job)?;
            let prefix = a.nats.require_prefix("--nats")?.to_string();
            let settings = JobSettings {
                prefix,
                partitions: a.partitions,
                in_partitions: a.in_partitions,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (_c, js) = super::setup::connect(&a.nats.server).await?;
                super::setup::ensure_job(&js, &a.job, settings).await
            })?;
            eprintln!("job {} ready on {}", a.job, a.nats);
            Ok(())
        }
        ClusterCommand::Status(a) => {
            check_job(&a.job)?;
            let s = super::status::status(&a.nats.server, &a.job)?;
            if a.json {
                println!("{s}");
            } else {
                print!("{}", super::status::human(&s));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_tsv_counts() {
        let j = parse_counts(r#"{"a": 2, "rose": 1}"#).unwrap();
        assert_eq!(j["a"], 2);
        let t = parse_counts("a\t2\nrose\t1\n").unwrap();
        assert_eq!(t, j);
        assert!(parse_counts("a 2\n").is_err());
    }
}
