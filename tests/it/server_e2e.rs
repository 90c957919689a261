//! End-to-end tests of `bettong serve`, the real binary, against the word-count contract
//! (`spec/word-count.md`): framed input over concurrent TCP connections, Wallaroo's conformance
//! case, every row of the bad-input table, graceful stop on SIGTERM and SIGINT, and the command
//! line. Output goes to a validating [`Receiver`], which checks that every word's counts arrive
//! 1..N in order on one sink connection; each test then compares the final counts with the
//! reference computed by the library's splitter.
//!
//! Every server runs on 2 cores and is killed when its test ends, pass or fail.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use bettong::corpus::{frame_lines, push_frame, split_frames, BILL_OF_RIGHTS};
use bettong::receive::Receiver;

use crate::support::{
    chunk_cuts, final_metrics, frame_all, free_addr, header_splits, random_message,
    reference_counts, run_to_exit, send_in_chunks, start_receiver, total_lines, Rng, Server, CORES,
    WAIT,
};

/// Word counts written out literally, for the small bad-input cases.
fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
    pairs.iter().map(|&(w, n)| (w.to_string(), n)).collect()
}

/// The Bill of Rights' non-empty lines, one message each (as Wallaroo's sender frames them).
fn bill_lines() -> Vec<&'static str> {
    BILL_OF_RIGHTS.lines().filter(|l| !l.is_empty()).collect()
}

// Input framing: frames split across TCP segments in any way decode the same; outputs: every
// word's counts come 1, 2, 3, … on one sink connection.

#[test]
fn concurrent_chunked_connections_keep_every_word_in_order() {
    const CLIENTS: usize = 6;
    const FRAMES_PER_CLIENT: usize = 3000;

    let receiver = start_receiver();
    let server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);

    // Each client's frames: Bill of Rights lines, random words in mixed case with punctuation
    // and every separator, a few empty messages, and one large message.
    let bill = bill_lines();
    let inputs: Vec<Vec<u8>> = (0..CLIENTS)
        .map(|c| {
            let mut rng = Rng::new(0xB0_77_00 + c as u64);
            let mut payloads: Vec<String> = (0..FRAMES_PER_CLIENT)
                .map(|_| match rng.below(20) {
                    0 => String::new(),
                    1..=7 => rng.pick(&bill).to_string(),
                    _ => random_message(&mut rng, 1, 16),
                })
                .collect();
            // One frame larger than the server's 64 KiB read buffer per client.
            let at = rng.below(FRAMES_PER_CLIENT);
            payloads[at] = random_message(&mut rng, 12_000, 14_000);
            assert!(payloads[at].len() > 64 * 1024, "{}", payloads[at].len());
            frame_all(&payloads)
        })
        .collect();
    let expected = reference_counts(
        inputs
            .iter()
            .flat_map(|framed| split_frames(framed).expect("whole frames")),
    );
    let lines = total_lines(&expected);

    // The chunking really does split headers (same seeds as the senders below).
    let splits: usize = inputs
        .iter()
        .enumerate()
        .map(|(c, framed)| header_splits(framed, &chunk_cuts(framed, &mut sender_rng(c))))
        .sum();
    assert!(
        splits >= 10 * CLIENTS,
        "only {splits} header splits planned"
    );

    let started = Instant::now();
    thread::scope(|s| {
        let senders: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(c, framed)| {
                let mut stream = server.connect();
                s.spawn(move || {
                    send_in_chunks(&mut stream, framed, &mut sender_rng(c))
                        .map_err(|e| format!("client {c} could not send its frames: {e}"))
                })
            })
            .collect();
        for sender in senders {
            if let Err(e) = sender.join().expect("a sender thread panicked") {
                panic!("{e}; the server's stderr:\n{}", server.stderr());
            }
        }
    });
    server.await_lines(&receiver, lines, "6 concurrent chunked connections");
    let report = server.finish_and_check(receiver, &expected, "6 concurrent chunked connections");
    assert!(
        report.connections <= 2,
        "{} sink connections for 2 cores: each core opens one",
        report.connections
    );
    eprintln!(
        "{CLIENTS} clients, {} frames, {splits} header splits, {lines} lines, {} words in {:.2?}",
        CLIENTS * FRAMES_PER_CLIENT,
        expected.len(),
        started.elapsed()
    );
}

