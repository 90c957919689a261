//! The file source: a framed file (4-byte big-endian length, then the payload, repeated, like
//! `gen_corpus.py`'s output) read by every core, each core its own byte ranges.
//!
//! Its read position is what makes it replayable. At start the file is split at frame
//! boundaries into one range per core ([`plan`]). Each core reads its ranges in order, through
//! the same [`read_step`] as a TCP connection (wait for sink room, ingest, log rejects, flush),
//! and keeps its position current after every read; a checkpoint records, for every range, the offset up to which frames were read
//! before the cut. On restart the ranges not yet read are dealt out again, split further if there
//! are more cores than ranges, so a checkpoint taken on N cores resumes on M. A file that grew
//! since the checkpoint (a log being appended to) has its new frames read as one more range.
//!
//! Without checkpoints the file is simply read once; either way the engine stops by itself when
//! every core has read its ranges.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::BufferedFile;

use crate::checkpoint::SourceMark;
use crate::codec::{frame_size, FrameDecoder, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
use crate::metrics::CoreMetrics;
use crate::pipeline::App;
use crate::read_step::read_step;
use crate::worker::Worker;
use crate::Error;

/// Settings of the file source.
///
/// ```
/// use bettong_engine::FileSourceConfig;
/// let cfg = FileSourceConfig::new("/tmp/corpus.bin");
/// assert_eq!(cfg.read_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// The framed file.
    pub path: PathBuf,
    /// Largest accepted payload; a larger frame is skipped (logged, counted as rejected).
    pub max_frame: usize,
    /// Bytes read (and then flushed through the engine) per step.
    pub read_bytes: usize,
}

impl FileSourceConfig {
    /// Default settings for reading `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSourceConfig {
            path: path.into(),
            max_frame: DEFAULT_MAX_FRAME,
            read_bytes: 64 * 1024,
        }
    }
}

/// Which ranges of the file each core reads.
#[derive(Debug, Clone)]
pub(crate) struct FilePlan {
    /// The file, as an absolute path without symlinks (its identity across restarts).
    pub path: PathBuf,
    /// Bytes of whole frames in the file: the end of the last range.
    pub len: u64,
    /// The [`fingerprint`] of the file's first `len` bytes (its identity across restarts,
    /// with `path`).
    pub fingerprint: u64,
    /// `[start, end)` ranges per core, in reading order.
    pub per_core: Vec<Vec<(u64, u64)>>,
}

impl FilePlan {
    /// Bytes still to be read.
    pub(crate) fn remaining(&self) -> u64 {
        self.per_core.iter().flatten().map(|(a, b)| b - a).sum()
    }
}

/// Bytes hashed at each end of a file's [`fingerprint`].
const FINGERPRINT_EDGE: u64 = 4096;

/// A fingerprint of the first `len` bytes of `file`: FNV-1a (64 bits) over `len`, the first
/// 4 KiB and the last 4 KiB before `len`. A file replaced by another one of the same length
/// almost surely differs in one of them; a file appended to keeps the fingerprint of its first
/// `len` bytes.
pub(crate) fn fingerprint(file: &File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&len.to_le_bytes());
    let head = len.min(FINGERPRINT_EDGE);
    let tail_at = len.saturating_sub(FINGERPRINT_EDGE).max(head);
    let mut buf = vec![0u8; head as usize];
    file.read_exact_at(&mut buf, 0)?;
    eat(&buf);
    buf.resize((len - tail_at) as usize, 0);
    file.read_exact_at(&mut buf, tail_at)?;
    eat(&buf);
    Ok(h)
}

