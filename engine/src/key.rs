//! Keys: what [`key_by`](crate::pipeline) may return, and the owned form a key takes when it is
//! stored in a shard or crosses cores.
//!
//! A key is hashed once, on the core that made it, and the hash travels with it. Where a key
//! is borrowed (a word sliced out of the read buffer), it stays borrowed until it must be
//! owned: when it becomes a new key in a shard, or when it travels to another core. Short
//! string and byte keys are then kept inline ([`SmallStr`], [`SmallBytes`]), so owning one
//! costs a 24-byte copy and no allocation.
//!
//! [`Key`] is implemented for `str`, `[u8]`, and every sized `Hash + Eq + Clone + Send` type
//! (integers, `String`, `[u8; N]`, tuples, your own structs), whose owned form is itself.
//! [`PersistKey`] says how a key is written into a checkpoint.

use std::hash::Hash;
use std::num::NonZeroU8;

/// A key as `key_by` produces it (possibly borrowed), with its owned form.
///
/// ```
/// use bettong_engine::key::Key;
/// let owned = "word".to_owned_key();
/// assert_eq!(<str as Key>::borrow_owned(&owned), "word");
/// assert!("word".eq_owned(&owned));
/// assert_eq!(7u32.to_owned_key(), 7);
/// ```
pub trait Key: Hash + Eq {
    /// What the engine keeps in a shard and moves between cores.
    type Owned: Send + 'static;
    /// Makes the owned form (a copy).
    fn to_owned_key(&self) -> Self::Owned;
    /// Views an owned key as the type the user's functions see.
    fn borrow_owned(owned: &Self::Owned) -> &Self;
    /// True when `owned` is this key (the shard's lookup; by default through
    /// [`Key::borrow_owned`]).
    #[inline]
    fn eq_owned(&self, owned: &Self::Owned) -> bool {
        Self::borrow_owned(owned) == self
    }
    /// The key's length in bytes where a length is meaningful (`str`, `[u8]`, `String`,
    /// `Vec<u8>`), checked against the engine's
    /// [`max_key_bytes`](crate::Engine::max_key_bytes); `None` for every other key, which is
    /// then never too long.
    ///
    /// ```
    /// use bettong_engine::key::Key;
    /// assert_eq!("word".byte_len(), Some(4));
    /// assert_eq!(b"ab"[..].byte_len(), Some(2));
    /// assert_eq!(String::from("abc").byte_len(), Some(3));
    /// assert_eq!(7u32.byte_len(), None);
    /// ```
    #[inline]
    fn byte_len(&self) -> Option<usize> {
        None
    }
}

impl<T: Hash + Eq + Clone + Send + 'static> Key for T {
    type Owned = T;
    #[inline]
    fn to_owned_key(&self) -> T {
        self.clone()
    }
    #[inline]
    fn borrow_owned(owned: &T) -> &T {
        owned
    }
    #[inline]
    fn byte_len(&self) -> Option<usize> {
        // Resolved at compile time for each `T`.
        let any: &dyn std::any::Any = self;
        if let Some(s) = any.downcast_ref::<String>() {
            Some(s.len())
        } else {
            any.downcast_ref::<Vec<u8>>().map(Vec::len)
        }
    }
}

/// Heap bytes an owned key holds outside its own `size_of` (string and byte keys past the
/// inline size, `String` and `Vec<u8>` keys); 0 for every other key. For the byte estimate of
/// a batch crossing cores and for a shard's `state_bytes`.
#[inline]
pub(crate) fn owned_heap_bytes<K: ?Sized + Key>(owned: &K::Owned) -> usize {
    let any: &dyn std::any::Any = owned;
    if let Some(s) = any.downcast_ref::<SmallStr>() {
        s.heap_bytes()
    } else if let Some(b) = any.downcast_ref::<SmallBytes>() {
        b.heap_bytes()
    } else if let Some(s) = any.downcast_ref::<String>() {
        s.capacity()
    } else if let Some(v) = any.downcast_ref::<Vec<u8>>() {
        v.capacity()
    } else {
        0
    }
}