/// The chunking generator of client `c` in the test above.
fn sender_rng(c: usize) -> Rng {
    Rng::new(0xC4_00 + c as u64)
}

// Conformance: Wallaroo's own word-count case must pass.

#[test]
fn wallaroo_conformance_bill_of_rights() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wallaroo-word-count"
    );
    let text = std::fs::read_to_string(format!("{dir}/count_this.txt")).expect("count_this.txt");
    let expected: HashMap<String, u64> = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/expected.json")).expect("expected.json"),
    )
    .expect("expected.json is a map from word to count");
    assert_eq!(expected.len(), 217, "words in expected.json");
    assert_eq!(total_lines(&expected), 482, "outputs in expected.json");

    let receiver = start_receiver();
    // Wallaroo's `name@host:port` form of --in.
    let server = Server::serve("count_this@127.0.0.1:0", receiver.local_addr(), &[]);
    let mut client = server.connect();
    client
        .write_all(&frame_lines(&text))
        .expect("send the Bill of Rights");
    server.await_lines(&receiver, 482, "the Bill of Rights");
    server.finish_and_check(receiver, &expected, "the Bill of Rights");
}

// Bad input, one test per row of the table.

#[test]
fn invalid_utf8_frame_is_rejected_whole_and_connection_goes_on() {
    let receiver = start_receiver();
    let server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);
    let mut framed = Vec::new();
    push_frame(&mut framed, b"Alpha beta");
    // Valid words on both sides of the bad bytes: none of them may be counted.
    push_frame(&mut framed, b"gamma \xff\xfe delta alpha");
    push_frame(&mut framed, b"alpha, epsilon!");
    let mut client = server.connect();
    client.write_all(&framed).expect("send the frames");

    let expected = counts(&[("alpha", 2), ("beta", 1), ("epsilon", 1)]);
    server.await_lines(&receiver, 4, "frames around an invalid UTF-8 frame");
    server.expect_stderr("not valid UTF-8", "the rejected frame is logged");
    server.finish_and_check(receiver, &expected, "frames around an invalid UTF-8 frame");
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    let receiver = start_receiver();
    let server = Server::serve("127.0.0.1:0", receiver.local_addr(), &["--max-frame", "64"]);
    let mut good = server.connect();
    let mut before = Vec::new();
    push_frame(&mut before, b"sentinel");
    good.write_all(&before)
        .expect("send on the good connection");
    server.await_lines(&receiver, 1, "the good connection's first frame");

    // The bad connection announces 65 bytes, sends them (words that must not count), then a
    // valid frame that must not count either: the server cannot resynchronise after a bad header.
    let mut bad = server.connect();
    let bad_peer = bad.local_addr().expect("the bad connection's address");
    let mut oversized = 65u32.to_be_bytes().to_vec();
    oversized.extend_from_slice(&[b'z'; 65]);
    oversized[4..14].copy_from_slice(b"oversized ");
    push_frame(&mut oversized, b"after the bad header");
    // The server may close before taking all of it; a failed write is fine.
    let _ = bad.write_all(&oversized);
    let mut buf = [0u8; 64];
    match bad.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "the server wrote {n} bytes to a source connection; stderr:\n{}",
            server.stderr()
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "the server did not close the connection that announced a 65-byte frame over \
             --max-frame 64 within {WAIT:?}; its stderr:\n{}",
            server.stderr()
        ),
        Err(_) => {} // reset: closed with our bytes unread, also a close
    }
    let logged = server.wait_for_stderr_line(|l| l.contains(&bad_peer.to_string()), WAIT);
    assert!(
        logged.is_some_and(|l| l.contains("65")),
        "closing {bad_peer} for its 65-byte header is not logged; the server's stderr:\n{}",
        server.stderr()
    );

    // The good connection goes on, with the state untouched: a payload of exactly 64 bytes.
    let mut after = Vec::new();
    push_frame(
        &mut after,
        format!("{:<64}", "Sentinel, at-the-limit").as_bytes(),
    );
    good.write_all(&after)
        .expect("send on the good connection after the bad one closed");
    let expected = counts(&[("sentinel", 2), ("at-the-limit", 1)]);
    server.await_lines(&receiver, 3, "the good connection after the bad one");
    server.finish_and_check(receiver, &expected, "the good connection after the bad one");
}

