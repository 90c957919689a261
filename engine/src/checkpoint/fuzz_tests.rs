//! Property tests over arbitrary bytes for the checkpoint parsers (issue 10, "Also"): the
//! manifest text, the entries of a shard body and a shard file's checks never panic, reject
//! what is damaged with an error, and read back exactly what the writers wrote.

use proptest::prelude::*;

use super::super::format::{
    check_shard, entries, push_entry, write_shard, Manifest, ShardContent, ShardInfo,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes: `Manifest::parse` returns, never panics; what it accepts prints back to text
    /// that parses to the same manifest.
    #[test]
    fn manifest_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(m) = Manifest::parse(&bytes) {
            let again = Manifest::parse(m.to_text().as_bytes()).expect("its own text parses");
            prop_assert_eq!(again.to_text(), m.to_text());
        }
    }

    /// A valid manifest with one byte changed, or cut short, is refused (its CRC line), never a
    /// panic.
    #[test]
    fn damaged_manifest_is_refused(
        keys in 0u64..1000, at in any::<prop::sample::Index>(), flip in 1u8..=255, cut in any::<prop::sample::Index>(),
    ) {
        let text = manifest_text(keys);
        let mut bad = text.clone().into_bytes();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        // Refused, unless the change means the same (the case of a hex digit).
        if let Ok(m) = Manifest::parse(&bad) {
            prop_assert_eq!(m.to_text(), text.clone(), "a flipped byte at {} changed the manifest", i);
        }
        let c = cut.index(text.len());
        prop_assert!(Manifest::parse(&text.as_bytes()[..c]).is_err(), "cut at {} was accepted", c);
    }

    /// Any bytes as a shard body: `entries` ends (each item a slice of the body, or one error
    /// and then nothing), never panics.
    #[test]
    fn entries_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut n = 0usize;
        let mut errors = 0usize;
        for e in entries(&bytes) {
            n += 1;
            match e {
                Ok((_, k, v)) => prop_assert!(k.len() + v.len() <= bytes.len()),
                Err(_) => errors += 1,
            }
            prop_assert!(errors <= 1 && n <= bytes.len() + 1);
        }
    }

    /// What `push_entry` writes, `entries` reads back exactly; cut short, it ends in an error.
    #[test]
    fn entries_round_trip(
        items in proptest::collection::vec(
            (0usize..4, proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..40)),
            1..20,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = Vec::new();
        for (s, k, v) in &items {
            push_entry(&mut body, *s, k, v);
        }
        let back: Vec<(usize, Vec<u8>, Vec<u8>)> = entries(&body)
            .map(|e| e.map(|(s, k, v)| (s, k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("a whole body reads back");
        prop_assert_eq!(&back, &items);
        let c = cut.index(body.len());
        let read: Vec<_> = entries(&body[..c]).collect();
        // A prefix either ends on an entry boundary or its last item is an error.
        if let Some(Err(_)) = read.last() {
        } else {
            let mut b = Vec::new();
            for e in &read {
                let (s, k, v) = e.as_ref().unwrap();
                push_entry(&mut b, *s, k, v);
            }
            prop_assert_eq!(&b[..], &body[..c]);
        }
    }

    /// Any bytes as a shard file, checked against any manifest record: an error or a body,
    /// never a panic; a real shard file with a byte changed is refused.
    #[test]
    fn check_shard_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        keys in 0u64..4, log in 0u64..4, crc in any::<u32>(), id in 0u64..3, cores in 1usize..3,
        exact_len in any::<bool>(),
    ) {
        let info = ShardInfo {
            core: 0,
            keys,
            log,
            bytes: if exact_len { bytes.len() as u64 } else { 77 },
            crc,
        };
        if let Ok(body) = check_shard(&bytes, &info, id, cores) {
            prop_assert!(body.len() <= bytes.len());
        }
    }

    #[test]
    fn damaged_shard_file_is_refused(
        items in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..20), proptest::collection::vec(any::<u8>(), 0..20)), 0..10),
        at in any::<prop::sample::Index>(), flip in 1u8..=255,
    ) {
        let dir = std::env::temp_dir().join(format!("bettong-fuzz-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut state = Vec::new();
        for (k, v) in &items {
            push_entry(&mut state, 0, k, v);
        }
        let content = ShardContent { core: 0, keys: items.len() as u64, state: &state, log: 0, log_body: &[] };
        let info = write_shard(&dir, 5, 1, &content).expect("write a shard");
        let path = dir.join(super::super::format::shard_file_name(0));
        let good = std::fs::read(&path).unwrap();
        prop_assert_eq!(check_shard(&good, &info, 5, 1).expect("a good shard passes"), &state[..]);
        let mut bad = good.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        prop_assert!(check_shard(&bad, &info, 5, 1).is_err(), "byte {} changed was accepted", i);
        prop_assert!(check_shard(&good[..good.len() - 1], &info, 5, 1).is_err());
    }
}

/// The text of a valid manifest with one shard (written out, so it does not depend on the
/// struct's fields).
fn manifest_text(keys: u64) -> String {
    let body = format!(
        "bettong checkpoint manifest v1\nid 3\ncreated_unix_ms 1700000000000\ncores 1\n\
         shard 0 keys {keys} log 0 bytes {} crc32 deadbeef\nsource tcp\n",
        100 + keys
    );
    let crc = crc32fast::hash(body.as_bytes());
    let text = format!("{body}crc32 {crc:08x}\n");
    Manifest::parse(text.as_bytes()).expect("the hand-written manifest parses");
    text
}