/// Longest key stored inline; longer keys get their own allocation.
pub const INLINE_KEY: usize = 23;

/// Owned bytes, inline up to [`INLINE_KEY`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallBytes(Repr);

///
/// The inline length is stored plus one as a `NonZeroU8`, which leaves the value 0 free for
/// the compiler to mark the heap variant: the whole key is 24 bytes, not 32, which matters in
/// every batch that crosses cores and in every shard slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    Inline {
        len_plus_one: NonZeroU8,
        bytes: [u8; INLINE_KEY],
    },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    /// A copy of `b`.
    #[inline]
    pub fn new(b: &[u8]) -> Self {
        if b.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..b.len()].copy_from_slice(b);
            // INLINE_KEY + 1 fits a u8 and is never 0.
            let len_plus_one = NonZeroU8::new(b.len() as u8 + 1).unwrap_or(NonZeroU8::MIN);
            SmallBytes(Repr::Inline {
                len_plus_one,
                bytes,
            })
        } else {
            SmallBytes(Repr::Heap(b.into()))
        }
    }

    /// The bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline {
                len_plus_one,
                bytes,
            } => &bytes[..len_plus_one.get() as usize - 1],
            Repr::Heap(b) => b,
        }
    }

    /// Heap bytes held beside the inline slot (0 for short keys).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(b) => b.len(),
        }
    }
}

/// An owned string key, inline up to [`INLINE_KEY`] bytes. Only made from a `&str`, so it
/// always holds UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallStr(SmallBytes);

impl SmallStr {
    /// A copy of `s`.
    #[inline]
    pub fn new(s: &str) -> Self {
        SmallStr(SmallBytes::new(s.as_bytes()))
    }

    /// The string.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: a `SmallStr` is only made by `SmallStr::new` from a whole `&str` (its field is
        // private and never mutated), and `SmallBytes` gives back exactly the bytes it copied,
        // so they are valid UTF-8. Measured: the checked `from_utf8` here cost about 3 % of
        // word count's in-process run (every word routed to another core is viewed as `&str`
        // once by the state step and once by the encoder); see the test
        // `small_str_gives_back_the_exact_string` for the property this relies on.
        unsafe { std::str::from_utf8_unchecked(self.0.as_bytes()) }
    }

    /// The string's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Heap bytes held beside the inline slot (0 for short keys).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }
}

impl Key for str {
    type Owned = SmallStr;
    #[inline]
    fn to_owned_key(&self) -> SmallStr {
        SmallStr::new(self)
    }
    #[inline]
    fn borrow_owned(owned: &SmallStr) -> &str {
        owned.as_str()
    }
    #[inline]
    fn eq_owned(&self, owned: &SmallStr) -> bool {
        owned.as_bytes() == self.as_bytes()
    }
    #[inline]
    fn byte_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

impl Key for [u8] {
    type Owned = SmallBytes;
    #[inline]
    fn to_owned_key(&self) -> SmallBytes {
        SmallBytes::new(self)
    }
    #[inline]
    fn borrow_owned(owned: &SmallBytes) -> &[u8] {
        owned.as_bytes()
    }
    #[inline]
    fn byte_len(&self) -> Option<usize> {
        Some(self.len())
    }
}

/// How a key is written into a checkpoint and read back. Implemented for `str`, `[u8]`,
/// `String`, `Vec<u8>`, byte arrays and the integers; implement it for your own key type to
/// checkpoint a pipeline keyed by it.
///
/// ```
/// use bettong_engine::key::{Key, PersistKey};
/// let mut out = Vec::new();
/// 513u32.write_key(&mut out);
/// assert_eq!(u32::read_key(&out), Some(513));
/// out.clear();
/// "w".write_key(&mut out);
/// assert_eq!(str::borrow_owned(&str::read_key(&out).unwrap()), "w");
/// ```
pub trait PersistKey: Key {
    /// Appends the key's bytes (the checkpoint records their length).
    fn write_key(&self, out: &mut Vec<u8>);
    /// Reads a key written by [`PersistKey::write_key`]; `None` if `bytes` are not one.
    fn read_key(bytes: &[u8]) -> Option<Self::Owned>;
}

impl PersistKey for str {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn read_key(bytes: &[u8]) -> Option<SmallStr> {
        std::str::from_utf8(bytes).ok().map(SmallStr::new)
    }
}

impl PersistKey for [u8] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Option<SmallBytes> {
        Some(SmallBytes::new(bytes))
    }
}

