//! `bettong receive --nats nats://HOST:PORT/PREFIX [--validate]`: read the output stream from
//! the start, report lines/s, and with `--validate` check `spec/cluster.md`'s output
//! guarantees: every word's values cover `1..N` with no gap, first appearing in increasing
//! order; repeats are counted (allowed after a crash, not after a clean join or leave); and no
//! message of a key partition comes from an older epoch than one already seen on its subject
//! (a fenced owner publishing).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use serde::Serialize;

use super::address::{NatsUrl, StreamNames};
use super::counter::EPOCH_HEADER;
use super::setup::connect;

/// What to read.
#[derive(Debug, Clone)]
pub struct NatsReceiveOptions {
    /// Where.
    pub url: NatsUrl,
    /// Check the guarantees.
    pub validate: bool,
    /// Stop once the stream has been idle this long (after its last message).
    pub idle_exit: Duration,
    /// Stop once this many lines were read.
    pub expect_lines: Option<u64>,
    /// Word → final count: with `validate`, every word's last value must be it.
    pub expect_counts: Option<HashMap<String, u64>>,
    /// With `validate`: a repeated value is a failure (after clean joins and leaves only).
    pub no_repeats: bool,
    /// Read the input stream instead and count its frames as lines: the broker's own ceiling
    /// with the same batching, no Bettong in between.
    pub from_input: bool,
}

/// What was read, and what the checks found.
#[derive(Debug, Default, Serialize)]
pub struct NatsReceiveReport {
    /// Output messages.
    pub messages: u64,
    /// Lines.
    pub lines: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Seconds from the first message to the last.
    pub seconds: f64,
    /// Lines per second over that time.
    pub lines_per_sec: f64,
    /// Distinct words.
    pub words: u64,
    /// Values seen again (at-least-once output).
    pub repeats: u64,
    /// Values that skipped ahead of the word's highest value + 1 (a gap): must be 0.
    pub gaps: u64,
    /// Lines that are not `word => count`: must be 0.
    pub malformed: u64,
    /// Messages from an older epoch than one already seen on their subject: must be 0.
    pub stale_epoch_messages: u64,
    /// Words whose final value differs from `expect_counts` (or that are missing or extra).
    pub count_mismatches: u64,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl NatsReceiveReport {
    /// An error when a checked guarantee failed.
    pub fn check(&self, opts: &NatsReceiveOptions) -> anyhow::Result<()> {
        let repeats = if opts.no_repeats { self.repeats } else { 0 };
        if opts.validate
            && (self.gaps
                + self.malformed
                + self.stale_epoch_messages
                + self.count_mismatches
                + repeats)
                > 0
        {
            anyhow::bail!(
                "output check failed: {} gaps, {} malformed lines, {} stale-epoch messages, {} \
                 count mismatches, {} repeats{}; first problems: {}",
                self.gaps,
                self.malformed,
                self.stale_epoch_messages,
                self.count_mismatches,
                self.repeats,
                if opts.no_repeats {
                    " (none allowed)"
                } else {
                    " (allowed)"
                },
                self.problems.join("; ")
            );
        }
        Ok(())
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < 10 {
            self.problems.push(p);
        }
    }
}

/// The per-word and per-subject state of the output checks.
#[derive(Debug, Default)]
pub struct OutputCheck {
    /// Per word, its highest value so far.
    pub highest: HashMap<String, u64>,
    /// Per subject, the highest epoch so far.
    epochs: HashMap<String, u64>,
}

impl OutputCheck {
    /// Checks one output message: its epoch (if it has one) against its subject's, and each of
    /// its lines against its word's values so far.
    pub fn message(
        &mut self,
        report: &mut NatsReceiveReport,
        subject: &str,
        epoch: Option<u64>,
        text: &str,
    ) {
        if let Some(epoch) = epoch {
            let seen = self.epochs.entry(subject.to_string()).or_insert(0);
            if epoch < *seen {
                report.stale_epoch_messages += 1;
                let seen = *seen;
                report.problem(format!(
                    "a message of epoch {epoch} on {subject} after one of epoch {seen}"
                ));
            }
            let seen = self.epochs.entry(subject.to_string()).or_insert(0);
            *seen = (*seen).max(epoch);
        }
        for line in text.lines() {
            report.lines += 1;
            let parsed = line
                .rsplit_once(" => ")
                .and_then(|(w, c)| c.parse::<u64>().ok().map(|c| (w, c)));
            let Some((word, value)) = parsed else {
                report.malformed += 1;
                report.problem(format!("malformed line {line:?}"));
                continue;
            };
            let top = self.highest.entry(word.to_string()).or_insert(0);
            if value <= *top {
                report.repeats += 1;
            } else if value == *top + 1 {
                *top = value;
            } else {
                let was = *top;
                *top = value;
                report.gaps += 1;
                report.problem(format!("{word:?} went from {was} to {value}"));
            }
        }
    }
}

/// Reads the output stream.
pub fn run(opts: &NatsReceiveOptions) -> anyhow::Result<NatsReceiveReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(receive(opts))
}

