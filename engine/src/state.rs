//! Keyed state: one core's shard of every key's state.
//!
//! Each core owns one [`Shard`] and nobody else touches it, so it needs no lock. Entries keep the
//! hash computed by the decoding core, so a lookup never hashes the key again and the table
//! never rehashes a key when it grows.

use hashbrown::hash_table::{Entry as TableEntry, HashTable};

/// One key's slot: its hash, an owned copy of the key, and the user's state.
#[derive(Debug)]
struct Slot<S> {
    hash: u64,
    key: Box<str>,
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
            |slot| slot.hash == hash && &*slot.key == key,
            |slot| slot.hash,
        );
        match entry {
            TableEntry::Occupied(o) => &mut o.into_mut().state,
            TableEntry::Vacant(v) => {
                self.key_bytes += key.len();
                let slot = v.insert(Slot {
                    hash,
                    key: key.into(),
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
            .find(hash, |slot| slot.hash == hash && &*slot.key == key)
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
        self.table.iter().map(|slot| (&*slot.key, &slot.state))
    }

    /// Approximate heap bytes held: table slots and control bytes plus key bytes. Divided by
    /// [`Shard::len`] it gives the memory cost of one distinct key.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Slot<S>>() + 1;
        self.table.capacity() * slot + self.key_bytes
    }
}
