//! The on-disk format of a checkpoint, and the atomic, durable way it is written.
//!
//! ```text
//! DIR/ckpt-00000000000000000042/shard-0.bin   one file per core that took part
//!                               shard-1.bin
//!                               MANIFEST      written last: its presence commits the checkpoint
//! ```
//!
//! A shard file is a header (magic, format version, checkpoint id, core, core count, key count,
//! in-flight record count), the entries (`varint key length, key, varint length, bytes`: first
//! one per key with its encoded state, then one per record that was in flight to the core at the
//! cut, with its encoded value), and a CRC-32 of everything before it. The manifest is a short text file (so that a person can read it) that
//! names every shard file with its size, entry count and CRC, says where the sources were at the
//! cut, and ends with a CRC of its own lines. Every file is written to a temporary name, fsynced,
//! renamed into place, and the directory is fsynced; the manifest goes last, so a crash at any
//! moment leaves either a committed checkpoint or a directory without a manifest, which recovery
//! ignores. A file damaged later (a torn write, a bad disk) fails its CRC and recovery falls
//! back to the previous checkpoint.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::persist::{get_varint, put_varint};

/// First bytes of a shard file.
const SHARD_MAGIC: &[u8; 8] = b"BTGSHRD\x01";
/// Version of the shard layout after the magic.
/// Version 2: every entry names its state step (chained pipelines).
const SHARD_VERSION: u32 = 2;
/// Bytes of the fixed shard header: magic, version, id, core, cores, keys, in-flight records.
const SHARD_HEADER: usize = 8 + 4 + 8 + 4 + 4 + 8 + 8;
/// First line of a manifest.
const MANIFEST_HEADER: &str = "bettong checkpoint manifest v1";
/// The manifest's file name.
pub(crate) const MANIFEST: &str = "MANIFEST";

/// The directory name of checkpoint `id` (zero-padded so names sort by id).
pub(crate) fn checkpoint_dir_name(id: u64) -> String {
    format!("ckpt-{id:020}")
}

/// The id in a checkpoint directory name, if it is one.
pub(crate) fn parse_checkpoint_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of core `core`'s shard.
pub(crate) fn shard_file_name(core: usize) -> String {
    format!("shard-{core}.bin")
}

/// One entry of a shard body: the state step it belongs to, the key's bytes
/// ([`PersistKey`](crate::key::PersistKey)) and the encoded state (or, in the in-flight log,
/// the encoded routed value).
pub(crate) type Entry<'a> = (usize, &'a [u8], &'a [u8]);

/// Appends one entry (a state step's index, a key and its encoded state) to a shard body.
#[inline]
pub(crate) fn push_entry(body: &mut Vec<u8>, stage: usize, key: &[u8], state: &[u8]) {
    put_varint(body, stage as u64);
    put_varint(body, key.len() as u64);
    body.extend_from_slice(key);
    put_varint(body, state.len() as u64);
    body.extend_from_slice(state);
}

/// Walks the entries of a shard body: `(step, key, encoded state)`, or an error saying where
/// the body stops making sense.
pub(crate) fn entries(body: &[u8]) -> impl Iterator<Item = Result<Entry<'_>, String>> + '_ {
    let mut rest = body;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        let at = body.len() - rest.len();
        let entry = (|| {
            let stage = usize::try_from(get_varint(&mut rest)?).ok()?;
            let klen = usize::try_from(get_varint(&mut rest)?).ok()?;
            let key = rest.get(..klen)?;
            rest = &rest[klen..];
            let slen = usize::try_from(get_varint(&mut rest)?).ok()?;
            let state = rest.get(..slen)?;
            rest = &rest[slen..];
            Some((stage, key, state))
        })();
        match entry {
            Some(e) => Some(Ok(e)),
            None => {
                failed = true;
                Some(Err(format!("entry at body offset {at} is malformed")))
            }
        }
    })
}

