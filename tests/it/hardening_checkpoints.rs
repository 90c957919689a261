//! Hardening of the checkpoint directory (issue 10, items 1 and 2, item 5's checkpoint id, and
//! the file fingerprint and TCP-then-file points), against the real binary: a checkpoint the
//! server cannot read is never deleted (the server refuses to start, or with
//! `--start-empty-if-unreadable` moves it aside); a second server on the same directory is
//! refused at once; a checkpoint id that would overflow is refused; a replaced file of the same
//! length is not resumed; a TCP run's checkpoint is not resumed under a file source.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bettong::corpus::{frame_lines, split_frames, BILL_OF_RIGHTS};
use bettong::receive::Receiver;
use bettong_engine::checkpoint;

use crate::support::{diff_counts, reference_counts, run_to_exit, Server, WAIT};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bettong-hardck-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// A sink that takes everything (counts may restart, so it does not validate).
fn sink() -> Receiver {
    Receiver::start("127.0.0.1:0", false).expect("start a receiver")
}

fn counts_of(framed: &[u8]) -> HashMap<String, u64> {
    reference_counts(split_frames(framed).expect("whole frames"))
}

/// `serve --in file:FILE` with checkpoints in `ck`, plus `extra`.
fn file_args(file: &Path, out: &str, ck: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "serve",
        "--in",
        &format!("file:{}", file.display()),
        "--out",
        out,
        "--cores",
        "2",
        "--resilience-dir",
        &ck.display().to_string(),
        "--checkpoint-interval",
        "1h",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs the server to its exit; returns whether it succeeded and its stderr.
fn run(args: &[String]) -> (bool, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stderr) = run_to_exit(&args);
    (status.success(), stderr)
}

/// Entries of `dir` whose name starts with `prefix`, sorted.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Every file of a directory with its bytes.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} is gone: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn damage_manifest(ckpt: &Path) {
    let manifest = ckpt.join("MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x04;
    std::fs::write(&manifest, &bytes).unwrap();
}

