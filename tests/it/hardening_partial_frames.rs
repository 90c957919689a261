//! Partial frames under attack (issue 10, item 7), on both socket backends (`BETTONG_IO=glommio`
//! and the default io_uring): hundreds of connections each announce a 1 MiB frame, send 64 KiB of
//! it and then trickle a byte every second (well within the idle timeout), beside busy clients
//! whose output must stay exact.
//!
//! - The server's memory grows with the bytes received, not with the sizes announced: its
//!   resident memory stays under a stated bound (300 × 1 MiB would be 300 MiB).
//! - The progress rule closes every trickling connection once its frame is not whole after
//!   three idle timeouts of waiting from its first byte (a byte now and then no longer keeps it
//!   alive).
//! - Past `--partial-frame-budget` the connections holding the most partial bytes are closed at
//!   once and counted in `connections_over_budget`.
//!
//! The shared [`crate::support::Server`] cannot set an environment variable, so the server is
//! spawned here (as `hardening_sink.rs` does) with `BETTONG_IO` set.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread::{self};
use std::time::{Duration, Instant};

use bettong::corpus::split_frames;

use crate::support::{
    busy_inputs, check_counts, reference_counts, rss_mib, send_busy, start_receiver, total_lines,
    ShServer, WAIT,
};

/// The idle timeout the servers here run with; the frame timeout is three times it.
const IDLE: Duration = Duration::from_secs(2);
const FRAME_TIMEOUT: Duration = Duration::from_secs(IDLE.as_secs() * 3);
/// Trickling connections (150 per core, within the default --max-connections-per-core).
const TRICKLERS: usize = 300;
/// What each trickler sends before trickling: a header announcing 1 MiB, then 64 KiB of it.
const ANNOUNCED: usize = 1 << 20;
const SENT: usize = 64 * 1024;

/// Opens `n` connections that each send a header announcing [`ANNOUNCED`] bytes and then
/// `sent` bytes of the payload (words unique to them, which must never be counted).
fn open_partial_frames(server: &ShServer, n: usize, sent: usize) -> Vec<(TcpStream, Instant)> {
    (0..n)
        .map(|i| {
            let mut s = server.connect();
            let mut head = (ANNOUNCED as u32).to_be_bytes().to_vec();
            let word = format!("trickler{i} ");
            while head.len() < 4 + sent {
                head.extend_from_slice(word.as_bytes());
            }
            head.truncate(4 + sent);
            let at = Instant::now();
            s.write_all(&head).expect("send the start of a frame");
            (s, at)
        })
        .collect()
}

/// True once the server closed `s` (end of stream, reset, or a failed write).
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => panic!("the server wrote to a source connection"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).expect("blocking");
    closed
}

/// Trickles one byte a second into every connection still open (well within the idle timeout,
/// so only the progress rule can close them), until all are closed or `within` has passed
/// since the first was opened; returns how long after its first byte each was closed (None:
/// still open).
fn trickle_until_closed(
    mut conns: Vec<(TcpStream, Instant)>,
    within: Duration,
) -> Vec<Option<Duration>> {
    let start = conns.iter().map(|c| c.1).min().unwrap_or_else(Instant::now);
    let mut closed_after = vec![None; conns.len()];
    let mut last_byte = Instant::now();
    while start.elapsed() < within && closed_after.iter().any(Option::is_none) {
        let send = last_byte.elapsed() >= Duration::from_secs(1);
        for (i, (s, opened)) in conns.iter_mut().enumerate() {
            if closed_after[i].is_some() {
                continue;
            }
            if is_closed(s) || (send && s.write_all(b"x").is_err()) {
                closed_after[i] = Some(opened.elapsed());
            }
        }
        if send {
            last_byte = Instant::now();
        }
        thread::sleep(Duration::from_millis(100));
    }
    closed_after
}

