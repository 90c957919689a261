//! Recovery: finding the newest checkpoint that is whole, and re-sharding it onto this run's
//! cores.
//!
//! Checkpoints are tried newest first. One is used only if its manifest parses and passes its
//! CRC, every shard file it names has the recorded size, header and CRC, and every state and
//! in-flight value in them decodes; otherwise the reason is logged and the previous one is tried.
//! A directory without a manifest is a checkpoint that never committed (a crash while it was
//! being written) and is skipped the same way. Keys are re-hashed with this run's router, so a
//! checkpoint taken on any number of cores restores onto any other.
//!
//! A committed checkpoint that cannot be read is never deleted ([`open`]): if none can be read
//! the run is refused (unless asked to start empty), and one that is skipped is moved aside.
//! The directory is locked (`flock` on its `LOCK` file) for the life of the run, so a second
//! engine on it is refused at once.

// Builder and callback types name every user type they carry; aliases would only hide them.
#![allow(clippy::type_complexity)]

use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use super::format::{
    check_shard, entries, parse_checkpoint_dir_name, push_entry, shard_file_name, Entry, Manifest,
    MANIFEST,
};
use crate::routing::Router;
use crate::Error;

/// Checks that keys, encoded states and values decode as the pipeline's types:
/// `(state step, key bytes, encoded state or value)`.
pub(crate) struct Decoders<'a> {
    pub state: &'a dyn Fn(usize, &[u8], &[u8]) -> bool,
    pub value: &'a dyn Fn(usize, &[u8], &[u8]) -> bool,
}

/// One shard file, checked, with where its state entries and in-flight records are.
struct ShardFile {
    bytes: Vec<u8>,
    state: Range<usize>,
    log: Range<usize>,
}

/// A checkpoint whose files all checked out.
pub(crate) struct Valid {
    pub manifest: Manifest,
    files: Vec<ShardFile>,
}

impl Valid {
    /// Every `(step, key, encoded state)` of every shard.
    pub(crate) fn entries(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        self.files
            .iter()
            .flat_map(|f| entries(&f.bytes[f.state.clone()]).map_while(Result::ok))
    }

    /// Every record in flight at the cut, `(step, key, encoded value)`, in each core's order.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = Entry<'_>> + '_ {
        self.files
            .iter()
            .flat_map(|f| entries(&f.bytes[f.log.clone()]).map_while(Result::ok))
    }

    /// Number of keys in the checkpoint.
    pub(crate) fn keys(&self) -> u64 {
        self.manifest.shards.iter().map(|s| s.keys).sum()
    }

    /// The state entries and the in-flight records split by owner core under `router`, each in
    /// the shard-body encoding. Records keep their order per key. `hash` gives a key's hash
    /// (`None` for bytes that are not a key of that step, which were checked at load).
    pub(crate) fn reshard(
        &self,
        router: &Router,
        hash: &dyn Fn(usize, &[u8]) -> Option<u64>,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut parts = vec![(Vec::new(), Vec::new()); router.cores()];
        let owner = |stage, key| router.owner(hash(stage, key).unwrap_or(0));
        for (stage, key, state) in self.entries() {
            push_entry(&mut parts[owner(stage, key)].0, stage, key, state);
        }
        for (stage, key, value) in self.in_flight() {
            push_entry(&mut parts[owner(stage, key)].1, stage, key, value);
        }
        parts
    }
}

/// The lock file in a checkpoint directory: held (`flock`) by the engine using the directory,
/// and holding its pid as text.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The largest checkpoint id accepted: ids count up from 1, so a larger one was not written by
/// Bettong, and counting on from it could overflow.
pub(crate) const MAX_ID: u64 = i64::MAX as u64;

/// Why a checkpoint cannot be used.
#[derive(Debug)]
pub(crate) enum Unusable {
    /// No manifest: the checkpoint was never committed (a crash while it was being written).
    Uncommitted,
    /// A committed checkpoint that cannot be read: damaged, from another build or pipeline, or
    /// not readable by this process.
    Unreadable(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Uncommitted => f.write_str(
                "it has no manifest (it was never committed: the process stopped while \
                 writing it)",
            ),
            Unusable::Unreadable(why) => f.write_str(why),
        }
    }
}

