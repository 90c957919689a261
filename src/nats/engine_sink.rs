//! NATS as a sink of the engine: take the cores' output chunks from the engine's channel sink
//! (`bettong_engine::channel_sink`), sort their lines by key partition and publish them on the
//! output stream, many lines per message, on `PREFIX.out.<q>` with `q = fnv1a32(word) % P`.
//!
//! Output records are lines ([`Layout::Lines`]: a line's key is what precedes its first ` => `,
//! word count's `word => count`, or the whole line) or frames ([`Layout::Frames`]: a 4-byte
//! length, then the payload, whose key is a byte range of the payload; Market Spread's results,
//! keyed by symbol). Each key partition has its own buffer, published once it holds [`FLUSH_BYTES`] or when
//! no more output is queued; a record is never split across messages. Each subject has at most
//! one publish waiting for its acknowledgement (so at most `P` in all): the next one on that
//! subject waits for it, the engine's queue fills, and the cores stop reading (backpressure,
//! nothing unbounded). A publish that is not acknowledged (the server restarting) is sent again
//! until it is, before anything later on its subject, so a subject's order is kept; its lines
//! may land twice (at-least-once output).
//!
//! It runs on the bridge's tokio runtime ([`super::standalone`]), never on an engine core.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bettong_engine::channel_sink::ChunkReceiver;
use bytes::Bytes;

use super::address::StreamNames;
use super::partition::Modulo;

/// A key partition's buffer is published once it holds this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// What the sink has published.
#[derive(Debug, Default)]
pub struct SinkCounts {
    /// Output messages acknowledged.
    pub messages: AtomicU64,
    /// Records (lines or frames) in them.
    pub lines: AtomicU64,
    /// Publishes sent again after a failure.
    pub retries: AtomicU64,
}

/// The key of an output line: what precedes ` => `, or the whole line.
pub fn line_key(line: &[u8]) -> &[u8] {
    line.windows(4)
        .position(|w| w == b" => ")
        .map_or(line, |i| &line[..i])
}

/// How the output divides into records, and each record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `\n`-ended lines keyed by [`line_key`].
    Lines,
    /// Frames (4-byte big-endian length, payload) keyed by payload bytes `key.0..key.1` (the
    /// whole payload where it is shorter).
    Frames {
        /// The key's byte range in the payload.
        key: (usize, usize),
    },
}

/// Records sorted into per-key-partition buffers.
pub struct Partitioned {
    bufs: Vec<Vec<u8>>,
    lines: Vec<u64>,
    layout: Layout,
}

impl Partitioned {
    /// Buffers for `partitions` key partitions of records laid out as `layout`.
    pub fn new(partitions: u32, layout: Layout) -> Self {
        let p = partitions.max(1) as usize;
        Partitioned {
            bufs: vec![Vec::new(); p],
            lines: vec![0; p],
            layout,
        }
    }

    /// Appends every record of `chunk` (whole records, as the engine hands them over) to its
    /// partition's buffer.
    pub fn add(&mut self, chunk: &[u8]) {
        match self.layout {
            Layout::Lines => self.add_lines(chunk),
            Layout::Frames { key } => self.add_frames(chunk, key),
        }
    }

    /// Appends every frame of `chunk`; an incomplete tail (never made by the engine) is dropped.
    fn add_frames(&mut self, chunk: &[u8], (from, to): (usize, usize)) {
        let p = Modulo::new(self.bufs.len() as u32);
        for frame in bettong_engine::codec::frames(chunk) {
            let Ok(f) = frame else { break };
            let payload = f.payload;
            let key = &payload[from.min(payload.len())..to.min(payload.len())];
            let q = p.partition(key) as usize;
            self.bufs[q].extend_from_slice(&chunk[f.offset..f.end()]);
            self.lines[q] += 1;
        }
    }

    /// Appends every `\n`-ended line of `chunk` (a last line without `\n` gets one).
    fn add_lines(&mut self, chunk: &[u8]) {
        let p = Modulo::new(self.bufs.len() as u32);
        for line in chunk.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            if body.is_empty() {
                continue;
            }
            let q = p.partition(line_key(body)) as usize;
            self.bufs[q].extend_from_slice(body);
            self.bufs[q].push(b'\n');
            self.lines[q] += 1;
        }
    }

    /// Takes the buffers holding at least `min` bytes (`min` 1: every non-empty one), as
    /// (partition, payload, lines).
    pub fn take(&mut self, min: usize) -> Vec<(u32, Vec<u8>, u64)> {
        let mut out = Vec::new();
        for (q, buf) in self.bufs.iter_mut().enumerate() {
            if !buf.is_empty() && buf.len() >= min {
                out.push((
                    q as u32,
                    std::mem::take(buf),
                    std::mem::take(&mut self.lines[q]),
                ));
            }
        }
        out
    }
}

/// One publish not yet acknowledged, kept to be sent again.
struct Pending {
    subject: String,
    payload: Bytes,
    lines: u64,
    ack: PublishAckFuture,
}

