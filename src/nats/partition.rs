//! The key partition of a word: `fnv1a32(word) % P`, the function NATS's own `partition()`
//! subject mapping uses, so a NATS-side mapping and Bettong agree (`spec/cluster.md`).

/// 32-bit FNV-1a of `bytes` (offset basis 2166136261, prime 16777619).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// The key partition of `word` among `partitions`.
pub fn key_partition(word: &str, partitions: u32) -> u32 {
    fnv1a32(word.as_bytes()) % partitions
}

/// `x % d` for any 32-bit `x` by a multiplication instead of a division (Lemire's "fastmod":
/// `d`'s 64-bit reciprocal, computed once). The hot loops take a key partition per word, and
/// the division was 9% of a member's samples in a 2-member profile.
#[derive(Debug, Clone, Copy)]
pub struct Modulo {
    m: u64,
    d: u32,
}

impl Modulo {
    /// Reduces modulo `d` (at least 1).
    pub fn new(d: u32) -> Self {
        let d = d.max(1);
        Modulo {
            m: (u64::MAX / u64::from(d)).wrapping_add(1),
            d,
        }
    }

    /// `x % d`.
    #[inline]
    pub fn of(&self, x: u32) -> u32 {
        let low = self.m.wrapping_mul(u64::from(x));
        ((u128::from(low) * u128::from(self.d)) >> 64) as u32
    }

    /// The key partition of `key`: `fnv1a32(key) % d`.
    #[inline]
    pub fn partition(&self, key: &[u8]) -> u32 {
        self.of(fnv1a32(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_published_fnv1a32_vectors() {
        // Reference values of 32-bit FNV-1a (Fowler/Noll/Vo test suite).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn modulo_equals_the_remainder() {
        for d in [1u32, 2, 3, 7, 8, 16, 64, 100, 4096, u32::MAX - 1, u32::MAX] {
            let m = Modulo::new(d);
            for x in [
                0u32,
                1,
                2,
                63,
                64,
                65,
                12345,
                0x811c_9dc5,
                u32::MAX - 1,
                u32::MAX,
            ] {
                assert_eq!(m.of(x), x % d, "{x} % {d}");
            }
        }
        let mut x = 1u32;
        for _ in 0..100_000 {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            for d in [5u32, 64, 977] {
                assert_eq!(Modulo::new(d).of(x), x % d);
            }
        }
        assert_eq!(
            Modulo::new(64).partition(b"rose"),
            key_partition("rose", 64)
        );
    }

    #[test]
    fn partition_is_in_range() {
        for w in ["rose", "is", "a", "ünïcode"] {
            assert!(key_partition(w, 64) < 64);
            assert_eq!(key_partition(w, 1), 0);
        }
    }
}
