//! Keyed state: one core's shard of every key's state.
//!
//! Each core owns one [`Shard`] and nobody else touches it, so it needs no lock. Entries keep the
//! hash computed by the decoding core, so a lookup never hashes the key again and the table
//! never rehashes a key when it grows. Keys of up to [`INLINE_KEY`] bytes (nearly every word)
//! live inside the table slot itself, so a hit costs no pointer chase to a separate allocation.

use hashbrown::hash_table::{Entry as TableEntry, HashTable};

/// Longest key stored inline in its table slot; longer keys get their own allocation.
pub const INLINE_KEY: usize = 23;

/// An owned copy of a key: inline when short, boxed otherwise.
#[derive(Debug)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl Key {
    fn new(key: &str) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key.as_bytes());
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..*len as usize],
            Key::Heap(b) => b.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        // Built from a &str, so always valid UTF-8; checked anyway since this is off the hot path.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline { .. } => 0,
            Key::Heap(b) => b.len(),
        }
    }
}

/// One key's slot: its hash, an owned copy of the key, and the user's state.
#[derive(Debug)]
struct Slot<S> {
    hash: u64,
    key: Key,
    state: S,
}

/// A core's shard of keyed state.
///
/// ```
/// use bettong_engine::state::Shard;
/// let mut shard: Shard<u64> = Shard::new();
/// *shard.get_or_default(7, "word") += 1;
/// *shard.get_or_default(7, "word") += 1;
/// assert_eq!(shard.get(7, "word"), Some(&2));
/// assert_eq!(shard.len(), 1);
/// ```
#[derive(Debug)]
pub struct Shard<S> {
    table: HashTable<Slot<S>>,
    key_bytes: usize,
}

impl<S> Default for Shard<S> {
    fn default() -> Self {
        Shard {
            table: HashTable::new(),
            key_bytes: 0,
        }
    }
}

impl<S: Default> Shard<S> {
    /// An empty shard.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `key` (whose hash is `hash`), created with `S::default()` on first sight.
    /// The key is copied only when it is new.
    #[inline]
    pub fn get_or_default(&mut self, hash: u64, key: &str) -> &mut S {
        let entry = self.table.entry(
            hash,
            |slot| slot.hash == hash && slot.key.as_bytes() == key.as_bytes(),
            |slot| slot.hash,
        );
        match entry {
            TableEntry::Occupied(o) => &mut o.into_mut().state,
            TableEntry::Vacant(v) => {
                let key = Key::new(key);
                self.key_bytes += key.heap_bytes();
                let slot = v.insert(Slot {
                    hash,
                    key,
                    state: S::default(),
                });
                &mut slot.into_mut().state
            }
        }
    }
}

impl<S> Shard<S> {
    /// The state of `key`, if it has been seen.
    pub fn get(&self, hash: u64, key: &str) -> Option<&S> {
        self.table
            .find(hash, |slot| {
                slot.hash == hash && slot.key.as_bytes() == key.as_bytes()
            })
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
    pub fn iter(&self) -> impl Iterator<Item = (&str, &S)> {
        self.table
            .iter()
            .map(|slot| (slot.key.as_str(), &slot.state))
    }

    /// Approximate heap bytes held: table slots and control bytes plus long keys. Divided by
    /// [`Shard::len`] it gives the memory cost of one distinct key.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Slot<S>>() + 1;
        self.table.capacity() * slot + self.key_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_keys_are_found_and_kept_apart() {
        let mut shard: Shard<u64> = Shard::new();
        let long = "x".repeat(INLINE_KEY + 1);
        let exact = "y".repeat(INLINE_KEY);
        for (i, k) in ["a", exact.as_str(), long.as_str(), ""].iter().enumerate() {
            *shard.get_or_default(1, k) += i as u64 + 1;
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
}