/// What the manifest says about one shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardInfo {
    pub core: usize,
    pub keys: u64,
    /// Records that were in flight to this core at the cut (logged after the state entries).
    pub log: u64,
    pub bytes: u64,
    pub crc: u32,
}

/// Where the engine's sources were at the cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMark {
    /// A source that cannot replay (TCP, memory): only its kind is recorded.
    Unreplayable {
        /// `tcp`, `memory`, …
        kind: String,
    },
    /// A framed file: the byte ranges still to be read, each starting at a frame boundary.
    File {
        /// The file (as given, made absolute).
        path: PathBuf,
        /// Bytes of whole frames in the file when the layout was made.
        len: u64,
        /// A fingerprint of the file's first `len` bytes (its length, first and last 4 KiB):
        /// a file replaced by another of the same length is not resumed at foreign offsets.
        /// `None` in manifests written before fingerprints were recorded.
        fingerprint: Option<u64>,
        /// `[start, end)` ranges not yet read; everything else of `0..len` has been.
        ranges: Vec<(u64, u64)>,
    },
}

impl SourceMark {
    /// Bytes of the file already read, for logs (0 for other sources).
    pub fn consumed(&self) -> u64 {
        match self {
            SourceMark::Unreplayable { .. } => 0,
            SourceMark::File { len, ranges, .. } => {
                len - ranges.iter().map(|(s, e)| e - s).sum::<u64>()
            }
        }
    }
}

/// A checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub id: u64,
    pub created_unix_ms: u64,
    pub cores: usize,
    /// The key hash's seed of the run that wrote it (`None` in manifests written before seeds
    /// were recorded: those runs all used the engine's old fixed seed).
    pub seed: Option<u64>,
    pub shards: Vec<ShardInfo>,
    pub source: SourceMark,
}

