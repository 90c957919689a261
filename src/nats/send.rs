//! `bettong send --nats nats://HOST:PORT/PREFIX --framed-file F`: publish a framed corpus into
//! the input stream, many frames per message (at most `--batch-bytes`), spreading messages over
//! the input partitions round robin, with a bounded window of unacknowledged publishes.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bettong_engine::codec::frames;

use super::address::{NatsUrl, StreamNames};
use super::setup::{connect, ensure_input};

/// Publishes acknowledged at most this many behind.
const WINDOW: usize = 256;

/// What to send.
#[derive(Debug, Clone)]
pub struct NatsSendOptions {
    /// Where.
    pub url: NatsUrl,
    /// Input partitions of the stream.
    pub in_partitions: u32,
    /// The framed file.
    pub framed_file: PathBuf,
    /// Largest message payload (a frame larger than it goes alone).
    pub batch_bytes: usize,
    /// Times to send the file.
    pub repeat: u64,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct NatsSendReport {
    /// Messages published.
    pub messages: u64,
    /// Frames in them.
    pub frames: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Time taken, acks included.
    pub elapsed: Duration,
}

/// Cuts `framed` into payloads of whole frames, each at most `batch` bytes (or one frame).
/// A truncated tail is sent as it is, in a message of its own: the members reject it.
pub fn batches(framed: &[u8], batch: usize) -> Vec<(usize, usize, u64)> {
    let mut out = Vec::new();
    let (mut start, mut end, mut n) = (0, 0, 0u64);
    for f in frames(framed) {
        let Ok(f) = f else { break };
        if f.end() - start > batch && n > 0 {
            out.push((start, end, n));
            start = end;
            n = 0;
        }
        end = f.end();
        n += 1;
    }
    if n > 0 {
        out.push((start, end, n));
    }
    if end < framed.len() {
        out.push((end, framed.len(), 1));
    }
    out
}

/// Sends the file.
pub fn run(opts: &NatsSendOptions) -> anyhow::Result<NatsSendReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(send(opts))
}

async fn send(opts: &NatsSendOptions) -> anyhow::Result<NatsSendReport> {
    let prefix = opts.url.require_prefix("--nats")?;
    let framed = std::fs::read(&opts.framed_file)
        .with_context(|| format!("cannot read {}", opts.framed_file.display()))?;
    let (_client, js) = connect(&opts.url.server).await?;
    let streams = StreamNames {
        prefix: prefix.to_string(),
    };
    ensure_input(&js, &streams, opts.in_partitions).await?;
    let cuts = batches(&framed, opts.batch_bytes.max(1));
    let started = Instant::now();
    let mut pending = VecDeque::new();
    let mut report = NatsSendReport {
        messages: 0,
        frames: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
    };
    for _ in 0..opts.repeat {
        for &(a, b, n) in &cuts {
            let subject =
                streams.in_subject((report.messages % u64::from(opts.in_partitions)) as u32);
            let payload = bytes::Bytes::copy_from_slice(&framed[a..b]);
            let ack = js
                .publish(subject.clone(), payload)
                .await
                .with_context(|| format!("cannot publish to {subject}"))?;
            pending.push_back(ack);
            if pending.len() > WINDOW {
                pending
                    .pop_front()
                    .expect("not empty")
                    .await
                    .context("the input stream did not acknowledge a message")?;
            }
            report.messages += 1;
            report.frames += n;
            report.bytes += (b - a) as u64;
        }
    }
    for ack in pending {
        ack.await
            .context("the input stream did not acknowledge a message")?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_whole_frames_within_the_budget() {
        let mut framed = Vec::new();
        for w in ["aa", "bbb", "c", "dddd"] {
            bettong_engine::codec::encode_frame(w.as_bytes(), &mut framed);
        }
        let cuts = batches(&framed, 12);
        assert_eq!(cuts.iter().map(|c| c.2).sum::<u64>(), 4);
        for &(a, b, _) in &cuts {
            assert!(b - a <= 12 || frames(&framed[a..b]).count() == 1);
            assert!(frames(&framed[a..b]).all(|f| f.is_ok()));
        }
        assert_eq!(cuts.last().unwrap().1, framed.len());
        framed.extend_from_slice(&[0, 0, 0, 9, b'x']);
        let cuts = batches(&framed, 1 << 20);
        assert_eq!(cuts.len(), 2, "the truncated tail goes alone");
    }
}