/// What a scan of the checkpoint directory found.
pub(crate) struct Scan {
    /// The newest usable checkpoint.
    pub latest: Option<Valid>,
    /// The highest checkpoint id present, usable or not (new ids must be above it).
    pub max_id: u64,
    /// The directory name of the checkpoint with the highest id.
    pub max_name: Option<String>,
    /// Committed checkpoints newer than `latest` that could not be read: `(id, directory
    /// name, why)`. They must never be deleted.
    pub unreadable: Vec<(u64, String, String)>,
}

/// Scans `dir` (which must exist) for the newest usable checkpoint.
pub(crate) fn scan(dir: &Path, decoders: &Decoders<'_>) -> Result<Scan, Error> {
    let read = fs::read_dir(dir).map_err(|e| Error::Io {
        what: format!("listing the checkpoint directory {}", dir.display()),
        source: e,
    })?;
    let mut found: Vec<(u64, String)> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            Some((parse_checkpoint_dir_name(&name)?, name))
        })
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    let max_id = found.first().map_or(0, |(id, _)| *id);
    let max_name = found.first().map(|(_, name)| name.clone());
    let mut unreadable = Vec::new();
    for (id, name) in found {
        let cdir = dir.join(&name);
        match load(&cdir, id, decoders) {
            Ok(v) => {
                return Ok(Scan {
                    latest: Some(v),
                    max_id,
                    max_name,
                    unreadable,
                })
            }
            Err(why) => {
                tracing::warn!(
                    "checkpoint {id} in {} cannot be used: {why}; trying the one before it",
                    cdir.display()
                );
                if let Unusable::Unreadable(why) = why {
                    unreadable.push((id, name, why));
                }
            }
        }
    }
    Ok(Scan {
        latest: None,
        max_id,
        max_name,
        unreadable,
    })
}

/// The exclusive lock on a checkpoint directory, held for as long as this value lives.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: fs::File,
}

impl DirLock {
    /// Takes the lock on `dir` at once, or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, Error> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::io::AsRawFd;
        let path = dir.join(LOCK_FILE);
        let io = |what: &str, e: io::Error| Error::Io {
            what: format!("{what} the lock file {}", path.display()),
            source: e,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::CheckpointDirLocked {
                    dir: dir.to_path_buf(),
                    holder: text.trim().parse().ok(),
                });
            }
            return Err(io("locking", e));
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| io("writing this process's pid into", e))?;
        Ok(DirLock { _file: file })
    }
}

/// A checkpoint directory opened for a run: locked, scanned, and cleared of checkpoints that
/// would stop it from starting.
pub(crate) struct Opened {
    pub scan: Scan,
    pub lock: DirLock,
    /// Unreadable checkpoints still in place (they could not be moved aside): never deleted.
    pub protected: Vec<u64>,
}

