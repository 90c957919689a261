//! Hardening of `serve`'s edges (issue 10, items 4 and 5, and the signal-handler order), each
//! against the real binary:
//!
//! - a file source whose file is truncated under it (logrotate's copytruncate) stops with an
//!   error naming the file, and the server exits 1 instead of spinning a core forever;
//! - every duration and size flag refuses a value that would overflow `Instant + Duration` (or
//!   bounds nothing) at start-up, naming the flag, without a panic;
//! - SIGTERM during start-up (a checkpoint being restored) stops the server gracefully instead of
//!   killing it.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{final_metrics, frame_all, free_addr, Pace, Server, TestSink, CORES, WAIT};

/// A value above `u64::MAX / 2`: seconds that overflow `Instant + Duration`, a count or a size
/// no machine has.
const HUGE: &str = "10000000000000000000";

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bettong-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// Word `i` in letters only (base 26), so every index is its own word.
fn word(mut i: usize) -> String {
    let mut w = String::from("w");
    loop {
        w.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
        if i == 0 {
            return w;
        }
    }
}

/// Waits for `server`'s `{"event":"ready",…}` line (a file source's has no address, so
/// [`Server::serve`] cannot be used).
#[track_caller]
fn await_ready(server: &Server, what: &str) {
    let deadline = Instant::now() + WAIT;
    while server.event("ready").is_none() {
        assert!(
            Instant::now() < deadline,
            "{what}: no ready line within {WAIT:?}; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Item 4: the file is truncated to 0 bytes (a frame boundary below every read position) while
/// a stalled receiver holds the server mid-file. Once the receiver reads again, each core gets
/// 0 bytes where it expected frames: it must say so, naming the file, and stop reading, and the
/// server must stop and exit 1 (the file was not read whole) instead of one core spinning at
/// 100 % forever.
#[test]
fn truncated_file_stops_with_an_error_naming_it_instead_of_spinning() {
    let dir = scratch("truncate");
    let file = dir.join("rotating.log.bin");
    // About 20 MB of frames: far more than the kernel's loopback buffers and `--sink-buffer`
    // let the server read (its output is larger than its input) while the receiver is stalled.
    let frames: Vec<String> = (0..400_000)
        .map(|i| {
            format!(
                "alpha beta {} gamma delta {}",
                word(i % 5_000),
                word(i % 77)
            )
        })
        .collect();
    std::fs::write(&file, frame_all(&frames)).unwrap();
    let file_len = std::fs::metadata(&file).unwrap().len();

    let sink = TestSink::start("127.0.0.1:0".parse().unwrap(), false, false);
    sink.set_pace(Pace::Stalled);
    let input = format!("file:{}", file.display());
    let out = sink.addr().to_string();
    let mut server = Server::spawn(&[
        "serve",
        "--in",
        &input,
        "--out",
        &out,
        "--cores",
        CORES,
        "--sink-buffer",
        "65536",
    ]);
    await_ready(&server, "file source");
    let deadline = Instant::now() + WAIT;
    while sink.conns().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the server never connected to the receiver; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
    // Let it fill the socket buffers and the sink buffer, and stall mid-file.
    thread::sleep(Duration::from_millis(500));
    assert!(
        final_metrics(&server).is_none(),
        "the server finished before the file could be truncated under it; stderr:\n{}",
        server.stderr()
    );

    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    let truncated = Instant::now();
    sink.set_pace(Pace::Full);

    let status = server.wait_exit(WAIT);
    let took = truncated.elapsed();
    let log = server.stderr();
    assert_eq!(
        status.code(),
        Some(1),
        "a file truncated under the server must end it with status 1 ({status}); stderr:\n{log}"
    );
    let shown = file.display().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("was truncated while being read") && l.contains(&shown)),
        "no core says the file {shown} was truncated; stderr:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("bettong: error:") && l.contains(&shown) && l.contains("shrank")),
        "the exit error does not name the file that shrank; stderr:\n{log}"
    );
    assert!(
        !log.contains("panicked"),
        "the server panicked; stderr:\n{log}"
    );
    let m = final_metrics(&server).expect("a graceful stop prints its stopped line");
    assert!(
        m["bytes_in"] < file_len,
        "the server says it read {} of {file_len} bytes: the truncation came too late to test \
         anything",
        m["bytes_in"]
    );
    eprintln!(
        "truncated after {} of {file_len} bytes were read; the server exited {took:.2?} later",
        m["bytes_in"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 5: every duration and size flag of `serve` with a value that overflows refuses to start,
/// with exit status 2 (clap's usage error) or 1, naming the flag, and without a panic.
#[test]
fn overflowing_serve_flag_values_are_refused_at_start_naming_the_flag() {
    let dir = scratch("flags");
    let ckdir = dir.join("ck").display().to_string();
    let out = free_addr().to_string();
    for flag in [
        "--idle-timeout",
        "--checkpoint-interval",
        "--shutdown-grace",
        "--sink-buffer",
        "--max-frame",
        "--max-connections-per-core",
    ] {
        let mut args = vec![
            "serve",
            "--in",
            "127.0.0.1:0",
            "--out",
            &out,
            "--cores",
            CORES,
            flag,
            HUGE,
        ];
        if flag == "--checkpoint-interval" {
            args.extend(["--resilience-dir", &ckdir]);
        }
        expect_refused(&args, flag);
        // market-spread takes the same flags.
        args[0] = "market-spread";
        args[2] = "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0";
        expect_refused(&args, flag);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Item 5, the other commands' durations: `send --interval`, `receive --idle-exit` and
/// `bench --duration`.
#[test]
fn overflowing_durations_of_send_receive_and_bench_are_refused() {
    let dir = scratch("tools");
    let text = dir.join("lines.txt");
    std::fs::write(&text, "one line\n").unwrap();
    let text = text.display().to_string();
    let host = free_addr().to_string();
    expect_refused(
        &["send", "--host", &host, "--file", &text, "--interval", HUGE],
        "--interval",
    );
    expect_refused(
        &["receive", "--listen", "127.0.0.1:0", "--idle-exit", HUGE],
        "--idle-exit",
    );
    expect_refused(
        &[
            "bench",
            "--in-process",
            "--messages",
            "10",
            "--duration",
            HUGE,
        ],
        "--duration",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `bettong ARGS` and checks it refuses to start: exits 1 or 2 at once, names `flag` in
/// its error, does not panic.
#[track_caller]
fn expect_refused(args: &[&str], flag: &str) {
    let mut p = Server::spawn(args);
    let status = p.wait_exit(Duration::from_secs(10));
    let log = p.stderr();
    assert!(
        matches!(status.code(), Some(1 | 2)),
        "bettong {args:?} must refuse {flag} {HUGE} with status 1 or 2, not {status}; \
         stderr:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(flag) && (l.contains("error") || l.contains("invalid"))),
        "bettong {args:?}: no error names {flag}; stderr:\n{log}"
    );
    assert!(
        !log.contains("panicked"),
        "bettong {args:?} panicked; stderr:\n{log}"
    );
    assert!(
        p.event("ready").is_none(),
        "bettong {args:?} started anyway; stdout:\n{}",
        p.stdout()
    );
}

/// The signal-handler order: SIGTERM while the server is still starting (restoring a checkpoint
/// of 600,000 keys) must stop it gracefully once it has started (stopped line, exit 0), not
/// kill it with the signal's default action as before its handlers were installed.
#[test]
fn sigterm_during_start_up_stops_gracefully() {
    let dir = scratch("sigterm-start");
    let ckdir = dir.join("ck").display().to_string();
    let file = dir.join("keys.bin");
    let keys = 600_000;
    let frames: Vec<String> = (0..keys / 20)
        .map(|f| {
            (0..20)
                .map(|k| word(f * 20 + k))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&file, frame_all(&frames)).unwrap();
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap(), false, false);
    let out = sink.addr().to_string();
    let input = format!("file:{}", file.display());
    // The first run leaves a checkpoint of every key.
    let mut first = Server::spawn(&[
        "serve",
        "--in",
        &input,
        "--out",
        &out,
        "--cores",
        CORES,
        "--resilience-dir",
        &ckdir,
    ]);
    let status = first.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "the run that writes the checkpoint failed ({status}); stderr:\n{}",
        first.stderr()
    );

    // The second restores it: SIGTERM as soon as it says it is starting the engine.
    let args = [
        "serve",
        "--in",
        "127.0.0.1:0",
        "--out",
        &out,
        "--cores",
        CORES,
        "--resilience-dir",
        &ckdir,
    ];
    let mut server = Server::spawn(&args);
    assert!(
        server.wait_for_stderr("limits: --max-frame", WAIT),
        "the server never logged its limits; stderr:\n{}",
        server.stderr()
    );
    let during_start_up = server.event("ready").is_none();
    server.signal("TERM");
    let status = server.wait_exit(WAIT);
    let log = server.stderr();
    assert_eq!(
        status.signal(),
        None,
        "SIGTERM during start-up killed the server ({status}) instead of stopping it; \
         stderr:\n{log}"
    );
    assert!(
        status.success(),
        "SIGTERM during start-up must stop the server gracefully with status 0 ({status}); \
         stderr:\n{log}"
    );
    assert!(
        final_metrics(&server).is_some(),
        "no stopped line after a graceful stop; stdout:\n{}",
        server.stdout()
    );
    assert!(
        log.contains("restored checkpoint"),
        "the server did not restore the checkpoint; stderr:\n{log}"
    );
    assert!(
        during_start_up,
        "the signal came only after the ready line: the restore was too quick for this test to \
         hit start-up; stderr:\n{log}"
    );
    drop(sink);
    std::fs::remove_dir_all(&dir).unwrap();
}