impl PersistKey for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn read_key(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl PersistKey for Vec<u8> {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

impl<const N: usize> PersistKey for [u8; N] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read_key(bytes: &[u8]) -> Option<[u8; N]> {
        bytes.try_into().ok()
    }
}

macro_rules! int_keys {
    ($($t:ty),*) => {$(
        impl PersistKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn read_key(bytes: &[u8]) -> Option<$t> {
                Some(<$t>::from_be_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
int_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_keys_take_24_bytes() {
        assert_eq!(std::mem::size_of::<SmallBytes>(), 24);
        assert_eq!(std::mem::size_of::<SmallStr>(), 24);
    }

    #[test]
    fn small_str_gives_back_the_exact_string() {
        // Multi-byte characters at and across the inline limit, empty, long.
        let cases = [
            String::new(),
            "ß".repeat(11),                 // 22 bytes
            format!("{}é", "a".repeat(21)), // 23 bytes, the last char 2 bytes
            format!("{}é", "a".repeat(22)), // 24 bytes: on the heap
            "🦘".repeat(6),                 // 24 bytes of 4-byte chars
            "x".repeat(1000),
        ];
        for c in &cases {
            let s = SmallStr::new(c);
            assert_eq!(s.as_str(), c.as_str());
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
            assert_eq!(s.clone().as_str(), c.as_str());
        }
    }

    #[test]
    fn short_and_long_keys_round_trip() {
        let long = "x".repeat(INLINE_KEY + 1);
        let exact = "y".repeat(INLINE_KEY);
        for k in ["", "a", exact.as_str(), long.as_str()] {
            let o = k.to_owned_key();
            assert_eq!(<str as Key>::borrow_owned(&o), k);
            assert!(k.eq_owned(&o));
            assert!(!"other".eq_owned(&o));
            assert_eq!(
                o.heap_bytes(),
                if k.len() > INLINE_KEY { k.len() } else { 0 }
            );
            let mut b = Vec::new();
            k.write_key(&mut b);
            assert_eq!(str::read_key(&b), Some(o));
        }
        assert_eq!(str::read_key(&[0xff]), None);
        assert_eq!(<[u8; 4]>::read_key(b"abc"), None);
        assert_eq!(<[u8; 4]>::read_key(b"abcd"), Some(*b"abcd"));
    }

    #[test]
    fn byte_len_and_heap_bytes_of_each_kind_of_key() {
        let long = "x".repeat(100);
        assert_eq!(long.as_str().byte_len(), Some(100));
        assert_eq!(long.as_bytes().byte_len(), Some(100));
        assert_eq!(long.clone().into_bytes().byte_len(), Some(100));
        assert_eq!([0u8; 4].byte_len(), None);
        assert_eq!((1u32, 2u64).byte_len(), None);
        assert_eq!(owned_heap_bytes::<str>(&"a".to_owned_key()), 0);
        assert_eq!(owned_heap_bytes::<str>(&long.as_str().to_owned_key()), 100);
        assert_eq!(
            owned_heap_bytes::<[u8]>(&long.as_bytes().to_owned_key()),
            100
        );
        assert!(owned_heap_bytes::<String>(&long) >= 100);
        assert_eq!(owned_heap_bytes::<u64>(&5), 0);
    }
}