/// Publishes the chunks of `rx`, records laid out as `layout`, until every core has finished
/// its output, then waits for the last acknowledgements.
pub async fn drain(
    js: jetstream::Context,
    streams: StreamNames,
    partitions: u32,
    layout: Layout,
    rx: ChunkReceiver,
    counts: Arc<SinkCounts>,
) -> anyhow::Result<()> {
    let mut parts = Partitioned::new(partitions, layout);
    // Per key partition, its publish waiting for an acknowledgement.
    let mut waiting: Vec<Option<Pending>> = (0..partitions.max(1)).map(|_| None).collect();
    loop {
        let chunk = match rx.try_recv() {
            Some(c) => Some(c),
            None => {
                // Nothing queued: publish what is buffered before waiting for more.
                for (q, payload, lines) in parts.take(1) {
                    send(&js, &streams, q, payload, lines, &mut waiting, &counts).await?;
                }
                rx.recv().await
            }
        };
        let Some(chunk) = chunk else { break };
        parts.add(&chunk.bytes);
        for (q, payload, lines) in parts.take(FLUSH_BYTES) {
            send(&js, &streams, q, payload, lines, &mut waiting, &counts).await?;
        }
    }
    for (q, payload, lines) in parts.take(1) {
        send(&js, &streams, q, payload, lines, &mut waiting, &counts).await?;
    }
    for p in waiting.iter_mut().filter_map(Option::take) {
        settle(&js, p, &counts).await?;
    }
    Ok(())
}

/// Publishes one payload on partition `q`'s subject, once the previous one there is settled.
async fn send(
    js: &jetstream::Context,
    streams: &StreamNames,
    q: u32,
    payload: Vec<u8>,
    lines: u64,
    waiting: &mut [Option<Pending>],
    counts: &SinkCounts,
) -> anyhow::Result<()> {
    if let Some(p) = waiting[q as usize].take() {
        settle(js, p, counts).await?;
    }
    let subject = streams.out_subject(q);
    let payload = Bytes::from(payload);
    let ack = publish(js, &subject, payload.clone(), counts).await?;
    waiting[q as usize] = Some(Pending {
        subject,
        payload,
        lines,
        ack,
    });
    Ok(())
}

/// Publishes, retrying with a capped backoff while the client refuses (it buffers while
/// disconnected, and refuses only when that buffer is full).
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payload: Bytes,
    counts: &SinkCounts,
) -> anyhow::Result<PublishAckFuture> {
    let mut backoff = Duration::from_millis(20);
    let errors = bettong_engine::LogLimit::default();
    loop {
        match js.publish(subject.to_string(), payload.clone()).await {
            Ok(ack) => return Ok(ack),
            Err(e) => {
                counts.retries.fetch_add(1, Relaxed);
                if let Some(held_back) = errors.allow() {
                    tracing::warn!(
                        "cannot publish output to {subject}: {e}; retrying in {backoff:?}{}",
                        bettong_engine::LogLimit::note(held_back)
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits for a publish's acknowledgement, publishing it again until one comes.
async fn settle(
    js: &jetstream::Context,
    mut p: Pending,
    counts: &SinkCounts,
) -> anyhow::Result<()> {
    loop {
        match p.ack.await {
            Ok(_) => {
                counts.messages.fetch_add(1, Relaxed);
                counts.lines.fetch_add(p.lines, Relaxed);
                return Ok(());
            }
            Err(e) => {
                counts.retries.fetch_add(1, Relaxed);
                tracing::warn!(
                    "output message on {} ({} lines) not acknowledged: {e}; publishing it again \
                     (at-least-once: its lines may appear twice)",
                    p.subject,
                    p.lines
                );
                p.ack = publish(js, &p.subject, p.payload.clone(), counts).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_their_words_partition_whole() {
        assert_eq!(line_key(b"rose => 3"), b"rose");
        assert_eq!(line_key(b"no arrow"), b"no arrow");
        let mut p = Partitioned::new(8, Layout::Lines);
        p.add(b"rose => 1\nis => 1\nrose => 2\nlast => 1");
        let taken = p.take(1);
        let total: u64 = taken.iter().map(|t| t.2).sum();
        assert_eq!(total, 4);
        for (q, payload, _) in &taken {
            for line in std::str::from_utf8(payload).unwrap().lines() {
                let word = line.split(" => ").next().unwrap();
                assert_eq!(super::super::partition::key_partition(word, 8), *q);
            }
            assert!(payload.ends_with(b"\n"));
        }
        let rose = super::super::partition::key_partition("rose", 8);
        let (_, payload, _) = taken.iter().find(|t| t.0 == rose).unwrap();
        let text = String::from_utf8_lossy(payload);
        let at1 = text.find("rose => 1").unwrap();
        let at2 = text.find("rose => 2").unwrap();
        assert!(at1 < at2, "a word's lines keep their order: {text}");
        assert!(p.take(1).is_empty());
    }

    #[test]
    fn frames_go_to_their_keys_partition_whole() {
        let mut chunk = Vec::new();
        for payload in [&b"..IBM x"[..], b"..AAPLy", b"..IBM z", b"."] {
            bettong_engine::codec::encode_frame(payload, &mut chunk);
        }
        let mut p = Partitioned::new(4, Layout::Frames { key: (2, 6) });
        p.add(&chunk);
        let taken = p.take(1);
        assert_eq!(taken.iter().map(|t| t.2).sum::<u64>(), 4);
        let ibm = (super::super::partition::fnv1a32(b"IBM ") % 4) as usize;
        let (_, payload, n) = taken.iter().find(|t| t.0 as usize == ibm).unwrap();
        let frames: Vec<&[u8]> = bettong_engine::codec::frames(payload)
            .map(|f| f.unwrap().payload)
            .collect();
        assert!(*n >= 2);
        let at_x = frames.iter().position(|f| *f == b"..IBM x").unwrap();
        let at_z = frames.iter().position(|f| *f == b"..IBM z").unwrap();
        assert!(at_x < at_z, "a key's frames keep their order");
    }

    #[test]
    fn only_full_buffers_are_taken_before_the_end() {
        let mut p = Partitioned::new(1, Layout::Lines);
        p.add(b"a => 1\n");
        assert!(p.take(FLUSH_BYTES).is_empty());
        assert_eq!(p.take(1).len(), 1);
    }
}