/// The server's resident memory, waited for until it settles (at most 2 s).
fn settled_rss(pid: u32) -> f64 {
    let mut last = rss_mib(pid);
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(200));
        let now = rss_mib(pid);
        if (now - last).abs() < 1.0 {
            return now;
        }
        last = now;
    }
    last
}

/// RSS the trickling connections may add (MiB): their 300 × 64 KiB = 18.75 MiB of partial
/// frames, at most doubled by geometric growth, plus read buffers and slack. Reserving or
/// zero-filling the announced 1 MiB would be 300 MiB.
const RSS_BOUND_MIB: f64 = 80.0;

fn trickling_partial_frames(io: &str) {
    let receiver = start_receiver();
    let idle = IDLE.as_secs().to_string();
    let server = ShServer::start(
        "",
        &[("BETTONG_IO", io)],
        receiver.local_addr(),
        &["--idle-timeout", &idle],
    );
    let pid = server.pid();
    let at_rest = settled_rss(pid);

    let tricklers = open_partial_frames(&server, TRICKLERS, SENT);
    let opened = Instant::now();

    let inputs = busy_inputs(4, 1500, 0x7e1c);
    let expected = reference_counts(
        inputs
            .iter()
            .flat_map(|f| split_frames(f).expect("whole frames")),
    );
    // Trickling starts at once (a byte a second, within the idle timeout); the memory is read
    // while every trickler holds its partial frame, and again after the busy clients.
    let (with_partials, busy_rss, busy_took, closed_after) = thread::scope(|s| {
        let trickle = s.spawn(|| trickle_until_closed(tricklers, FRAME_TIMEOUT * 3));
        let with_partials = settled_rss(pid);
        let started = Instant::now();
        send_busy(&server, &inputs, 0x7e1c);
        assert!(
            receiver.wait_for_lines(total_lines(&expected), WAIT),
            "BETTONG_IO={io}: the busy clients' {} lines did not all arrive (got {}); stderr:\n{}",
            total_lines(&expected),
            receiver.lines(),
            server.stderr()
        );
        let busy_took = started.elapsed();
        let busy_rss = rss_mib(pid);
        let closed_after = trickle.join().expect("the trickler panicked");
        (with_partials, busy_rss, busy_took, closed_after)
    });
    let grew = with_partials.max(busy_rss) - at_rest;
    eprintln!(
        "BETTONG_IO={io}: RSS {at_rest:.1} MiB at rest, {with_partials:.1} MiB with {TRICKLERS} \
         partial frames of {SENT} bytes (+{grew:.1} MiB), {busy_rss:.1} MiB after the busy \
         clients ({busy_took:.2?}); all closed {:.2?} after the partial frames were sent",
        opened.elapsed()
    );
    let open = closed_after.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open,
        0,
        "BETTONG_IO={io}: {open} of {TRICKLERS} connections trickling a byte a second into a \
         1 MiB frame were still open {:?} after their first byte (progress rule: whole within \
         {FRAME_TIMEOUT:?} of waiting); stderr tail:\n{}",
        FRAME_TIMEOUT * 3,
        tail(&server.stderr())
    );
    let closed: Vec<Duration> = closed_after.into_iter().flatten().collect();
    let (min, max) = (*closed.iter().min().unwrap(), *closed.iter().max().unwrap());
    eprintln!(
        "BETTONG_IO={io}: {TRICKLERS} tricklers closed {min:.2?} to {max:.2?} after their first \
         byte (frame timeout {FRAME_TIMEOUT:?})"
    );
    assert!(
        min >= FRAME_TIMEOUT - Duration::from_millis(500),
        "BETTONG_IO={io}: a trickler was closed after {min:.2?}, before the frame timeout"
    );
    assert!(
        max <= FRAME_TIMEOUT + Duration::from_secs(3),
        "BETTONG_IO={io}: a trickler was closed only after {max:.2?} (frame timeout \
         {FRAME_TIMEOUT:?})"
    );
    assert!(
        grew < RSS_BOUND_MIB,
        "BETTONG_IO={io}: {TRICKLERS} partial frames of {SENT} bytes (each announcing 1 MiB) \
         grew the server's RSS by {grew:.1} MiB, above the {RSS_BOUND_MIB} MiB bound"
    );

    let (code, m, stderr) = server.stop();
    assert_eq!(code, Some(0), "BETTONG_IO={io}: exit; stderr:\n{stderr}");
    assert_eq!(
        m.get("connections_idle_closed").copied(),
        Some(TRICKLERS as u64),
        "BETTONG_IO={io}: {m:?}"
    );
    assert_eq!(m.get("connections_over_budget").copied(), Some(0), "{m:?}");
    assert!(
        stderr.contains("was not whole after"),
        "BETTONG_IO={io}: no log line for the progress rule:\n{}",
        tail(&stderr)
    );
    let report = receiver.finish().expect("the receiver");
    check_counts(&report, &expected, "busy clients beside tricklers", &stderr);
}

