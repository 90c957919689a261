//! Hostile and broken clients: whatever some clients do, the other clients' outputs stay exact.
//!
//! Each test runs a few well-behaved "busy" clients, whose words are checked against the
//! reference counts (every word 1..N in order on one sink connection, exact totals), beside
//! clients that misbehave: a thousand idle connections, slow loris half-frames, connect and
//! disconnect storms, oversized length headers, invalid UTF-8, resets in the middle of a frame,
//! and more connections than the per-core limit. The misbehaving clients' own words are unique
//! to them, so any of their partial frames counted by mistake would show in the totals.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use bettong::corpus::{push_frame, split_frames};

use crate::support::{
    busy_inputs, reference_counts, rss_mib, send_busy, send_in_chunks, start_receiver, total_lines,
    Rng, Server, WAIT,
};

fn expected_of(inputs: &[Vec<u8>]) -> HashMap<String, u64> {
    reference_counts(
        inputs
            .iter()
            .flat_map(|f| split_frames(f).expect("whole frames")),
    )
}

/// Waits until the server closes `stream` (end of stream or reset); returns how long that took,
/// or None if it is still open after `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 16];
    while started.elapsed() < within {
        let left = within
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .expect("set a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => panic!("the server wrote to a source connection"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Resets `stream` (RST, not FIN) as a crashing client's kernel would.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
    drop(stream);
}

#[test]
fn thousand_idle_connections_beside_busy_ones() {
    const IDLE: usize = 1000;
    let receiver = start_receiver();
    let server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);
    let at_rest = rss_mib(server.pid());
    // A thousand connections that do nothing; every fourth sends one whole frame first (its
    // words count), every fourth other one half a frame (they must not).
    let mut idle = Vec::with_capacity(IDLE);
    let mut idle_frames = Vec::new();
    for i in 0..IDLE {
        let mut s = server.connect();
        match i % 4 {
            0 => {
                let mut f = Vec::new();
                push_frame(&mut f, format!("idler{i} idlers").as_bytes());
                s.write_all(&f).expect("send an idle client's frame");
                idle_frames.push(f);
            }
            1 => {
                s.write_all(&[0, 0, 0, 40, b'h', b'a', b'l', b'f'])
                    .expect("send half a frame");
            }
            _ => {}
        }
        idle.push(s);
    }
    let with_idle = rss_mib(server.pid());

    let inputs = busy_inputs(4, 2000, 0x1D1E);
    let started = Instant::now();
    send_busy(&server, &inputs, 0x1D1E);
    let mut all = inputs.clone();
    all.extend(idle_frames);
    let expected = expected_of(&all);
    server.await_lines(
        &receiver,
        total_lines(&expected),
        "busy clients beside 1000 idle",
    );
    let took = started.elapsed();
    // Every idle connection is still open: idle between frames is never timed out, and the
    // half frames are within the 30 s default idle timeout.
    let mut still_open = 0;
    for s in idle.iter_mut().take(20) {
        if closed_by_server(s, Duration::from_millis(5)).is_none() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 20, "idle connections were closed");
    server.finish_and_check(receiver, &expected, "busy clients beside 1000 idle");
    eprintln!(
        "{IDLE} idle connections: RSS {at_rest:.1} MiB before, {with_idle:.1} MiB with them; \
         4 busy clients' {} lines in {took:.2?}",
        total_lines(&expected)
    );
    assert!(
        with_idle - at_rest < 32.0,
        "1000 idle connections cost {:.1} MiB",
        with_idle - at_rest
    );
}