/// Plans which ranges each of `cores` cores reads: the whole file split evenly, or, when
/// resuming, the ranges the checkpoint left unread (plus whatever was appended since).
pub(crate) fn plan(
    cfg: &FileSourceConfig,
    cores: usize,
    resume: Option<&SourceMark>,
) -> Result<FilePlan, Error> {
    let shown = cfg.path.display().to_string();
    let io = |what: &str, e: io::Error| Error::Io {
        what: format!("{what} file:{shown}"),
        source: e,
    };
    let path = std::fs::canonicalize(&cfg.path).map_err(|e| io("cannot find", e))?;
    let file = File::open(&path).map_err(|e| io("cannot open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io("cannot read the size of", e))?
        .len();
    let mut walker = Walker::new(file, &path, file_len);
    let (len, mut ranges) = match resume {
        Some(SourceMark::Unreplayable { kind }) => {
            return Err(Error::Io {
                what: format!("resuming file:{shown}"),
                source: io::Error::other(format!(
                    "the checkpoint was taken by a run reading {kind}, which records no file \
                     read position: reading the file from its start would count it again on \
                     top of the restored state; use another checkpoint directory"
                )),
            });
        }
        Some(SourceMark::File {
            path: old,
            len: old_len,
            fingerprint: old_fingerprint,
            ranges,
        }) => {
            if *old != path {
                return Err(Error::Io {
                    what: format!("resuming file:{shown}"),
                    source: io::Error::other(format!(
                        "the checkpoint was taken reading {}, not {}: resume with the same \
                         input file, or start over with an empty checkpoint directory",
                        old.display(),
                        path.display()
                    )),
                });
            }
            if file_len < *old_len {
                return Err(Error::Io {
                    what: format!("resuming file:{shown}"),
                    source: io::Error::other(format!(
                        "the file has {file_len} bytes but had {old_len} when the checkpoint \
                         was taken: it was truncated or replaced, so the read positions in the \
                         checkpoint mean nothing"
                    )),
                });
            }
            let file = walker.r.get_ref();
            match old_fingerprint {
                Some(old_fp) => {
                    let now = fingerprint(file, *old_len).map_err(|e| io("cannot read", e))?;
                    if now != *old_fp {
                        return Err(Error::Io {
                            what: format!("resuming file:{shown}"),
                            source: io::Error::other(format!(
                                "its first {old_len} bytes are not those the checkpoint was \
                                 taken on (content fingerprint {now:016x}, the checkpoint \
                                 recorded {old_fp:016x}): the file was replaced, so the read \
                                 positions in the checkpoint mean nothing; resume with the \
                                 original file, or start over with an empty checkpoint directory"
                            )),
                        });
                    }
                }
                None => tracing::warn!(
                    "the checkpoint predates content fingerprints: only the path and length of \
                     file:{shown} are checked before resuming it"
                ),
            }
            let mut ranges = ranges.clone();
            let end = walker
                .whole_frames_end(*old_len)
                .map_err(|e| io("cannot read", e))?;
            if end > *old_len {
                tracing::info!(
                    "file:{shown} grew by {} bytes of whole frames since the checkpoint; they \
                     are read too",
                    end - old_len
                );
                ranges.push((*old_len, end));
            }
            (end, ranges)
        }
        None => {
            let (end, cuts) = walker
                .split(0, file_len, cores)
                .map_err(|e| io("cannot read", e))?;
            let mut ranges = Vec::with_capacity(cores);
            let mut start = 0;
            for c in cuts.into_iter().chain([end]) {
                if c > start {
                    ranges.push((start, c));
                    start = c;
                }
            }
            (end, ranges)
        }
    };
    // More cores than ranges left: split the largest ranges at frame boundaries.
    let mut unsplittable = Vec::new();
    while ranges.len() + unsplittable.len() < cores && !ranges.is_empty() {
        let (i, _) = ranges
            .iter()
            .enumerate()
            .max_by_key(|(_, (a, b))| b - a)
            .expect("ranges is not empty");
        let (a, b) = ranges.swap_remove(i);
        let mid = walker
            .boundary_at_or_after(a, a + (b - a) / 2, b)
            .map_err(|e| io("cannot read", e))?;
        if mid > a && mid < b {
            ranges.push((a, mid));
            ranges.push((mid, b));
        } else {
            unsplittable.push((a, b));
        }
    }
    ranges.extend(unsplittable);
    // Deal the ranges out, largest first, each to the core with the fewest bytes so far.
    ranges.sort_unstable_by_key(|&(a, b)| std::cmp::Reverse((b - a, a)));
    let mut per_core: Vec<Vec<(u64, u64)>> = vec![Vec::new(); cores];
    let mut load = vec![0u64; cores];
    for r in ranges {
        let c = (0..cores).min_by_key(|&c| (load[c], c)).unwrap_or(0);
        load[c] += r.1 - r.0;
        per_core[c].push(r);
    }
    for rs in &mut per_core {
        rs.sort_unstable();
    }
    let fingerprint = fingerprint(walker.r.get_ref(), len).map_err(|e| io("cannot read", e))?;
    Ok(FilePlan {
        path,
        len,
        fingerprint,
        per_core,
    })
}

/// Walks frame headers through a file, skipping payloads, to find frame boundaries.
struct Walker<'a> {
    r: BufReader<File>,
    path: &'a Path,
    file_len: u64,
    pos: u64,
}

impl<'a> Walker<'a> {
    fn new(file: File, path: &'a Path, file_len: u64) -> Self {
        Walker {
            r: BufReader::with_capacity(256 * 1024, file),
            path,
            file_len,
            pos: 0,
        }
    }

    fn seek(&mut self, to: u64) -> io::Result<()> {
        if to != self.pos {
            self.r.seek(SeekFrom::Start(to))?;
            self.pos = to;
        }
        Ok(())
    }

    /// Moves past the frame at the current position, if it is whole; returns its end.
    fn next_frame(&mut self) -> io::Result<Option<u64>> {
        if self.pos + HEADER_LEN as u64 > self.file_len {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        self.r.read_exact(&mut h)?;
        let end = self.pos + frame_size(&h).expect("a whole header") as u64;
        if end > self.file_len {
            self.r.seek_relative(-(HEADER_LEN as i64))?;
            return Ok(None);
        }
        self.r
            .seek_relative((end - self.pos - HEADER_LEN as u64) as i64)?;
        self.pos = end;
        Ok(Some(end))
    }

    /// The first frame boundary at or after `target` (or `limit`), walking from the boundary
    /// `from`.
    fn boundary_at_or_after(&mut self, from: u64, target: u64, limit: u64) -> io::Result<u64> {
        self.seek(from)?;
        while self.pos < target.min(limit) {
            if self.next_frame()?.is_none() {
                break;
            }
        }
        Ok(self.pos.min(limit))
    }

    /// The end of the last whole frame, walking from the boundary `from`; warns about a
    /// partial frame at the end.
    fn whole_frames_end(&mut self, from: u64) -> io::Result<u64> {
        self.seek(from)?;
        while self.next_frame()?.is_some() {}
        self.warn_partial_tail();
        Ok(self.pos)
    }

    /// Walks the whole file from `from` once: returns the end of its whole frames and the
    /// first boundaries at or after each of `parts - 1` evenly spaced targets.
    fn split(&mut self, from: u64, to: u64, parts: usize) -> io::Result<(u64, Vec<u64>)> {
        self.seek(from)?;
        let span = to - from;
        let mut targets =
            (1..parts as u64).map(|i| from + (span as u128 * i as u128 / parts as u128) as u64);
        let mut next = targets.next();
        let mut cuts = Vec::with_capacity(parts);
        while let Some(t) = next {
            if self.pos >= t {
                cuts.push(self.pos);
                next = targets.next();
            } else if self.next_frame()?.is_none() {
                break;
            }
        }
        while self.next_frame()?.is_some() {}
        self.warn_partial_tail();
        Ok((self.pos, cuts))
    }

    fn warn_partial_tail(&self) {
        if self.pos < self.file_len {
            tracing::warn!(
                "file:{} ends inside a frame: the {} bytes from offset {} are not a whole frame \
                 and are not read (a frame still being appended is read on a later start)",
                self.path.display(),
                self.file_len - self.pos,
                self.pos
            );
        }
    }
}

/// Passes every whole frame at the start of `buf` to `on_frame`; returns the bytes they took
/// and why decoding stopped before the end, if it did.
fn decode_whole(
    decoder: &FrameDecoder,
    buf: &[u8],
    on_frame: &mut dyn FnMut(&[u8]),
) -> (usize, Option<FrameError>) {
    let mut walk = decoder.frames(buf);
    for frame in walk.by_ref() {
        match frame {
            Ok(frame) => on_frame(frame.payload),
            Err(stop) => return (walk.offset(), Some(stop)),
        }
    }
    (walk.offset(), None)
}

/// Names the bytes of one read in a log line.
struct Span<'a> {
    file: &'a str,
    start: u64,
    end: u64,
}

impl std::fmt::Display for Span<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "file:{} (bytes {} to {})",
            self.file, self.start, self.end
        )
    }
}