/// The last lines of a long log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn trickling_partial_frames_are_closed_by_the_progress_rule_in_bounded_memory_glommio() {
    trickling_partial_frames("glommio");
}

#[test]
fn trickling_partial_frames_are_closed_by_the_progress_rule_in_bounded_memory_uring() {
    trickling_partial_frames("uring");
}

/// With a budget of 1 MiB per core, 64 connections holding 64 KiB of partial frame each
/// (about 2 MiB per core) go over it: the server closes connections at once (long before any
/// timeout) until each core's partial frames fit, counts and logs them, and the busy clients'
/// output stays exact.
fn partial_frames_over_budget(io: &str) {
    const BUDGET: usize = 1 << 20;
    const N: usize = 64;
    let receiver = start_receiver();
    let server = ShServer::start(
        "",
        &[("BETTONG_IO", io)],
        receiver.local_addr(),
        &["--partial-frame-budget", &BUDGET.to_string()],
    );
    let mut conns = open_partial_frames(&server, N, SENT);
    let inputs = busy_inputs(2, 1000, 0xb0d6);
    let expected = reference_counts(
        inputs
            .iter()
            .flat_map(|f| split_frames(f).expect("whole frames")),
    );
    send_busy(&server, &inputs, 0xb0d6);
    assert!(
        receiver.wait_for_lines(total_lines(&expected), WAIT),
        "BETTONG_IO={io}: busy lines missing; stderr:\n{}",
        server.stderr()
    );
    thread::sleep(Duration::from_millis(500));
    let open = conns
        .iter_mut()
        .map(|(s, _)| !is_closed(s))
        .filter(|&o| o)
        .count();
    let held = open * (SENT + 4);
    assert!(
        open < N && held <= 2 * BUDGET,
        "BETTONG_IO={io}: {open} of {N} connections still hold {held} bytes of partial frames \
         (budget {BUDGET} per core, 2 cores); stderr:\n{}",
        tail(&server.stderr())
    );
    let (code, m, stderr) = server.stop();
    assert_eq!(code, Some(0), "BETTONG_IO={io}: exit; stderr:\n{stderr}");
    assert_eq!(
        m.get("connections_over_budget").copied(),
        Some((N - open) as u64),
        "BETTONG_IO={io}: {m:?}"
    );
    assert!(
        stderr.contains("over their budget"),
        "BETTONG_IO={io}: no log line for the budget:\n{}",
        tail(&stderr)
    );
    let report = receiver.finish().expect("the receiver");
    check_counts(&report, &expected, "busy clients beside a budget", &stderr);
    eprintln!(
        "BETTONG_IO={io}: {} of {N} over budget, {open} kept",
        N - open
    );
}

#[test]
fn partial_frames_over_the_budget_are_closed_at_once_glommio() {
    partial_frames_over_budget("glommio");
}

#[test]
fn partial_frames_over_the_budget_are_closed_at_once_uring() {
    partial_frames_over_budget("uring");
}
