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
    fn partition_is_in_range() {
        for w in ["rose", "is", "a", "ünïcode"] {
            assert!(key_partition(w, 64) < 64);
            assert_eq!(key_partition(w, 1), 0);
        }
    }
}