/// Item 1: the only checkpoint is damaged. The server refuses to start, naming the directory
/// and why the checkpoint failed, and leaves it byte for byte as it was (before the fix it
/// started from empty state and its first commit deleted it). With
/// `--start-empty-if-unreadable` it starts from empty state and the damaged checkpoint is moved
/// aside, whole.
#[test]
fn unreadable_checkpoints_refuse_the_start_and_are_never_deleted() {
    let dir = scratch("unreadable");
    let framed = frame_lines(BILL_OF_RIGHTS);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let ck = dir.join("checkpoints");
    let receiver = sink();
    let out = receiver.local_addr().to_string();
    let (ok, log) = run(&file_args(&file, &out, &ck, &[]));
    assert!(ok, "first run failed:\n{log}");
    let ckpts = named(&ck, "ckpt-");
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let damaged = &ckpts[0];
    damage_manifest(damaged);
    let before = contents(damaged);

    let (ok, log) = run(&file_args(&file, &out, &ck, &[]));
    assert!(!ok, "the server started over a damaged checkpoint:\n{log}");
    assert!(
        log.contains(&ck.display().to_string())
            && log.contains("none of them can be read")
            && log.contains("its CRC does not match"),
        "the refusal does not name the directory and why the checkpoint failed:\n{log}"
    );
    assert_eq!(
        contents(damaged),
        before,
        "the damaged checkpoint was changed"
    );

    // Asked to start empty: it does, and the damaged checkpoint is moved aside, whole.
    let (ok, log) = run(&file_args(
        &file,
        &out,
        &ck,
        &["--start-empty-if-unreadable"],
    ));
    assert!(ok, "--start-empty-if-unreadable did not start:\n{log}");
    assert!(
        !damaged.exists(),
        "the damaged checkpoint was not moved aside"
    );
    let aside = named(&ck, "unreadable-ckpt-");
    assert_eq!(aside.len(), 1, "moved aside: {aside:?}\n{log}");
    assert_eq!(contents(&aside[0]), before, "the moved checkpoint changed");
    assert!(
        log.contains("moved aside to"),
        "the move is not logged:\n{log}"
    );
    // The run started from empty state: the checkpoint holds the file's counts once.
    let latest = checkpoint::latest::<u64>(&ck)
        .unwrap()
        .expect("a checkpoint");
    let got: HashMap<String, u64> = latest.state.into_iter().collect();
    assert_eq!(diff_counts(&counts_of(&framed), &got), "");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 1, GC: a newer checkpoint that cannot be read while an older one can. The older one
/// is restored, and the unreadable one is kept (moved aside), not deleted by the next commit.
#[test]
fn an_unreadable_newer_checkpoint_survives_the_next_commit() {
    let dir = scratch("gc");
    let framed = frame_lines(BILL_OF_RIGHTS);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let ck = dir.join("checkpoints");
    let receiver = sink();
    let out = receiver.local_addr().to_string();
    let args = file_args(&file, &out, &ck, &[]);
    assert!(run(&args).0);
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(&framed).unwrap();
    }
    assert!(run(&args).0);
    let ckpts = named(&ck, "ckpt-");
    assert_eq!(ckpts.len(), 2, "{ckpts:?}");
    let newest = &ckpts[1];
    let shard = newest.join("shard-0.bin");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let before = contents(newest);
    let (ok, log) = run(&args);
    assert!(
        ok,
        "the run falling back to the older checkpoint failed:\n{log}"
    );
    assert!(log.contains("restored checkpoint"), "{log}");
    let kept: Vec<PathBuf> = named(&ck, "ckpt-")
        .into_iter()
        .chain(named(&ck, "unreadable-ckpt-"))
        .filter(|p| contents(p) == before)
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the unreadable checkpoint {} was deleted; the directory holds {:?}; log:\n{log}",
        newest.display(),
        std::fs::read_dir(&ck)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 2: a second server on the same directory exits at once, non-zero, naming the directory
/// and the first server's pid; the first keeps running.
#[test]
fn a_second_server_on_the_same_directory_is_refused_at_once() {
    let dir = scratch("lock");
    let ck = dir.join("checkpoints");
    let ck_s = ck.display().to_string();
    let receiver = sink();
    let extra = ["--resilience-dir", ck_s.as_str()];
    let mut first = Server::serve("127.0.0.1:0", receiver.local_addr(), &extra);
    let started = Instant::now();
    let mut second = Server::spawn(&[
        "serve",
        "--in",
        "127.0.0.1:0",
        "--out",
        &receiver.local_addr().to_string(),
        "--cores",
        "2",
        "--resilience-dir",
        &ck_s,
    ]);
    let status = second.wait_exit(WAIT);
    let log = second.stderr();
    assert!(!status.success(), "the second server ran:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second server took {:?} to give up",
        started.elapsed()
    );
    assert!(
        log.contains(&ck_s) && log.contains(&format!("pid {}", first.pid())),
        "the refusal does not name the directory and the holder's pid:\n{log}"
    );
    assert!(
        second.event("ready").is_none(),
        "the second server said it was ready"
    );
    // The first is unaffected and still stops cleanly, then the directory is free again.
    first.signal("TERM");
    assert!(first.wait_exit(WAIT).success(), "{}", first.stderr());
    let mut third = Server::serve("127.0.0.1:0", receiver.local_addr(), &extra);
    third.signal("TERM");
    assert!(third.wait_exit(WAIT).success(), "{}", third.stderr());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 5 (last bullet): a checkpoint directory with the largest id is refused, naming it,
/// without a panic.
#[test]
fn a_checkpoint_id_that_would_overflow_is_refused() {
    let dir = scratch("maxid");
    let ck = dir.join("checkpoints");
    let huge = ck.join("ckpt-18446744073709551615");
    std::fs::create_dir_all(&huge).unwrap();
    let receiver = sink();
    let (status, log) = run_to_exit(&[
        "serve",
        "--in",
        "127.0.0.1:0",
        "--out",
        &receiver.local_addr().to_string(),
        "--cores",
        "2",
        "--resilience-dir",
        &ck.display().to_string(),
    ]);
    assert!(!status.success(), "the server started:\n{log}");
    assert!(
        log.contains(&huge.display().to_string()) && !log.contains("panicked"),
        "the refusal does not name {} (or it panicked):\n{log}",
        huge.display()
    );
    assert!(huge.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Also: the file was read whole and checkpointed, then replaced by another file of the same
/// length. The restart refuses it (before, it resumed "nothing left to read" and kept the old
/// file's counts as if they were the new one's).
#[test]
fn a_replaced_file_of_the_same_length_is_not_resumed() {
    let dir = scratch("fingerprint");
    let framed = frame_lines(BILL_OF_RIGHTS);
    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let ck = dir.join("checkpoints");
    let receiver = sink();
    let out = receiver.local_addr().to_string();
    let (ok, log) = run(&file_args(&file, &out, &ck, &[]));
    assert!(ok, "{log}");
    // Same length, same framing: one letter changed near the end.
    let mut other = framed.clone();
    let at = other.len() - 3;
    other[at] = if other[at] == b'x' { b'y' } else { b'x' };
    std::fs::write(&file, &other).unwrap();
    let (ok, log) = run(&file_args(&file, &out, &ck, &[]));
    assert!(!ok, "a replaced file was resumed:\n{log}");
    assert!(
        log.contains("the file was replaced") && log.contains(&file.display().to_string()),
        "the refusal does not say the file was replaced:\n{log}"
    );
    // The same file again resumes (nothing left to read).
    std::fs::write(&file, &framed).unwrap();
    let (ok, log) = run(&file_args(&file, &out, &ck, &[]));
    assert!(ok, "the original file is not resumed:\n{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Also: a checkpoint of a TCP run, then `--in file:` on the same directory is refused (before,
/// the whole file was counted on top of the restored counts), even with
/// `--start-empty-if-unreadable`.
#[test]
fn a_tcp_checkpoint_is_not_resumed_by_a_file_source() {
    let dir = scratch("tcp-then-file");
    let ck = dir.join("checkpoints");
    let ck_s = ck.display().to_string();
    let framed = frame_lines(BILL_OF_RIGHTS);
    let receiver = sink();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--resilience-dir", &ck_s],
    );
    let mut c = server.connect();
    c.write_all(&framed).unwrap();
    drop(c);
    let lines = counts_of(&framed).values().sum::<u64>();
    assert!(receiver.wait_for_lines(lines, WAIT), "{}", server.stderr());
    server.signal("TERM");
    assert!(server.wait_exit(WAIT).success(), "{}", server.stderr());
    let ckpts = named(&ck, "ckpt-");
    assert!(!ckpts.is_empty(), "the TCP run left no checkpoint");

    let file = dir.join("input.bin");
    std::fs::write(&file, &framed).unwrap();
    let out = receiver.local_addr().to_string();
    for extra in [&[][..], &["--start-empty-if-unreadable"][..]] {
        let (ok, log) = run(&file_args(&file, &out, &ck, extra));
        assert!(
            !ok,
            "a TCP checkpoint was resumed under a file source ({extra:?}):\n{log}"
        );
        assert!(
            log.contains("reading tcp") && log.contains(&ck_s),
            "the refusal does not name the checkpoint's source and directory:\n{log}"
        );
        assert_eq!(named(&ck, "ckpt-"), ckpts, "the checkpoints changed");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