impl Manifest {
    /// The manifest as text, ending with the CRC line.
    pub(crate) fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "{MANIFEST_HEADER}");
        let _ = writeln!(s, "id {}", self.id);
        let _ = writeln!(s, "created_unix_ms {}", self.created_unix_ms);
        let _ = writeln!(s, "cores {}", self.cores);
        if let Some(seed) = self.seed {
            let _ = writeln!(s, "seed {seed:016x}");
        }
        for sh in &self.shards {
            let _ = writeln!(
                s,
                "shard {} keys {} log {} bytes {} crc32 {:08x}",
                sh.core, sh.keys, sh.log, sh.bytes, sh.crc
            );
        }
        match &self.source {
            SourceMark::Unreplayable { kind } => {
                let _ = writeln!(s, "source {kind}");
            }
            SourceMark::File {
                path,
                len,
                fingerprint,
                ranges,
            } => {
                let _ = writeln!(s, "source file");
                let _ = writeln!(s, "# path {:?}", path);
                let _ = writeln!(s, "file_path_hex {}", hex(path_bytes(path)));
                let _ = writeln!(s, "file_len {len}");
                if let Some(f) = fingerprint {
                    let _ = writeln!(s, "file_fingerprint {f:016x}");
                }
                for (a, b) in ranges {
                    let _ = writeln!(s, "range {a} {b}");
                }
            }
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc32 {crc:08x}");
        s
    }

    /// Parses and checks a manifest, saying what is wrong with it if anything is.
    pub(crate) fn parse(text: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(text).map_err(|_| "it is not UTF-8 text".to_string())?;
        if !text.ends_with('\n') {
            return Err("it is truncated (it does not end with a newline)".into());
        }
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or("it is truncated (no CRC line)")?;
        let (body, last) = text.split_at(body_end);
        let want = last
            .trim_end()
            .strip_prefix("crc32 ")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("its last line is not a CRC line (the file is truncated or damaged)")?;
        let got = crc32fast::hash(body.as_bytes());
        if got != want {
            return Err(format!(
                "its CRC does not match (stored {want:08x}, computed {got:08x}): the file is \
                 damaged"
            ));
        }
        let mut lines = body.lines();
        if lines.next() != Some(MANIFEST_HEADER) {
            return Err(format!("it does not start with {MANIFEST_HEADER:?}"));
        }
        let (mut id, mut created, mut cores) = (None, None, None);
        let mut shards = Vec::new();
        let mut kind = None;
        let (mut path, mut len, mut ranges) = (None, None, Vec::new());
        let mut fingerprint = None;
        let mut seed = None;
        for line in lines {
            let bad = || format!("line {line:?} is malformed");
            let num = |s: Option<&str>| s.and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
            let mut w = line.split(' ');
            match w.next() {
                Some("#") => {}
                Some("id") => id = Some(num(w.next())?),
                Some("created_unix_ms") => created = Some(num(w.next())?),
                Some("cores") => cores = Some(num(w.next())? as usize),
                Some("seed") => {
                    let h = w.next().filter(|h| h.len() == 16).ok_or_else(bad)?;
                    seed = Some(u64::from_str_radix(h, 16).map_err(|_| bad())?);
                }
                Some("shard") => {
                    let core = num(w.next())? as usize;
                    let mut field = |name: &str| {
                        if w.next() == Some(name) {
                            w.next().ok_or_else(bad)
                        } else {
                            Err(bad())
                        }
                    };
                    let keys = field("keys")?.parse().map_err(|_| bad())?;
                    let log = field("log")?.parse().map_err(|_| bad())?;
                    let bytes = field("bytes")?.parse().map_err(|_| bad())?;
                    let crc = u32::from_str_radix(field("crc32")?, 16).map_err(|_| bad())?;
                    shards.push(ShardInfo {
                        core,
                        keys,
                        log,
                        bytes,
                        crc,
                    });
                }
                Some("source") => kind = Some(w.next().ok_or_else(bad)?.to_string()),
                Some("file_path_hex") => {
                    let bytes = unhex(w.next().ok_or_else(bad)?).ok_or_else(bad)?;
                    path = Some(path_from_bytes(bytes));
                }
                Some("file_len") => len = Some(num(w.next())?),
                Some("file_fingerprint") => {
                    let h = w.next().filter(|h| h.len() == 16).ok_or_else(bad)?;
                    fingerprint = Some(u64::from_str_radix(h, 16).map_err(|_| bad())?);
                }
                Some("range") => {
                    let (a, b) = (num(w.next())?, num(w.next())?);
                    if a > b {
                        return Err(bad());
                    }
                    ranges.push((a, b));
                }
                _ => return Err(bad()),
            }
        }
        let missing = |what: &str| format!("it has no {what} line");
        let cores = cores.ok_or_else(|| missing("cores"))?;
        let source = match kind.ok_or_else(|| missing("source"))?.as_str() {
            "file" => {
                let len = len.ok_or_else(|| missing("file_len"))?;
                if ranges.iter().any(|&(_, b)| b > len) {
                    return Err(format!("a range runs past the file length {len}"));
                }
                SourceMark::File {
                    path: path.ok_or_else(|| missing("file_path_hex"))?,
                    len,
                    fingerprint,
                    ranges,
                }
            }
            other => SourceMark::Unreplayable {
                kind: other.to_string(),
            },
        };
        if shards.len() != cores || shards.iter().enumerate().any(|(i, s)| s.core != i) {
            return Err(format!(
                "it lists {} shard files for {cores} cores",
                shards.len()
            ));
        }
        Ok(Manifest {
            id: id.ok_or_else(|| missing("id"))?,
            created_unix_ms: created.ok_or_else(|| missing("created_unix_ms"))?,
            cores,
            seed,
            shards,
            source,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn path_bytes(p: &Path) -> &[u8] {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes()
}

fn path_from_bytes(b: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(b))
}

/// What goes into one shard file.
pub(crate) struct ShardContent<'a> {
    pub core: usize,
    pub keys: u64,
    /// `keys` state entries.
    pub state: &'a [u8],
    pub log: u64,
    /// `log` in-flight record entries.
    pub log_body: &'a [u8],
}

/// Writes a shard file into `dir` atomically and durably (temporary file, fsync, rename). The
/// caller fsyncs `dir` afterwards. Returns what the manifest records about it.
pub(crate) fn write_shard(
    dir: &Path,
    id: u64,
    cores: usize,
    c: &ShardContent<'_>,
) -> io::Result<ShardInfo> {
    let ShardContent {
        core,
        keys,
        state,
        log,
        log_body,
    } = *c;
    let mut header = Vec::with_capacity(SHARD_HEADER);
    header.extend_from_slice(SHARD_MAGIC);
    header.extend_from_slice(&SHARD_VERSION.to_le_bytes());
    header.extend_from_slice(&id.to_le_bytes());
    header.extend_from_slice(&(core as u32).to_le_bytes());
    header.extend_from_slice(&(cores as u32).to_le_bytes());
    header.extend_from_slice(&keys.to_le_bytes());
    header.extend_from_slice(&log.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.update(state);
    crc.update(log_body);
    let crc = crc.finalize();
    write_atomic(dir, &shard_file_name(core), |f| {
        f.write_all(&header)?;
        f.write_all(state)?;
        f.write_all(log_body)?;
        f.write_all(&crc.to_le_bytes())
    })?;
    Ok(ShardInfo {
        core,
        keys,
        log,
        bytes: (SHARD_HEADER + state.len() + log_body.len() + 4) as u64,
        crc,
    })
}

/// Checks a shard file's bytes against the manifest's record and its own header and CRC, and
/// returns its body (the entries).
pub(crate) fn check_shard<'a>(
    bytes: &'a [u8],
    info: &ShardInfo,
    id: u64,
    cores: usize,
) -> Result<&'a [u8], String> {
    if bytes.len() as u64 != info.bytes {
        return Err(format!(
            "it has {} bytes where the manifest says {} (a torn or partial write)",
            bytes.len(),
            info.bytes
        ));
    }
    if bytes.len() < SHARD_HEADER + 4 {
        return Err("it is shorter than a shard header".into());
    }
    let (content, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(tail.try_into().expect("4-byte tail"));
    let computed = crc32fast::hash(content);
    if stored != computed || stored != info.crc {
        return Err(format!(
            "its CRC does not match (stored {stored:08x}, manifest {:08x}, computed \
             {computed:08x}): the file is damaged",
            info.crc
        ));
    }
    let (header, body) = content.split_at(SHARD_HEADER);
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().expect("8 bytes"));
    if &header[..8] != SHARD_MAGIC || u32_at(8) != SHARD_VERSION {
        return Err(format!(
            "it is not a version-{SHARD_VERSION} Bettong shard file (written by another build?)"
        ));
    }
    if u64_at(12) != id || u32_at(20) as usize != info.core || u32_at(24) as usize != cores {
        return Err(format!(
            "its header says checkpoint {}, core {} of {}, not checkpoint {id}, core {} of \
             {cores}",
            u64_at(12),
            u32_at(20),
            u32_at(24),
            info.core
        ));
    }
    if u64_at(28) != info.keys || u64_at(36) != info.log {
        return Err(format!(
            "its header counts {} keys and {} in-flight records where the manifest says {} \
             and {}",
            u64_at(28),
            u64_at(36),
            info.keys,
            info.log
        ));
    }
    Ok(body)
}