/// Reads this core's `ranges` of the file in order, stopping early on shutdown.
pub(crate) async fn run_file_source<A: App>(
    worker: Rc<Worker<A>>,
    source: usize,
    cfg: FileSourceConfig,
    path: PathBuf,
    ranges: Vec<(u64, u64)>,
) {
    let core = worker.index;
    worker.set_file_ranges(&ranges);
    if ranges.is_empty() {
        return;
    }
    let shown = path.display().to_string();
    let file = match BufferedFile::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                core,
                "core {core} cannot open file:{shown}: {e}; it reads nothing"
            );
            return;
        }
    };
    let m = worker.metrics.core(core);
    let decoder = FrameDecoder::new(cfg.max_frame);
    let step_bytes = cfg.read_bytes.max(HEADER_LEN) as u64;
    'ranges: for (i, &(start, end)) in ranges.iter().enumerate() {
        let mut pos = start;
        let mut need = step_bytes;
        while pos < end {
            if worker.shutdown.is_triggered() {
                break 'ranges;
            }
            let want = need.max(step_bytes).min(end - pos);
            let buf = match file.read_at(pos, want as usize).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(
                        core,
                        "reading file:{shown} at offset {pos} failed: {e}; core {core} stops \
                         reading it (a restart resumes from the last checkpoint)"
                    );
                    break 'ranges;
                }
            };
            if buf.is_empty() {
                // The file ends at or before `pos`: it shrank under us (logrotate's
                // copytruncate, a rewrite). Reading on would get nothing forever.
                let now = std::fs::metadata(&path).map_or_else(
                    |e| format!("cannot be read ({e})"),
                    |m| format!("has {} bytes", m.len()),
                );
                tracing::error!(
                    core,
                    "file:{shown} was truncated while being read: it now {now}, but core {core} \
                     was to read up to offset {end} and is at {pos}; core {core} stops reading \
                     it ({} bytes of its share unread)",
                    end - pos
                );
                break 'ranges;
            }
            let from = Span {
                file: &shown,
                start: pos,
                end: pos + buf.len() as u64,
            };
            let step = read_step(&worker, source, &from, |on_frame| {
                let (used, stop) = decode_whole(&decoder, &buf, on_frame);
                // Inside the ingest: a checkpoint cut sees the position and the records that
                // go with it, or neither.
                worker.note_file_position(i, pos + used as u64);
                (used, stop)
            })
            .await;
            let Some((used, stop)) = step else {
                break 'ranges;
            };
            pos += used as u64;
            need = step_bytes;
            match stop {
                None => {}
                Some(FrameError::TooLarge { error: e, .. }) => {
                    CoreMetrics::add(&m.frames_rejected, 1);
                    tracing::warn!(
                        core,
                        "skipping the frame at offset {pos} of file:{shown}: {e}"
                    );
                    pos += (HEADER_LEN + e.len) as u64;
                    worker.note_file_position(i, pos);
                }
                Some(FrameError::Truncated { size, .. }) if used == 0 => {
                    let size = size.unwrap_or(HEADER_LEN) as u64;
                    if buf.len() as u64 >= want && size > want {
                        // A frame larger than one read: read it whole next time.
                        need = size;
                    } else {
                        tracing::error!(
                            core,
                            "file:{shown} ends at offset {} inside the frame at {pos}: it was \
                             truncated while being read; core {core} stops reading it",
                            pos + buf.len() as u64
                        );
                        break 'ranges;
                    }
                }
                Some(FrameError::Truncated { .. }) => {}
            }
        }
    }
    let _ = file.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_frame;

    fn framed(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            encode_frame(
                format!("frame {i} {}", "x".repeat(i % 7)).as_bytes(),
                &mut out,
            );
        }
        out
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("bettong-fs-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn boundaries(bytes: &[u8]) -> Vec<u64> {
        let ends = crate::codec::frames(bytes).map_while(Result::ok);
        [0].into_iter()
            .chain(ends.map(|f| f.end() as u64))
            .collect()
    }

    /// Every range starts and ends on a frame boundary, and together they cover `expect` once.
    fn check_cover(plan: &FilePlan, bounds: &[u64], expect: &[(u64, u64)]) {
        let mut all: Vec<(u64, u64)> = plan.per_core.iter().flatten().copied().collect();
        all.sort_unstable();
        for &(a, b) in &all {
            assert!(a < b, "{all:?}");
            assert!(bounds.contains(&a) && bounds.contains(&b), "{all:?}");
        }
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for r in all {
            match merged.last_mut() {
                Some(last) if last.1 == r.0 => last.1 = r.1,
                _ => merged.push(r),
            }
        }
        assert_eq!(merged, expect);
    }

    #[test]
    fn fresh_plan_splits_at_frame_boundaries_for_every_core() {
        let bytes = framed(1000);
        let bounds = boundaries(&bytes);
        let p = temp("fresh", &bytes);
        for cores in 1..=5 {
            let plan = plan(&FileSourceConfig::new(&p), cores, None).unwrap();
            assert_eq!(plan.len, bytes.len() as u64);
            assert!(plan.per_core.iter().all(|r| !r.is_empty()));
            check_cover(&plan, &bounds, &[(0, bytes.len() as u64)]);
        }
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn partial_tail_is_left_out_and_read_once_complete() {
        let bytes = framed(50);
        let bounds = boundaries(&bytes);
        let whole = *bounds.last().unwrap();
        let p = temp("tail", &bytes[..bytes.len() - 3]);
        let cut = bounds[bounds.len() - 2];
        let plan1 = plan(&FileSourceConfig::new(&p), 2, None).unwrap();
        assert_eq!(plan1.len, cut);
        check_cover(&plan1, &bounds, &[(0, cut)]);
        // The writer finishes the frame; a resume from "all read" reads only the new frame.
        std::fs::write(&p, &bytes).unwrap();
        let mark = SourceMark::File {
            path: plan1.path.clone(),
            len: plan1.len,
            fingerprint: Some(plan1.fingerprint),
            ranges: vec![],
        };
        let plan2 = plan(&FileSourceConfig::new(&p), 2, Some(&mark)).unwrap();
        assert_eq!(plan2.len, whole);
        check_cover(&plan2, &bounds, &[(cut, whole)]);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn resume_splits_what_is_left_over_more_cores_and_refuses_another_file() {
        let bytes = framed(400);
        let bounds = boundaries(&bytes);
        let p = temp("resume", &bytes);
        let abs = std::fs::canonicalize(&p).unwrap();
        let left = vec![(bounds[10], bounds[50]), (bounds[300], bounds[400])];
        let mark = SourceMark::File {
            path: abs,
            len: bytes.len() as u64,
            fingerprint: Some(
                plan(&FileSourceConfig::new(&p), 1, None)
                    .unwrap()
                    .fingerprint,
            ),
            ranges: left.clone(),
        };
        for cores in [1, 2, 3, 8] {
            let plan = plan(&FileSourceConfig::new(&p), cores, Some(&mark)).unwrap();
            assert_eq!(
                plan.remaining(),
                left.iter().map(|(a, b)| b - a).sum::<u64>()
            );
            check_cover(&plan, &bounds, &left);
            if cores <= 4 {
                assert!(plan.per_core.iter().all(|r| !r.is_empty()), "{cores}");
            }
        }
        let other = SourceMark::File {
            path: "/elsewhere.bin".into(),
            len: bytes.len() as u64,
            fingerprint: None,
            ranges: left,
        };
        let err = plan(&FileSourceConfig::new(&p), 2, Some(&other)).unwrap_err();
        assert!(err.to_string().contains("/elsewhere.bin"), "{err}");
        std::fs::write(&p, &bytes[..100]).unwrap();
        let err = plan(&FileSourceConfig::new(&p), 2, Some(&mark)).unwrap_err();
        assert!(err.to_string().contains("truncated or replaced"), "{err}");
        std::fs::remove_file(p).unwrap();
    }

    /// A file replaced by another of the same length is refused, naming the fingerprints; one
    /// appended to resumes; a checkpoint of a TCP run is refused; a manifest without a
    /// fingerprint (written before they were recorded) still resumes.
    #[test]
    fn resume_checks_the_content_fingerprint_and_the_source_kind() {
        let bytes = framed(3000);
        let bounds = boundaries(&bytes);
        let p = temp("fingerprint", &bytes);
        let first = plan(&FileSourceConfig::new(&p), 2, None).unwrap();
        let mark = |fingerprint| SourceMark::File {
            path: first.path.clone(),
            len: first.len,
            fingerprint,
            ranges: vec![(bounds[100], first.len)],
        };
        // Appended to: the first `len` bytes keep their fingerprint.
        let mut grown = bytes.clone();
        grown.extend_from_slice(&framed(5));
        std::fs::write(&p, &grown).unwrap();
        plan(
            &FileSourceConfig::new(&p),
            2,
            Some(&mark(Some(first.fingerprint))),
        )
        .unwrap();
        // Same length, other content at the end (or at the start): refused.
        for at in [bytes.len() - 2, 10] {
            let mut other = bytes.clone();
            other[at] ^= 0x20;
            std::fs::write(&p, &other).unwrap();
            let err = plan(
                &FileSourceConfig::new(&p),
                2,
                Some(&mark(Some(first.fingerprint))),
            )
            .unwrap_err();
            assert!(err.to_string().contains("the file was replaced"), "{err}");
            // Without a recorded fingerprint only the length is checked.
            plan(&FileSourceConfig::new(&p), 2, Some(&mark(None))).unwrap();
        }
        let tcp = SourceMark::Unreplayable { kind: "tcp".into() };
        let err = plan(&FileSourceConfig::new(&p), 2, Some(&tcp)).unwrap_err();
        assert!(err.to_string().contains("reading tcp"), "{err}");
        std::fs::remove_file(p).unwrap();
    }
}