/// Locks `dir` (which must exist), finds the newest usable checkpoint, and deals with the
/// committed checkpoints that cannot be read. If none can be read the run is refused, unless
/// `start_empty` says to start from empty state; then, and whenever a newer checkpoint than
/// the one restored cannot be read, each unreadable one is moved aside (renamed
/// `unreadable-<name>-<unix seconds>`) so that nothing ever deletes it.
pub(crate) fn open(
    dir: &Path,
    decoders: &Decoders<'_>,
    start_empty: bool,
) -> Result<Opened, Error> {
    let lock = DirLock::acquire(dir)?;
    let mut scan = scan(dir, decoders)?;
    if scan.max_id > MAX_ID {
        let name = scan.max_name.clone().unwrap_or_default();
        return Err(Error::CheckpointIdTooLarge {
            dir: dir.join(name),
            id: scan.max_id,
        });
    }
    if scan.latest.is_none() && !scan.unreadable.is_empty() && !start_empty {
        return Err(Error::CheckpointsUnreadable {
            dir: dir.to_path_buf(),
            failures: scan
                .unreadable
                .iter()
                .map(|(id, _, why)| (*id, why.clone()))
                .collect(),
        });
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut protected = Vec::new();
    for (id, name, why) in std::mem::take(&mut scan.unreadable) {
        let from = dir.join(&name);
        let to = dir.join(format!("unreadable-{name}-{now}"));
        match fs::rename(&from, &to) {
            Ok(()) => tracing::warn!(
                "checkpoint {id} cannot be read ({why}); it is kept, moved aside to {}",
                to.display()
            ),
            Err(e) => {
                tracing::warn!(
                    "checkpoint {id} cannot be read ({why}) nor moved aside to {} ({e}); it is \
                     kept where it is and never deleted by this run",
                    to.display()
                );
                protected.push(id);
            }
        }
        scan.unreadable.push((id, name, why));
    }
    if scan.latest.is_none() && !scan.unreadable.is_empty() {
        tracing::warn!(
            "none of the {} committed checkpoint(s) in {} can be read: starting from empty \
             state as asked (start_empty_if_unreadable); they are kept",
            scan.unreadable.len(),
            dir.display()
        );
    }
    Ok(Opened {
        scan,
        lock,
        protected,
    })
}

/// Loads and checks checkpoint `id` from its directory `cdir`, or says what is wrong with it.
pub(crate) fn load(cdir: &Path, id: u64, decoders: &Decoders<'_>) -> Result<Valid, Unusable> {
    let text = match fs::read(cdir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unusable::Uncommitted),
        Err(e) => return Err(Unusable::Unreadable(format!("reading its manifest: {e}"))),
    };
    load_committed(cdir, id, &text, decoders).map_err(Unusable::Unreadable)
}

/// Checks a committed checkpoint whose manifest reads `text`.
fn load_committed(
    cdir: &Path,
    id: u64,
    text: &[u8],
    decoders: &Decoders<'_>,
) -> Result<Valid, String> {
    let manifest = Manifest::parse(text).map_err(|e| format!("its manifest: {e}"))?;
    if manifest.id != id {
        return Err(format!(
            "its manifest says checkpoint {}, not {id}",
            manifest.id
        ));
    }
    let mut files = Vec::with_capacity(manifest.cores);
    for info in &manifest.shards {
        let name = shard_file_name(info.core);
        let bytes = fs::read(cdir.join(&name)).map_err(|e| format!("reading {name}: {e}"))?;
        let body =
            check_shard(&bytes, info, id, manifest.cores).map_err(|e| format!("{name}: {e}"))?;
        let start = body.as_ptr() as usize - bytes.as_ptr() as usize;
        let mut n = 0u64;
        for e in entries(body) {
            let (stage, key, bytes) = e.map_err(|e| format!("{name}: {e}"))?;
            let (what, ok) = if n < info.keys {
                ("state", (decoders.state)(stage, key, bytes))
            } else {
                ("in-flight value", (decoders.value)(stage, key, bytes))
            };
            if !ok {
                return Err(format!(
                    "{name}: the key {:?} or its {what} at state step {stage} does not decode \
                     as this pipeline's types (was the checkpoint written by another pipeline?)",
                    String::from_utf8_lossy(key)
                ));
            }
            n += 1;
        }
        if n != info.keys + info.log {
            return Err(format!(
                "{name} holds {n} entries where the manifest says {} keys and {} in-flight \
                 records",
                info.keys, info.log
            ));
        }
        let state_len = state_len(body, info.keys);
        let state = start..start + state_len;
        let log = start + state_len..start + body.len();
        files.push(ShardFile { bytes, state, log });
    }
    Ok(Valid { manifest, files })
}

/// Bytes taken by the first `n` entries of `body` (already checked to be well formed).
fn state_len(body: &[u8], n: u64) -> usize {
    let mut rest = body;
    for _ in 0..n {
        let mut take = || -> Option<()> {
            super::persist::get_varint(&mut rest)?;
            let klen = super::persist::get_varint(&mut rest)? as usize;
            rest = rest.get(klen..)?;
            let vlen = super::persist::get_varint(&mut rest)? as usize;
            rest = rest.get(vlen..)?;
            Some(())
        };
        if take().is_none() {
            break;
        }
    }
    body.len() - rest.len()
}