/// Writes `name` in `dir` atomically: to `name.tmp`, fsync, rename over `name`. A crash leaves
/// either the old file (or none) or the complete new one, never a mix.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp)?;
    write(&mut f)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)
}

/// Makes the entries of directory `dir` durable (renames and creations in it).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(source: SourceMark) -> Manifest {
        Manifest {
            id: 7,
            created_unix_ms: 1_700_000_000_000,
            cores: 2,
            seed: Some(0xfedc_ba98_7654_3210),
            shards: vec![
                ShardInfo {
                    core: 0,
                    keys: 3,
                    log: 2,
                    bytes: 100,
                    crc: 0xdead_beef,
                },
                ShardInfo {
                    core: 1,
                    keys: 0,
                    log: 0,
                    bytes: 40,
                    crc: 1,
                },
            ],
            source,
        }
    }

    #[test]
    fn manifest_round_trips_and_detects_damage() {
        for source in [
            SourceMark::Unreplayable { kind: "tcp".into() },
            SourceMark::File {
                path: "/tmp/a b\nc.bin".into(),
                len: 1000,
                fingerprint: Some(0x0123_4567_89ab_cdef),
                ranges: vec![(10, 500), (600, 1000)],
            },
            SourceMark::File {
                path: "/x".into(),
                len: 10,
                fingerprint: None,
                ranges: vec![],
            },
        ] {
            let m = manifest(source);
            let text = m.to_text();
            assert_eq!(Manifest::parse(text.as_bytes()), Ok(m.clone()));
            // Any cut or any flipped byte is detected.
            for cut in 0..text.len() {
                assert!(
                    Manifest::parse(&text.as_bytes()[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            for i in 0..text.len() {
                let mut b = text.clone().into_bytes();
                b[i] ^= 0x01;
                assert!(Manifest::parse(&b).is_err(), "flip at {i}");
            }
        }
    }

    /// A manifest written before fingerprints were recorded still reads, without one.
    #[test]
    fn manifest_without_a_fingerprint_still_reads() {
        let mut body = String::from(
            "bettong checkpoint manifest v1\nid 3\ncreated_unix_ms 5\ncores 1\n\
             shard 0 keys 0 log 0 bytes 40 crc32 00000001\nsource file\n\
             file_path_hex 2f78\nfile_len 10\nrange 4 10\n",
        );
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc32 {crc:08x}\n"));
        let m = Manifest::parse(body.as_bytes()).unwrap();
        assert_eq!(m.seed, None, "a manifest from before seeds were recorded");
        assert_eq!(
            m.source,
            SourceMark::File {
                path: "/x".into(),
                len: 10,
                fingerprint: None,
                ranges: vec![(4, 10)],
            }
        );
    }

    #[test]
    fn shard_round_trips_and_detects_damage() {
        let dir = std::env::temp_dir().join(format!("bettong-format-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut body = Vec::new();
        push_entry(&mut body, 0, b"word", &[3]);
        push_entry(&mut body, 1, b"", &[]);
        let mut log = Vec::new();
        push_entry(&mut log, 0, "ß".as_bytes(), &[1, 2]);
        let content = ShardContent {
            core: 1,
            keys: 2,
            state: &body,
            log: 1,
            log_body: &log,
        };
        let info = write_shard(&dir, 9, 2, &content).unwrap();
        let bytes = fs::read(dir.join(shard_file_name(1))).unwrap();
        let got = check_shard(&bytes, &info, 9, 2).unwrap();
        let list: Vec<_> = entries(got).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            list,
            vec![
                (0, &b"word"[..], &[3u8][..]),
                (1, &b""[..], &[][..]),
                (0, "ß".as_bytes(), &[1, 2][..])
            ]
        );
        assert!(check_shard(&bytes, &info, 8, 2).is_err(), "wrong id");
        for cut in 0..bytes.len() {
            assert!(check_shard(&bytes[..cut], &info, 9, 2).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x80;
            assert!(check_shard(&b, &info, 9, 2).is_err(), "flip at {i}");
        }
        assert!(entries(&[0, 5, b'a']).any(|e| e.is_err()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dir_names_sort_and_parse() {
        assert_eq!(
            parse_checkpoint_dir_name(&checkpoint_dir_name(42)),
            Some(42)
        );
        assert!(checkpoint_dir_name(9) < checkpoint_dir_name(10));
        assert_eq!(parse_checkpoint_dir_name("ckpt-"), None);
        assert_eq!(parse_checkpoint_dir_name("ckpt-1.tmp"), None);
        assert_eq!(parse_checkpoint_dir_name("other"), None);
    }
}
