//! `Engine::offload` end to end: every core hands its reads to a helper of its own and the
//! pipeline runs on the helper's answers; a helper that dies loses its batches but never hangs
//! the engine.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use bettong_engine::{Engine, MemorySource, Offload, Pipeline, SinkConfig, SourceConfig};

/// One request: the source index, then its frames.
fn read_request(s: &mut UnixStream) -> Option<(u32, Vec<Vec<u8>>)> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut body).ok()?;
    let source = u32::from_be_bytes(body[..4].try_into().ok()?);
    let frames = bettong_engine::codec::payloads(&body[4..])
        .map(<[u8]>::to_vec)
        .collect();
    Some((source, frames))
}

/// A helper answering each frame with its words, upper-cased, one frame each; after `limit`
/// requests it hangs up.
fn helper(mut s: UnixStream, limit: usize) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut served = 0;
        while served < limit {
            let Some((source, frames)) = read_request(&mut s) else {
                break;
            };
            assert_eq!(source, 0, "one source: every batch names source 0");
            let mut answer = Vec::new();
            for f in frames {
                for w in String::from_utf8(f).unwrap().split_whitespace() {
                    let w = w.to_uppercase();
                    answer.extend_from_slice(&(w.len() as u32).to_be_bytes());
                    answer.extend_from_slice(w.as_bytes());
                }
            }
            s.write_all(&(answer.len() as u32).to_be_bytes()).unwrap();
            s.write_all(&answer).unwrap();
            served += 1;
        }
        served
    })
}

fn count_words() -> impl bettong_engine::App {
    Pipeline::text()
        .key_by(|w: &str| (w, ()))
        .state(|_: &str, n: &mut u64, ()| {
            *n += 1;
            Some(*n)
        })
        .encode(|w: &str, n: &u64, out: &mut Vec<u8>| {
            out.extend_from_slice(format!("{w} {n}\n").as_bytes())
        })
}

#[test]
fn every_core_runs_the_pipeline_on_its_helpers_answers() {
    let (mut fds, mut helpers) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let (ours, theirs) = UnixStream::pair().unwrap();
        fds.push(OwnedFd::from(ours));
        helpers.push(helper(theirs, usize::MAX));
    }
    let frames: Vec<String> = (0..400).map(|i| format!("a b{} c", i % 7)).collect();
    let report = Engine::new()
        .cores(2)
        .offload(Offload::new(fds))
        .run(
            count_words(),
            SourceConfig::Memory(MemorySource::from_frames(frames)),
            SinkConfig::Memory,
        )
        .unwrap();
    let mut last = std::collections::HashMap::new();
    for line in report.output_lines() {
        let (w, n) = line.split_once(' ').unwrap();
        last.insert(w.to_string(), n.parse::<u64>().unwrap());
    }
    assert_eq!(
        last["A"], 400,
        "each frame's words came back upper-cased and were counted"
    );
    assert_eq!(last["C"], 400);
    assert_eq!((0..7).map(|i| last[&format!("B{i}")]).sum::<u64>(), 400);
    assert!(
        !last.contains_key("a"),
        "the source's own frames never reach the pipeline"
    );
    let served: usize = helpers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(served >= 1);
}

#[test]
fn a_helper_that_hangs_up_loses_its_batches_and_the_run_still_ends() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let h = helper(theirs, 1);
    // Frames big enough that the memory source hands them over in several reads.
    let frames: Vec<String> = (0..2000).map(|_| "x ".repeat(200)).collect();
    let report = Engine::new()
        .cores(1)
        .offload(Offload::new(vec![OwnedFd::from(ours)]))
        .run(
            count_words(),
            SourceConfig::Memory(MemorySource::from_frames(frames)),
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(h.join().unwrap(), 1);
    let n = report.output_lines().count();
    assert!(
        n > 0 && n < 2000 * 200,
        "only the first batch was answered: {n} outputs"
    );
}
