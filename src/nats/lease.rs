//! Partition ownership in the job's KV bucket: leases with the expiry time in the value and
//! every change a compare-and-set on the entry's revision (nats-server 2.9 has no per-key TTL),
//! and an epoch that grows on every take, so a stale owner's writes fail.
//!
//! Keys: `in.<i>` (input partition), `kp.<q>` (key partition), `member.<id>` (a member's
//! heartbeat). A partition's value also carries its last committed checkpoint, so a checkpoint
//! commits by the same compare-and-set that proves ownership.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A partition of the job: what a key in the bucket names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// Input partition `i`.
    In(u32),
    /// Key partition `q`.
    Key(u32),
}

impl Part {
    /// The KV key.
    pub fn key(&self) -> String {
        match self {
            Part::In(i) => format!("in.{i}"),
            Part::Key(q) => format!("kp.{q}"),
        }
    }

    /// The partition a KV key names, if it names one.
    pub fn parse(key: &str) -> Option<Part> {
        if let Some(i) = key.strip_prefix("in.") {
            return i.parse().ok().map(Part::In);
        }
        key.strip_prefix("kp.")?.parse().ok().map(Part::Key)
    }
}

/// The last committed checkpoint of a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Stream sequence consumed through (0: nothing yet).
    pub pos: u64,
    /// For a key partition, the Object Store object holding its state.
    #[serde(default)]
    pub object: Option<String>,
    /// The object's size in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Keys (words) in it.
    #[serde(default)]
    pub keys: u64,
    /// When it was committed (ms since the epoch).
    #[serde(default)]
    pub at_ms: u64,
}

/// The value of a partition's KV entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// The owning member's id; `None` once released.
    pub owner: Option<String>,
    /// Grows by one on every take.
    pub epoch: u64,
    /// The lease ends then (ms since the epoch), unless renewed.
    pub expires_ms: u64,
    /// The last committed checkpoint.
    pub ckpt: Checkpoint,
    /// Which of the owner's cores runs it (`None` once released, and in records written
    /// before members had cores: absent from the JSON then, so either side reads the other's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<u32>,
}

impl OwnerRecord {
    /// Whether nobody holds it at `now`: released, or its lease ran out.
    pub fn free_at(&self, now: u64) -> bool {
        self.owner.is_none() || self.expires_ms < now
    }
}

/// The value of a member's heartbeat entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its id (`host-pid-nuid`).
    pub id: String,
    /// Its process id, for people reading `cluster status`.
    pub pid: u32,
    /// Its heartbeat ends then (ms since the epoch), unless renewed.
    pub expires_ms: u64,
}

/// A partition this member holds: the entry's revision it last wrote, and what it wrote.
#[derive(Debug, Clone)]
pub struct Held {
    /// Which partition.
    pub part: Part,
    /// The revision of our last write; the next write must name it.
    pub revision: u64,
    /// What we last wrote.
    pub record: OwnerRecord,
}

/// Why a write to a held partition failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else wrote the entry since: we are no longer the owner.
    #[error("partition {part} was taken over (its entry changed since our last write): fenced")]
    Fenced {
        /// The partition's key.
        part: String,
    },
    /// Our own clock says the lease ran out: nothing is written.
    #[error("partition {part}'s lease ran out before the write")]
    Expired {
        /// The partition's key.
        part: String,
    },
    /// NATS did not answer or refused for another reason; the lease may still be ours.
    #[error("cannot write partition {part}'s lease: {source}")]
    Nats {
        /// The partition's key.
        part: String,
        /// The client's error.
        source: kv::UpdateError,
    },
}

impl Held {
    /// Whether the lease is still ours by our own clock, keeping `margin` in hand: past it we
    /// neither publish nor commit, since someone may take the partition once it expires.
    pub fn valid(&self, margin: Duration) -> bool {
        now_ms() + margin.as_millis() as u64 <= self.record.expires_ms
    }

    /// Writes `record` (with a fresh expiry `ttl` from now) by compare-and-set on our revision.
    pub async fn write(
        &mut self,
        kv: &kv::Store,
        mut record: OwnerRecord,
        ttl: Duration,
    ) -> Result<(), LeaseError> {
        record.expires_ms = now_ms() + ttl.as_millis() as u64;
        let bytes = serde_json::to_vec(&record).expect("an owner record serialises");
        match kv
            .update(self.part.key(), bytes.into(), self.revision)
            .await
        {
            Ok(rev) => {
                self.revision = rev;
                self.record = record;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseError::Fenced {
                    part: self.part.key(),
                })
            }
            Err(source) => Err(LeaseError::Nats {
                part: self.part.key(),
                source,
            }),
        }
    }

    /// Renews the lease, keeping the record as it is.
    pub async fn renew(&mut self, kv: &kv::Store, ttl: Duration) -> Result<(), LeaseError> {
        let record = self.record.clone();
        self.write(kv, record, ttl).await
    }

    /// Commits checkpoint `ckpt` and renews the lease in one compare-and-set.
    pub async fn commit(
        &mut self,
        kv: &kv::Store,
        ckpt: Checkpoint,
        ttl: Duration,
    ) -> Result<(), LeaseError> {
        let mut record = self.record.clone();
        record.ckpt = ckpt;
        self.write(kv, record, ttl).await
    }

    /// Gives the partition up (owner and core `None`), keeping its epoch and checkpoint.
    pub async fn release(&mut self, kv: &kv::Store) -> Result<(), LeaseError> {
        let mut record = self.record.clone();
        record.owner = None;
        record.core = None;
        self.write(kv, record, Duration::ZERO).await
    }
}