#[test]
fn slow_loris_half_frames_are_timed_out_without_holding_others_up() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let receiver = start_receiver();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--idle-timeout", "2"],
    );
    // Lorises: a header announcing 100 bytes, then part of the payload, then nothing.
    let mut lorises: Vec<(TcpStream, Instant)> = (0..20)
        .map(|i| {
            let mut s = server.connect();
            let mut half = 100u32.to_be_bytes().to_vec();
            half.extend_from_slice(format!("loris{i} never counted ").as_bytes());
            s.write_all(&half).expect("send half a frame");
            (s, Instant::now())
        })
        .collect();
    // One loris that trickles its frame byte by byte and completes it well within the timeout
    // between bytes (its words count), then idles between frames longer than the timeout and
    // sends another frame (it counts too: only time inside a frame is limited).
    let mut patient = server.connect();
    let mut patient_frames = Vec::new();
    push_frame(&mut patient_frames, b"patient tortoise");
    let patient_sender = {
        let mut s = patient.try_clone().expect("clone");
        let frame = patient_frames.clone();
        thread::spawn(move || {
            for b in &frame {
                s.write_all(&[*b]).expect("trickle");
                thread::sleep(Duration::from_millis(150));
            }
            thread::sleep(TIMEOUT + Duration::from_secs(1));
            let mut again = Vec::new();
            push_frame(&mut again, b"patient again");
            s.write_all(&again)
                .expect("send after idling between frames");
        })
    };

    // Busy clients are served at once, while the lorises sit inside their frames.
    let inputs = busy_inputs(4, 1500, 0x10415);
    let started = Instant::now();
    send_busy(&server, &inputs, 0x10415);
    let expected_busy = expected_of(&inputs);
    server.await_lines(
        &receiver,
        total_lines(&expected_busy),
        "busy clients beside lorises",
    );
    let busy_took = started.elapsed();
    assert!(
        busy_took < TIMEOUT,
        "the busy clients took {busy_took:.2?}, as long as the lorises' idle timeout: they were \
         held up; stderr:\n{}",
        server.stderr()
    );

    // Each loris is closed once it has been silent inside its frame for the timeout.
    let mut closed_after = Vec::new();
    for (s, last_byte) in &mut lorises {
        let waited = last_byte.elapsed();
        let Some(t) = closed_by_server(s, TIMEOUT * 3) else {
            panic!(
                "a loris was still open {:.2?} after its last byte; stderr:\n{}",
                waited + TIMEOUT * 3,
                server.stderr()
            );
        };
        closed_after.push(waited + t);
    }
    let (min, max) = (
        *closed_after.iter().min().unwrap(),
        *closed_after.iter().max().unwrap(),
    );
    assert!(
        min >= TIMEOUT - Duration::from_millis(50),
        "a loris was closed after {min:.2?}, before the {TIMEOUT:?} timeout"
    );
    assert!(
        max < TIMEOUT + Duration::from_millis(1500),
        "a loris was closed only after {max:.2?} (timeout {TIMEOUT:?})"
    );
    patient_sender.join().expect("the patient client panicked");
    assert!(
        closed_by_server(&mut patient, Duration::from_millis(300)).is_none(),
        "the patient client was closed"
    );
    let mut expected = expected_busy;
    for (w, n) in [("patient", 2), ("tortoise", 1), ("again", 1)] {
        *expected.entry(w.to_string()).or_default() += n;
    }
    server.await_lines(&receiver, total_lines(&expected), "after the lorises");
    drop(patient);
    let m = server.stop_gracefully();
    assert_eq!(m["connections_idle_closed"], 20, "{}", server.stderr());
    server.finish_and_check(receiver, &expected, "busy clients beside lorises");
    eprintln!(
        "20 lorises closed {min:.2?} to {max:.2?} after their last byte (--idle-timeout 2); \
         busy clients done in {busy_took:.2?}"
    );
}