#[test]
fn connection_ending_inside_a_frame_drops_only_the_partial_frame() {
    let receiver = start_receiver();
    let server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);

    // Ends inside a payload: 8 of the 20 announced bytes.
    let mut framed = Vec::new();
    push_frame(&mut framed, b"one two");
    push_frame(&mut framed, b"three");
    framed.extend_from_slice(&20u32.to_be_bytes());
    framed.extend_from_slice(b"four fiv");
    let mut in_payload = server.connect();
    in_payload.write_all(&framed).expect("send the frames");
    in_payload.shutdown(Shutdown::Write).expect("close");

    // Ends inside a header: 2 of its 4 bytes.
    let mut framed = Vec::new();
    push_frame(&mut framed, b"six");
    framed.extend_from_slice(&[0, 0]);
    let mut in_header = server.connect();
    in_header.write_all(&framed).expect("send the frames");
    in_header.shutdown(Shutdown::Write).expect("close");

    let expected = counts(&[("one", 1), ("two", 1), ("three", 1), ("six", 1)]);
    server.await_lines(&receiver, 4, "connections that end inside a frame");
    // Wait for both ends to have been seen (the log says so), so a late count would show.
    for conn in [&in_payload, &in_header] {
        let peer = conn.local_addr().expect("client address").to_string();
        let _ = server.wait_for_stderr(&peer, Duration::from_secs(2));
    }
    thread::sleep(crate::support::SETTLE);
    server.finish_and_check(receiver, &expected, "connections that end inside a frame");
}

#[test]
fn sink_not_listening_yet_is_retried_and_nothing_is_lost() {
    let sink = free_addr();
    let started = Instant::now();
    let server = Server::serve("127.0.0.1:0", sink, &[]);
    let mut client = server.connect();
    client
        .write_all(&frame_lines(BILL_OF_RIGHTS))
        .expect("send the Bill of Rights");

    let retry = server.wait_for_stderr_line(
        |l| l.contains(&sink.to_string()) && l.to_lowercase().contains("retr"),
        WAIT,
    );
    assert!(
        retry.is_some(),
        "the server does not say it retries the sink {sink}; its stderr:\n{}",
        server.stderr()
    );
    thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));

    let receiver = Receiver::start(&sink.to_string(), true)
        .unwrap_or_else(|e| panic!("cannot listen on the reserved sink port {sink}: {e:#}"));
    let expected = reference_counts(bill_lines().into_iter().map(str::as_bytes));
    server.await_lines(&receiver, 482, "output held for a sink that came up late");
    server.finish_and_check(
        receiver,
        &expected,
        "output held for a sink that came up late",
    );
}

// Server command line: SIGINT and SIGTERM stop gracefully; bad arguments are named.

/// Sends the Bill of Rights 5 times over 2 connections that stay open, lets the server read it,
/// signals it, and checks that it exits 0 having delivered every line.
fn stops_gracefully_on(signal: &str) {
    let receiver = start_receiver();
    let mut server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);
    let bill = frame_lines(BILL_OF_RIGHTS);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let mut c = server.connect();
            for _ in 0..5 {
                c.write_all(&bill).expect("send the Bill of Rights");
            }
            c
        })
        .collect();
    let bill_lines = bill_lines();
    let expected = reference_counts(
        (0..10)
            .flat_map(|_| bill_lines.iter())
            .map(|l| l.as_bytes()),
    );
    // Let the server read what was sent: "finishes the frames already received".
    thread::sleep(Duration::from_millis(300));

    server.signal(signal);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal} should stop the server with exit status 0, got {status}; its stderr:\n{}",
        server.stderr()
    );
    drop(clients);
    server.await_lines(
        &receiver,
        total_lines(&expected),
        "output flushed on SIG{signal}",
    );
    server.finish_and_check(
        receiver,
        &expected,
        &format!("output flushed on SIG{signal}"),
    );
}

#[test]
fn sigterm_flushes_what_was_received_and_exits_zero() {
    stops_gracefully_on("TERM");
}

