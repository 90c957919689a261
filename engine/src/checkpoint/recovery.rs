//! Recovery: finding the newest checkpoint that is whole, and re-sharding it onto this run's
//! cores.
//!
//! Checkpoints are tried newest first. One is used only if its manifest parses and passes its
//! CRC, every shard file it names has the recorded size, header and CRC, and every state and
//! in-flight value in them decodes; otherwise the reason is logged and the previous one is tried.
//! A directory without a manifest is a checkpoint that never committed (a crash while it was
//! being written) and is skipped the same way. Keys are re-hashed with this run's router, so a
//! checkpoint taken on any number of cores restores onto any other.

// Builder and callback types name every user type they carry; aliases would only hide them.
#![allow(clippy::type_complexity)]

use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use super::format::{
    check_shard, checkpoint_dir_name, entries, parse_checkpoint_dir_name, push_entry,
    shard_file_name, Entry, Manifest, MANIFEST,
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

/// What a scan of the checkpoint directory found.
pub(crate) struct Scan {
    /// The newest usable checkpoint.
    pub latest: Option<Valid>,
    /// The highest checkpoint id present, usable or not (new ids must be above it).
    pub max_id: u64,
}

/// Scans `dir` (which must exist) for the newest usable checkpoint.
pub(crate) fn scan(dir: &Path, decoders: &Decoders<'_>) -> Result<Scan, Error> {
    let read = fs::read_dir(dir).map_err(|e| Error::Io {
        what: format!("listing the checkpoint directory {}", dir.display()),
        source: e,
    })?;
    let mut ids: Vec<u64> = read
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_checkpoint_dir_name))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let max_id = ids.first().copied().unwrap_or(0);
    for id in ids {
        let cdir = dir.join(checkpoint_dir_name(id));
        match load(&cdir, id, decoders) {
            Ok(v) => {
                return Ok(Scan {
                    latest: Some(v),
                    max_id,
                })
            }
            Err(why) => tracing::warn!(
                "checkpoint {id} in {} cannot be used: {why}; trying the one before it",
                cdir.display()
            ),
        }
    }
    Ok(Scan {
        latest: None,
        max_id,
    })
}

/// Loads and checks checkpoint `id` from its directory `cdir`, or says what is wrong with it.
pub(crate) fn load(cdir: &Path, id: u64, decoders: &Decoders<'_>) -> Result<Valid, String> {
    let text = match fs::read(cdir.join(MANIFEST)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(
                "it has no manifest (it was never committed: the process stopped \
                        while writing it)"
                    .into(),
            )
        }
        Err(e) => return Err(format!("reading its manifest: {e}")),
    };
    let manifest = Manifest::parse(&text).map_err(|e| format!("its manifest: {e}"))?;
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