#[test]
fn connect_disconnect_storm_leaves_others_exact_and_the_log_readable() {
    const STORM: usize = 2000;
    let receiver = start_receiver();
    let mut server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);
    let addr = server.addr();
    let inputs = busy_inputs(3, 2000, 0x5702);
    let storm = thread::spawn(move || {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                thread::spawn(move || {
                    for i in 0..STORM / 4 {
                        let Ok(mut s) = TcpStream::connect(addr) else {
                            continue;
                        };
                        match i % 4 {
                            // Connect and leave.
                            0 => {}
                            // A header and part of a payload, then leave (FIN).
                            1 => {
                                let _ = s.write_all(&[0, 0, 0, 9, b's', b't', b'o']);
                            }
                            // Part of a payload, then reset.
                            2 => {
                                let _ = s.write_all(&[0, 0, 0, 9, b'r', b's', b't']);
                                reset(s);
                                continue;
                            }
                            // Half a header, then reset.
                            _ => {
                                let _ = s.write_all(&[0, 0]);
                                reset(s);
                                continue;
                            }
                        }
                        let _ = t;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a storm thread panicked");
        }
    });
    send_busy(&server, &inputs, 0x5702);
    storm.join().expect("the storm panicked");
    let expected = expected_of(&inputs);
    server.await_lines(&receiver, total_lines(&expected), "busy clients in a storm");
    thread::sleep(Duration::from_millis(300));
    let m = server.stop_gracefully();
    assert!(
        m["connections_accepted"] >= STORM as u64,
        "{} connections accepted",
        m["connections_accepted"]
    );
    // Half the storm ended inside a frame (FIN or reset): each counted, none of it decoded.
    assert_eq!(
        m["connections_truncated"],
        (STORM / 4 * 3) as u64,
        "{}",
        server.stderr()
    );
    let lines = server.stderr_lines().len();
    assert!(
        lines < 200,
        "{lines} log lines for a storm of {STORM} connections: the log is flooded"
    );
    server.finish_and_check(receiver, &expected, "busy clients in a storm");
}

#[test]
fn oversized_headers_bad_utf8_and_resets_leave_others_exact() {
    let receiver = start_receiver();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--max-frame", "4096"],
    );
    let mut expected_bad = HashMap::new();
    let mut bad = Vec::new();
    // Oversized headers: u32::MAX and max + 1, after a valid frame that counts.
    for (i, len) in [u32::MAX, 4097].into_iter().enumerate() {
        let mut s = server.connect();
        let mut f = Vec::new();
        push_frame(&mut f, format!("oversizer{i}").as_bytes());
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(b"oversized payload never counted");
        let _ = s.write_all(&f);
        expected_bad.insert(format!("oversizer{i}"), 1);
        bad.push(s);
    }
    // Invalid UTF-8 frames between valid ones: rejected whole, the connection goes on.
    let mut utf8 = server.connect();
    let mut f = Vec::new();
    for i in 0..50 {
        push_frame(&mut f, format!("mangled{i}").as_bytes());
        let mut garbage = format!("garbled{i} ").into_bytes();
        garbage.extend_from_slice(&[0xff, 0xc0, 0x80, b' ', 0xed, 0xa0, 0x80]);
        push_frame(&mut f, &garbage);
        expected_bad.insert(format!("mangled{i}"), 1);
    }
    utf8.write_all(&f).expect("send frames with bad UTF-8");
    // Resets in the middle of a frame, after a frame that counts.
    for i in 0..10 {
        let mut s = server.connect();
        let mut f = Vec::new();
        push_frame(&mut f, format!("resetter{i}").as_bytes());
        f.extend_from_slice(&50u32.to_be_bytes());
        f.extend_from_slice(b"cut short, never counted");
        s.write_all(&f).expect("send before resetting");
        expected_bad.insert(format!("resetter{i}"), 1);
        thread::sleep(Duration::from_millis(20));
        reset(s);
    }
    let inputs = busy_inputs(4, 2000, 0xBAD);
    send_busy(&server, &inputs, 0xBAD);
    let mut expected = expected_of(&inputs);
    for (w, n) in expected_bad {
        *expected.entry(w).or_default() += n;
    }
    server.await_lines(
        &receiver,
        total_lines(&expected),
        "busy clients beside bad ones",
    );
    for s in &mut bad {
        assert!(
            closed_by_server(s, WAIT).is_some(),
            "a connection with an oversized header was not closed"
        );
    }
    thread::sleep(Duration::from_millis(200));
    let m = server.stop_gracefully();
    assert_eq!(m["connections_oversized"], 2, "{}", server.stderr());
    assert_eq!(m["frames_rejected"], 50, "{}", server.stderr());
    assert_eq!(m["connections_truncated"], 10, "{}", server.stderr());
    server.expect_stderr(
        "4294967295 bytes",
        "the u32::MAX header is named in the log",
    );
    server.finish_and_check(receiver, &expected, "busy clients beside bad ones");
}

#[test]
fn connections_over_the_per_core_limit_are_refused_and_others_served() {
    const LIMIT: usize = 5;
    const TRIES: usize = 40;
    let receiver = start_receiver();
    let limit = LIMIT.to_string();
    let mut server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--max-connections-per-core", &limit],
    );
    // 40 connections over 2 cores: the kernel spreads them (SO_REUSEPORT), each core keeps 5.
    let mut conns: Vec<TcpStream> = (0..TRIES).map(|_| server.connect()).collect();
    thread::sleep(Duration::from_millis(300));
    let open: Vec<usize> = (0..TRIES)
        .filter(|&i| closed_by_server(&mut conns[i], Duration::from_millis(20)).is_none())
        .collect();
    assert_eq!(
        open.len(),
        2 * LIMIT,
        "{} of {TRIES} connections left open with --max-connections-per-core {LIMIT} on 2 cores; \
         stderr:\n{}",
        open.len(),
        server.stderr()
    );
    // The connections kept open are served.
    let inputs = busy_inputs(2 * LIMIT, 300, 0x11417);
    for (k, &i) in open.iter().enumerate() {
        send_in_chunks(&mut conns[i], &inputs[k], &mut Rng::new(k as u64))
            .expect("send on a kept connection");
    }
    let expected = expected_of(&inputs);
    server.await_lines(&receiver, total_lines(&expected), "the connections kept");
    // Once they close, new connections are accepted again.
    drop(conns);
    thread::sleep(Duration::from_millis(300));
    let late = busy_inputs(2, 300, 0x1A7E);
    send_busy(&server, &late, 0x1A7E);
    let mut all = inputs;
    all.extend(late);
    let expected = expected_of(&all);
    server.await_lines(
        &receiver,
        total_lines(&expected),
        "after the limit freed up",
    );
    let m = server.stop_gracefully();
    assert_eq!(m["connections_refused"], (TRIES - 2 * LIMIT) as u64);
    server.expect_stderr(
        "(the per-core connection limit)",
        "refusals are logged, naming the limit",
    );
    server.expect_stderr(
        &format!("--max-connections-per-core {LIMIT}"),
        "the server's start names the flag that sets the limit",
    );
    server.finish_and_check(receiver, &expected, "busy clients with a connection limit");
}