#[test]
fn sigint_stops_gracefully_too() {
    stops_gracefully_on("INT");
}

#[test]
fn sigterm_while_the_sink_is_down_delivers_once_it_comes_up() {
    // Output held for an absent sink at the stop is still flushed, not dropped: the server
    // keeps retrying the sink after the signal and exits 0 once everything is delivered.
    let sink = free_addr();
    let mut server = Server::serve("127.0.0.1:0", sink, &[]);
    let mut client = server.connect();
    client
        .write_all(&frame_lines(BILL_OF_RIGHTS))
        .expect("send the Bill of Rights");
    server.expect_stderr(&sink.to_string(), "the sink is down: the server says so");
    thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    thread::sleep(Duration::from_millis(300));
    let receiver = Receiver::start(&sink.to_string(), true)
        .unwrap_or_else(|e| panic!("cannot listen on the reserved sink port {sink}: {e:#}"));
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM with the sink down should still exit 0 once flushed, got {status}; stderr:\n{}",
        server.stderr()
    );
    drop(client);
    let expected = reference_counts(bill_lines().into_iter().map(str::as_bytes));
    server.await_lines(&receiver, 482, "output held across SIGTERM for a late sink");
    server.finish_and_check(
        receiver,
        &expected,
        "output held across SIGTERM for a late sink",
    );
}

#[test]
fn bad_command_line_says_what_is_wrong() {
    let refused = |args: &[&str], names: &[&str]| {
        let (status, stderr) = run_to_exit(args);
        assert!(
            !status.success(),
            "bettong {args:?} should fail, but exited with {status}; stderr:\n{stderr}"
        );
        for name in names {
            assert!(
                stderr.contains(name),
                "bettong {args:?} should name {name:?} in its error; stderr:\n{stderr}"
            );
        }
    };
    refused(
        &["serve", "--in", "nonsense", "--out", "127.0.0.1:1"],
        &["--in", "nonsense"],
    );
    refused(
        &["serve", "--in", "127.0.0.1:0", "--out", "nowhere"],
        &["--out", "nowhere"],
    );
    refused(
        &[
            "serve",
            "--in",
            "127.0.0.1:0",
            "--out",
            "127.0.0.1:1",
            "--max-frame",
            "0",
        ],
        &["--max-frame", "0"],
    );
    refused(&["serve", "--in", "127.0.0.1:0"], &["--out"]);
}

// Machine-readable output: the two JSON lines `serve` prints on stdout.

#[test]
fn serve_prints_a_ready_line_and_a_stopped_line_on_stdout() {
    let receiver = start_receiver();
    let mut server = Server::serve("127.0.0.1:0", receiver.local_addr(), &[]);
    let ready = format!(
        r#"{{"event":"ready","in":"{}","cores":{CORES}}}"#,
        server.addr()
    );
    assert_eq!(server.stdout(), ready, "stdout holds the ready line alone");
    let mut c = server.connect();
    c.write_all(&frame_lines("one two two"))
        .expect("send a frame");
    server.await_lines(&receiver, 3, "the frame's outputs");
    server.signal("TERM");
    let status = server.wait_exit(WAIT);
    assert!(status.success(), "stderr:\n{}", server.stderr());

    let stdout = server.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a ready line and a stopped line:\n{stdout}");
    assert_eq!(lines[0], ready);
    let stopped: serde_json::Value =
        serde_json::from_str(lines[1]).expect("the stopped line is JSON");
    assert!(lines[1].starts_with(r#"{"event":"stopped","metrics":{"#));
    let per_core = stopped["per_core"]
        .as_array()
        .expect("per_core is an array");
    assert_eq!(per_core.len().to_string(), CORES);
    let total = final_metrics(&server).expect("the stopped line has metrics");
    for (name, value) in &total {
        let sum: u64 = per_core.iter().map(|c| c[name].as_u64().unwrap()).sum();
        assert_eq!(sum, *value, "{name}: the total is the sum over the cores");
    }
    assert_eq!(total["frames_in"], 1);
    assert_eq!(total["records_in"], 3);
    assert_eq!(total["outputs"], 3);
    drop(c);
    receiver.finish().expect("the receiver's verdict");
}