async fn receive(opts: &NatsReceiveOptions) -> anyhow::Result<NatsReceiveReport> {
    let prefix = opts.url.require_prefix("--nats")?;
    let streams = StreamNames {
        prefix: prefix.to_string(),
    };
    let (_client, js) = connect(&opts.url.server).await?;
    let (name, filter) = if opts.from_input {
        (streams.in_stream(), format!("{prefix}.in.*"))
    } else {
        (streams.out_stream(), format!("{prefix}.out.*"))
    };
    let stream = js.get_stream(&name).await.with_context(|| {
        format!(
            "no stream {name}: start a member, `bettong send` or `bettong cluster create` first"
        )
    })?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?;
    let mut report = NatsReceiveReport::default();
    let mut check = OutputCheck::default();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        if opts.expect_lines.is_some_and(|n| report.lines >= n) {
            break;
        }
        let next = match tokio::time::timeout(opts.idle_exit, messages.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(m)) => m.map_err(|e| anyhow::anyhow!("reading the output failed: {e}"))?,
        };
        last = Instant::now();
        first.get_or_insert(last);
        report.messages += 1;
        report.bytes += next.payload.len() as u64;
        if opts.from_input {
            report.lines += bettong_engine::codec::frames(&next.payload)
                .take_while(Result::is_ok)
                .count() as u64;
            continue;
        }
        let epoch = next
            .headers
            .as_ref()
            .and_then(|h| h.get(EPOCH_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        let text = String::from_utf8_lossy(&next.payload);
        if opts.validate {
            check.message(&mut report, &next.subject, epoch, &text);
        } else {
            report.lines += text.lines().count() as u64;
        }
    }
    if let Some(t0) = first {
        report.seconds = last.duration_since(t0).as_secs_f64();
        report.lines_per_sec = report.lines as f64 / report.seconds.max(1e-9);
    }
    let highest = check.highest;
    report.words = highest.len() as u64;
    if let (true, Some(expected)) = (opts.validate, &opts.expect_counts) {
        for (word, want) in expected {
            let got = highest.get(word).copied().unwrap_or(0);
            if got != *want {
                report.count_mismatches += 1;
                report.problem(format!("{word:?}: final count {got}, expected {want}"));
            }
        }
        for word in highest.keys().filter(|w| !expected.contains_key(*w)) {
            report.count_mismatches += 1;
            report.problem(format!(
                "{word:?} was counted but is not in the expected counts"
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_repeats_and_catches_gaps_stale_epochs_and_bad_lines() {
        let mut check = OutputCheck::default();
        let mut r = NatsReceiveReport::default();
        check.message(&mut r, "wc.out.1", Some(1), "a => 1\nb => 1\na => 2\n");
        check.message(&mut r, "wc.out.1", Some(2), "a => 2\na => 3\n");
        assert_eq!(
            (r.lines, r.repeats, r.gaps, r.stale_epoch_messages),
            (5, 1, 0, 0)
        );
        check.message(&mut r, "wc.out.1", Some(1), "b => 2\n");
        assert_eq!(
            r.stale_epoch_messages, 1,
            "an older epoch after a newer one"
        );
        check.message(&mut r, "wc.out.2", Some(1), "c => 2\nnot a line\n");
        assert_eq!(
            (r.gaps, r.malformed),
            (1, 1),
            "c skipped 1; a line without ' => '"
        );
        assert_eq!(check.highest["a"], 3);
        let opts = NatsReceiveOptions {
            url: "nats://h:1/wc".parse().unwrap(),
            validate: true,
            idle_exit: Duration::from_secs(1),
            expect_lines: None,
            expect_counts: None,
            no_repeats: false,
            from_input: false,
        };
        assert!(r.check(&opts).is_err());
        assert!(NatsReceiveReport::default().check(&opts).is_ok());
    }
}