/// Takes `part` for core `core` of `me`, if the entry is still at `seen` (its revision and value
/// as last read, `None` when absent): epoch + 1, lease `ttl`. `Ok(None)` when someone else wrote
/// first.
pub async fn take(
    kv: &kv::Store,
    part: Part,
    seen: Option<(u64, OwnerRecord)>,
    (me, core): (&str, u32),
    ttl: Duration,
) -> anyhow::Result<Option<Held>> {
    let (prev_rev, prev) = seen.unwrap_or_default();
    let record = OwnerRecord {
        owner: Some(me.to_string()),
        epoch: prev.epoch + 1,
        expires_ms: now_ms() + ttl.as_millis() as u64,
        ckpt: prev.ckpt,
        core: Some(core),
    };
    let bytes: bytes::Bytes = serde_json::to_vec(&record)?.into();
    let result = if prev_rev == 0 {
        kv.create(part.key(), bytes).await.map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                anyhow::Error::new(e),
            )
        })
    } else {
        kv.update(part.key(), bytes, prev_rev).await.map_err(|e| {
            (
                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                anyhow::Error::new(e),
            )
        })
    };
    match result {
        Ok(revision) => Ok(Some(Held {
            part,
            revision,
            record,
        })),
        Err((true, _)) => Ok(None),
        Err((false, e)) => Err(e.context(format!("cannot take partition {}", part.key()))),
    }
}

/// Reads of the bucket's entries in flight at once in [`View::read`].
const READ_AHEAD: usize = 32;

/// Every entry of the bucket, read once: partitions with their revision, and live-or-not
/// members.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Partition entries: key, revision, record.
    pub parts: std::collections::BTreeMap<Part, (u64, OwnerRecord)>,
    /// Member entries.
    pub members: Vec<MemberRecord>,
}

impl View {
    /// Reads the whole bucket.
    pub async fn read(kv: &kv::Store) -> anyhow::Result<View> {
        use futures_util::{StreamExt, TryStreamExt};
        let keys: Vec<String> = kv.keys().await?.try_collect().await?;
        // Up to READ_AHEAD reads in flight: one at a time, a view of 72 entries took 72 round
        // trips, each slow on a busy server, and every member reads one every scan.
        let entries: Vec<(String, Option<kv::Entry>)> = futures_util::stream::iter(keys)
            .map(|key| async move {
                let entry = kv.entry(key.as_str()).await?;
                Ok::<_, kv::EntryError>((key, entry))
            })
            .buffered(READ_AHEAD)
            .try_collect()
            .await?;
        let mut view = View::default();
        for (key, entry) in entries {
            let Some(entry) = entry else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            if let Some(part) = Part::parse(&key) {
                if let Ok(rec) = serde_json::from_slice::<OwnerRecord>(&entry.value) {
                    view.parts.insert(part, (entry.revision, rec));
                }
            } else if key.starts_with("member.") {
                if let Ok(m) = serde_json::from_slice::<MemberRecord>(&entry.value) {
                    view.members.push(m);
                }
            }
        }
        Ok(view)
    }

    /// The ids of the members whose heartbeat is current at `now`, sorted.
    pub fn live_members(&self, now: u64) -> Vec<String> {
        let mut ids: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.expires_ms >= now)
            .map(|m| m.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

/// Which member of the sorted `members` should own `part`: round robin, so every member gets
/// `P / members` key partitions, plus or minus one. Key partitions start from the member after
/// the one input partition 0 goes to, to spread both kinds.
pub fn assigned(part: Part, members: &[String]) -> Option<&str> {
    if members.is_empty() {
        return None;
    }
    let n = members.len();
    let idx = match part {
        Part::In(i) => i as usize % n,
        Part::Key(q) => (q as usize + 1) % n,
    };
    Some(&members[idx])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for p in [Part::In(0), Part::In(7), Part::Key(63)] {
            assert_eq!(Part::parse(&p.key()), Some(p));
        }
        assert_eq!(Part::parse("member.x"), None);
        assert_eq!(Part::parse("job"), None);
    }

    #[test]
    fn assignment_is_balanced() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut per = std::collections::HashMap::new();
        for q in 0..64 {
            *per.entry(assigned(Part::Key(q), &members).unwrap())
                .or_insert(0) += 1;
        }
        let (lo, hi) = (per.values().min().unwrap(), per.values().max().unwrap());
        assert!(hi - lo <= 1, "{per:?}");
        assert_eq!(per.values().sum::<i32>(), 64);
        assert_eq!(assigned(Part::In(0), &[]), None);
    }

    #[test]
    fn free_when_released_or_expired() {
        let mut r = OwnerRecord {
            owner: Some("a".into()),
            epoch: 3,
            expires_ms: 1000,
            ckpt: Checkpoint::default(),
            core: None,
        };
        assert!(!r.free_at(999));
        assert!(r.free_at(1001));
        r.owner = None;
        assert!(r.free_at(0));
    }

    #[test]
    fn records_without_a_core_still_read_and_a_core_is_written_only_when_known() {
        let old = br#"{"owner":"a","epoch":2,"expires_ms":5,"ckpt":{"pos":7}}"#;
        let r: OwnerRecord = serde_json::from_slice(old).unwrap();
        assert_eq!((r.core, r.epoch, r.ckpt.pos), (None, 2, 7));
        assert!(!serde_json::to_string(&r).unwrap().contains("core"));
        let with = OwnerRecord { core: Some(1), ..r };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""core":1"#), "{json}");
        assert_eq!(serde_json::from_str::<OwnerRecord>(&json).unwrap(), with);
    }
}
