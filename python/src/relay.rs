//! Process mode, the engine's side: the pipeline that routes the front workers' keyed records
//! to their keys' owner cores and hands them to those cores' state workers.
//!
//! Each core's reads go to its front worker ([`bettong_engine::Offload`]), whose answer is a
//! batch of keyed records ([`crate::wire`]). This pipeline decodes each, hashes its key,
//! routes it between cores (in Rust, batched, as for any pipeline), and on the owner core
//! writes it, unchanged, to the core's sink: a connection to that core's state worker. No
//! Python runs in the engine's process, so its cores never wait for a lock.

use bettong_engine::{DecodeError, PersistApp, Pipeline};

use crate::wire::{put_frame, split_keyed};

/// The pipeline for `sources` sources: keyed records in, the same records out on their owner
/// core's sink.
pub fn relay(sources: usize) -> impl PersistApp {
    let front = |_| {
        Pipeline::decode(|frame: &[u8]| {
            let (key, _) = split_keyed(frame).ok_or(DecodeError::new(
                "a keyed record from a front worker is truncated",
            ))?;
            Ok((key.to_vec(), frame.to_vec()))
        })
        .key_by(|kv: (Vec<u8>, Vec<u8>)| kv)
    };
    let rest = (1..sources.max(1)).map(front).collect();
    front(0)
        .merge_all(rest)
        .state_with(
            |_: &Vec<u8>| (),
            |_: &Vec<u8>, _: &mut (), record: Vec<u8>| Some(record),
        )
        .encode(|_, record: &Vec<u8>, out: &mut Vec<u8>| put_frame(out, record))
}
