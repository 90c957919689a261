//! Routing: which core owns a key, and the per-destination batches that carry keys there.
//!
//! This is the only place where data crosses cores. A key is hashed once, on the core that
//! decoded it; the hash picks the owner core and travels with the key, so the owner never hashes
//! it again. Keys owned by the decoding core never leave it. Records for other cores are moved
//! (keys in their owned form, values as they are: no serialisation) into a [`Batch`] per
//! destination and state step, and sent as one message over the SPSC ring between the two
//! cores, as Seastar does. A chained pipeline routes again at each `key_by`.
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
    seed: u64,
    hasher: KeyHasher,
    max_key_bytes: usize,
}

/// The longest key the engine keeps by default
/// ([`Engine::max_key_bytes`](crate::Engine::max_key_bytes)), in bytes.
pub const DEFAULT_MAX_KEY_BYTES: usize = 256;

/// Most bytes of records (estimated: each record's `size_of` plus its key's heap bytes) one
/// batch between two cores holds; a fuller outbox is split into several batches. A ring holds
/// at most `ring_capacity` batches, so at most `ring_capacity` × this many bytes (64 MiB with
/// the default 64), whatever the frames: a 1 MiB frame of one-letter words makes about 16 MiB
/// of records, sent as several batches.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// A hash seed for one process: taken from the standard library's per-process random keys
/// (which come from the OS's random source), mixed with the time and the process id, so a
/// client cannot choose keys that all land on one core.
pub fn random_seed() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut h);
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        d.as_nanos().hash(&mut h);
    }
    h.finish()
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
            seed,
            hasher: KeyHasher::with_seed(seed),
            max_key_bytes: usize::MAX,
        }
    }

    /// The same router, rejecting keys whose [`byte_len`](crate::key::Key::byte_len) is above
    /// `n` (see [`Router::accepts`]). A new router accepts every key.
    pub fn with_max_key_bytes(mut self, n: usize) -> Self {
        self.max_key_bytes = n;
        self
    }

    /// Number of cores keys are spread over.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The seed of the key hash.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The longest key accepted, in bytes.
    pub fn max_key_bytes(&self) -> usize {
        self.max_key_bytes
    }

    /// False for a key too long to be kept (the engine drops its record and counts it in
    /// `keys_rejected`); keys with no byte length are always accepted.
    ///
    /// ```
    /// use bettong_engine::routing::Router;
    /// let r = Router::new(2, 1).with_max_key_bytes(3);
    /// assert!(r.accepts("abc"));
    /// assert!(!r.accepts("abcd"));
    /// assert!(r.accepts(&123_456u64));
    /// ```
    #[inline]
    pub fn accepts<K: crate::key::Key + ?Sized>(&self, key: &K) -> bool {
        match key.byte_len() {
            Some(n) => n <= self.max_key_bytes,
            None => true,
        }
    }

    /// The key's hash, computed once and carried with it.
    #[inline]
    pub fn hash<K: std::hash::Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The core that owns keys with this hash.
    #[inline]
    pub fn owner(&self, hash: u64) -> usize {
        let bits = (hash >> ROUTE_SHIFT) & ((1 << ROUTE_BITS) - 1);
        ((bits * self.cores as u64) >> ROUTE_BITS) as usize
    }
}

/// Records bound for one core at one state step: the unit of cross-core traffic. Keys are in
/// their owned form ([`Key::Owned`](crate::key::Key::Owned)), which for string keys is an
/// inline copy, so a batch of words costs no allocation per word.
///
/// ```
/// use bettong_engine::routing::Batch;
/// let mut b: Batch<u32, ()> = Batch::default();
/// b.push(42, 7, ());
/// assert_eq!(b.iter().map(|(h, k, _)| (*h, *k)).collect::<Vec<_>>(), [(42, 7)]);
/// ```
#[derive(Debug)]
pub struct Batch<K, V> {
    records: Vec<(u64, K, V)>,
    /// When the oldest record in the batch arrived at the engine, for latency histograms.
    pub born: Option<std::time::Instant>,
}

impl<K, V> Default for Batch<K, V> {
    fn default() -> Self {
        Batch {
            records: Vec::new(),
            born: None,
        }
    }
}

impl<K, V> Batch<K, V> {
    /// An empty batch with room for `records` records.
    pub fn with_capacity(records: usize) -> Self {
        Batch {
            records: Vec::with_capacity(records),
            born: None,
        }
    }

    /// Adds a record.
    #[inline]
    pub fn push(&mut self, hash: u64, key: K, value: V) {
        self.records.push((hash, key, value));
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in the order they were pushed: `(hash, key, value)`.
    pub fn iter(&self) -> impl Iterator<Item = &(u64, K, V)> + '_ {
        self.records.iter()
    }

    /// Takes the records out, in order.
    pub fn into_records(self) -> std::vec::IntoIter<(u64, K, V)> {
        self.records.into_iter()
    }
}

/// A batch whose key and value types are known only to the state step it is for: the rings
/// between cores carry batches of every step of a chained pipeline.
pub(crate) type AnyBatch = Box<dyn std::any::Any + Send>;

/// Messages on the ring from one core to another.
pub(crate) enum Envelope {
    /// Records owned by the receiving core, for state step `stage` (a [`Batch`] of that step's
    /// key and value types), with the arrival time of the oldest.
    Batch {
        stage: usize,
        records: AnyBatch,
        len: usize,
        born: Option<std::time::Instant>,
    },
    /// The sending core will send no more records for state step `stage`. After `Done` of the
    /// last step it sends nothing at all.
    Done { stage: usize },
    /// Checkpoint barrier: every record the sending core read before its cut for this
    /// checkpoint came before it on this ring, and every record after, after it.
    Barrier(u64),
    /// A connection the sending core accepted, for the receiving core to read (it had fewer
    /// open: `tcp/balance.rs`).
    Connection(crate::tcp::balance::Handoff),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_spreads_keys_over_all_cores() {
        let router = Router::new(3, 1);
        let mut seen = [0usize; 3];
        for i in 0..30_000 {
            seen[router.owner(router.hash(format!("key{i}").as_str()))] += 1;
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
        assert_eq!(a.hash(&5u64), b.hash(&5u64));
        assert_eq!(a.seed(), 9);
    }

    #[test]
    fn random_seeds_differ() {
        let seeds: std::collections::HashSet<u64> = (0..100).map(|_| random_seed()).collect();
        assert_eq!(seeds.len(), 100);
    }
}
