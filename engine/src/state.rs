//! Keyed state: one core's shard of one state step's keys.
//!
//! Each core owns one [`Shard`] per state step and nobody else touches it, so it needs no lock.
//! Entries keep the hash computed by the core that made the key, so a lookup never hashes the
//! key again and the table never rehashes a key when it grows. String and byte keys of up to
//! [`INLINE_KEY`](crate::key::INLINE_KEY) bytes (nearly every word) live inside the table slot
//! itself ([`SmallStr`](crate::key::SmallStr)), so a hit costs no pointer chase.

use hashbrown::hash_table::{Entry as TableEntry, HashTable};

use crate::key::{owned_heap_bytes, Key};

/// One key's slot: its hash, the owned key, and the user's state.
struct Slot<K: ?Sized + Key, S> {
    hash: u64,
    key: K::Owned,
    state: S,
}

/// A core's shard of one state step's keyed state.
///
/// ```
/// use bettong_engine::state::Shard;
/// let mut shard: Shard<str, u64> = Shard::new();
/// *shard.get_or_insert_with(7, "word", |_| 0) += 1;
/// *shard.get_or_insert_with(7, "word", |_| 0) += 1;
/// assert_eq!(shard.get(7, "word"), Some(&2));
/// assert_eq!(shard.len(), 1);
/// ```
pub struct Shard<K: ?Sized + Key, S> {
    table: HashTable<Slot<K, S>>,
    key_bytes: usize,
}

impl<K: ?Sized + Key, S> Default for Shard<K, S> {
    fn default() -> Self {
        Shard {
            table: HashTable::new(),
            key_bytes: 0,
        }
    }
}

impl<K: ?Sized + Key, S> Shard<K, S> {
    /// An empty shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `key` (whose hash is `hash`), created with `init(key)` on first sight. The
    /// key is copied only when it is new.
    #[inline]
    pub fn get_or_insert_with(&mut self, hash: u64, key: &K, init: impl FnOnce(&K) -> S) -> &mut S {
        let entry = self.table.entry(
            hash,
            |slot| slot.hash == hash && key.eq_owned(&slot.key),
            |slot| slot.hash,
        );
        match entry {
            TableEntry::Occupied(o) => &mut o.into_mut().state,
            TableEntry::Vacant(v) => {
                let owned = key.to_owned_key();
                self.key_bytes += owned_heap_bytes::<K>(&owned);
                let slot = v.insert(Slot {
                    hash,
                    key: owned,
                    state: init(key),
                });
                &mut slot.into_mut().state
            }
        }
    }

    /// Starts loading into the cache the slot a lookup of `hash` will most likely read, without
    /// waiting for it: a batch's records are applied in order, and calling this a few records
    /// ahead lets the cache misses of successive lookups overlap instead of queueing. Probes
    /// only the first group of control bytes (which fit in the core's cache) and the first slot
    /// whose tag matches; a hint, with no effect on what the shard holds.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(slot) = self.table.iter_hash(hash).next() {
            prefetch_read(slot);
        }
    }

    /// Puts `state` in for an owned key (a restore), replacing any state it had.
    pub fn insert_owned(&mut self, hash: u64, key: K::Owned, state: S) {
        let k = K::borrow_owned(&key);
        match self.table.entry(
            hash,
            |slot| slot.hash == hash && k.eq_owned(&slot.key),
            |slot| slot.hash,
        ) {
            TableEntry::Occupied(mut o) => o.get_mut().state = state,
            TableEntry::Vacant(v) => {
                self.key_bytes += owned_heap_bytes::<K>(&key);
                v.insert(Slot { hash, key, state });
            }
        }
    }

    /// The state of `key`, if it has been seen.
    pub fn get(&self, hash: u64, key: &K) -> Option<&S> {
        self.table
            .find(hash, |slot| slot.hash == hash && key.eq_owned(&slot.key))
            .map(|slot| &slot.state)
    }

    /// Number of distinct keys held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no key has been seen.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Every key and its state, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.table
            .iter()
            .map(|slot| (K::borrow_owned(&slot.key), &slot.state))
    }

    /// Approximate heap bytes held: table slots and control bytes plus long keys. Divided by
    /// [`Shard::len`] it gives the memory cost of one distinct key.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Slot<K, S>>() + 1;
        self.table.capacity() * slot + self.key_bytes
    }
}

/// Asks the CPU to bring `*p`'s cache line into its caches (a no-op off x86-64).
#[inline(always)]
fn prefetch_read<T>(p: &T) {
    // SAFETY: `_mm_prefetch` only hints the cache; it never faults and has no effect the
    // program can observe, and `p` is a live reference anyway. SSE is part of x86-64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (p as *const T).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::INLINE_KEY;

    #[test]
    fn short_and_long_keys_are_found_and_kept_apart() {
        let mut shard: Shard<str, u64> = Shard::new();
        let long = "x".repeat(INLINE_KEY + 1);
        let exact = "y".repeat(INLINE_KEY);
        for (i, k) in ["a", exact.as_str(), long.as_str(), ""].iter().enumerate() {
            *shard.get_or_insert_with(1, k, |_| 0) += i as u64 + 1;
        }
        assert_eq!(shard.get(1, "a"), Some(&1));
        assert_eq!(shard.get(1, &exact), Some(&2));
        assert_eq!(shard.get(1, &long), Some(&3));
        assert_eq!(shard.get(1, ""), Some(&4));
        assert_eq!(shard.get(1, "b"), None);
        let mut keys: Vec<&str> = shard.iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, ["", "a", long.as_str(), exact.as_str()]);
        assert!(shard.heap_bytes() >= long.len());
    }

    #[test]
    fn prefetch_is_only_a_hint() {
        let mut shard: Shard<str, u64> = Shard::new();
        shard.prefetch(0); // an empty table has no slot to point at
        for i in 0..1000u64 {
            *shard.get_or_insert_with(
                i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                &i.to_string(),
                |_| i,
            ) += 1;
        }
        for h in [0, 1, u64::MAX, 0x9e37_79b9_7f4a_7c15] {
            shard.prefetch(h);
        }
        assert_eq!(shard.len(), 1000);
        assert_eq!(shard.get(0x9e37_79b9_7f4a_7c15, "1"), Some(&2));
    }

    #[test]
    fn typed_keys_and_restores() {
        let mut shard: Shard<[u8; 4], f64> = Shard::new();
        *shard.get_or_insert_with(3, b"IBM ", |_| 1.0) += 1.0;
        shard.insert_owned(3, *b"AAPL", 5.0);
        shard.insert_owned(3, *b"IBM ", 7.0);
        assert_eq!(shard.get(3, b"IBM "), Some(&7.0));
        assert_eq!(shard.get(3, b"AAPL"), Some(&5.0));
        assert_eq!(shard.len(), 2);
    }
}
