//! Routing: which core owns a key, and the per-destination batches that carry keys there.
//!
//! This is the only place where data crosses cores. A key is hashed once, on the core that
//! decoded it; the hash picks the owner core and travels with the key, so the owner never hashes
//! it again. Keys owned by the decoding core never leave it. Keys for other cores are copied into
//! a [`Batch`] per destination (one arena of key bytes plus fixed-size records) and sent as one
//! message over the SPSC ring between the two cores, as Seastar does.
//!
//! hashbrown buckets a key with the low bits of its hash and tags it with the top 7 bits. The
//! owner is therefore chosen from bits 32..57, which neither uses, so the keys that land on one
//! core still spread evenly over that core's table.

use std::hash::BuildHasher;

/// The hash function every core shares. One instance is created per engine and cloned to every
/// core, so that the decoding core and the owner agree on every hash.
pub type KeyHasher = foldhash::fast::FixedState;

/// Maps keys to their owner core.
///
/// ```
/// use bettong_engine::routing::Router;
/// let router = Router::new(4, 7);
/// let h = router.hash("word");
/// assert_eq!(h, router.hash("word"));
/// assert!(router.owner(h) < 4);
/// ```
#[derive(Clone, Debug)]
pub struct Router {
    cores: usize,
    hasher: KeyHasher,
}

/// Bits of the hash used for routing: 25 bits starting at bit 32.
const ROUTE_SHIFT: u32 = 32;
const ROUTE_BITS: u32 = 25;

impl Router {
    /// A router over `cores` cores whose hash function is seeded with `seed`.
    pub fn new(cores: usize, seed: u64) -> Self {
        assert!(cores > 0, "a router needs at least one core");
        Router {
            cores,
            hasher: KeyHasher::with_seed(seed),
        }
    }

    /// Number of cores keys are spread over.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The key's hash, computed once and carried with it.
    #[inline]
    pub fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The core that owns keys with this hash.
    #[inline]
    pub fn owner(&self, hash: u64) -> usize {
        let bits = (hash >> ROUTE_SHIFT) & ((1 << ROUTE_BITS) - 1);
        ((bits * self.cores as u64) >> ROUTE_BITS) as usize
    }
}

/// One routed record inside a [`Batch`]: the key's place in the batch's arena, its hash and the
/// value that goes with it.
#[derive(Debug, Clone, Copy)]
struct Routed<V> {
    hash: u64,
    start: u32,
    len: u32,
    value: V,
}

/// Keyed records bound for one core: the unit of cross-core traffic.
///
/// ```
/// use bettong_engine::routing::Batch;
/// let mut b: Batch<()> = Batch::default();
/// b.push(42, "hello", ());
/// let recs: Vec<_> = b.iter().map(|(h, k, _)| (h, k.to_string())).collect();
/// assert_eq!(recs, vec![(42, "hello".to_string())]);
/// ```
#[derive(Debug)]
pub struct Batch<V> {
    arena: String,
    records: Vec<Routed<V>>,
    /// When the oldest record in the batch arrived at the engine, for latency histograms.
    pub born: Option<std::time::Instant>,
}

impl<V> Default for Batch<V> {
    fn default() -> Self {
        Batch {
            arena: String::new(),
            records: Vec::new(),
            born: None,
        }
    }
}

impl<V: Copy> Batch<V> {
    /// An empty batch with room for `records` records of about `key_bytes` bytes of keys.
    pub fn with_capacity(records: usize, key_bytes: usize) -> Self {
        Batch {
            arena: String::with_capacity(key_bytes),
            records: Vec::with_capacity(records),
            born: None,
        }
    }

    /// Copies `key` into the batch.
    #[inline]
    pub fn push(&mut self, hash: u64, key: &str, value: V) {
        let start = self.arena.len() as u32;
        self.arena.push_str(key);
        self.records.push(Routed {
            hash,
            start,
            len: key.len() as u32,
            value,
        });
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of key data held.
    pub fn key_bytes(&self) -> usize {
        self.arena.len()
    }

    /// The records, in the order they were pushed: `(hash, key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str, V)> + '_ {
        self.records.iter().map(move |r| {
            let key = &self.arena[r.start as usize..(r.start + r.len) as usize];
            (r.hash, key, r.value)
        })
    }
}

/// Messages on the ring from one core to another.
#[derive(Debug)]
pub enum Envelope<V> {
    /// Records owned by the receiving core.
    Batch(Batch<V>),
    /// The sending core has delivered everything it will ever send: its sources are finished.
    Done,
    /// Checkpoint barrier: every record the sending core read before its cut for this
    /// checkpoint came before it on this ring, and every record after, after it.
    Barrier(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_spreads_keys_over_all_cores() {
        let router = Router::new(3, 1);
        let mut seen = [0usize; 3];
        for i in 0..30_000 {
            seen[router.owner(router.hash(&format!("key{i}")))] += 1;
        }
        for n in seen {
            assert!((9_000..11_000).contains(&n), "uneven routing: {seen:?}");
        }
    }

    #[test]
    fn same_seed_gives_same_hash_on_clones() {
        let a = Router::new(2, 9);
        let b = a.clone();
        assert_eq!(a.hash("x"), b.hash("x"));
        assert_ne!(Router::new(2, 10).hash("x"), a.hash("x"));
    }
}
