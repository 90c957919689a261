//! Graceful shutdown under load: SIGTERM while connections flood must stop accepting, finish the
//! frames already received, flush, and exit 0 within a bounded time; a second signal exits at
//! once; and a receiver that takes nothing cannot hold the stop up for longer than
//! `--shutdown-grace`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{final_metrics, frame_all, Flood, Pace, Server, TestSink, WAIT};

/// Flooding connections.
const CLIENTS: usize = 20;
/// The bound on the time from SIGTERM to exit under the flood, with a receiver that keeps up.
/// The stop finishes everything in flight: the input already received (with io_uring, up to the
/// core's 4 MiB of receive buffers), the batches in the rings between cores, and the output held
/// for the sink (up to `--sink-buffer`, 4 MiB per core), some 2 million words here. Measured in
/// a debug build on 2 cores: 0.1 to 0.8 s with glommio's sockets, 0.8 to 2.8 s with io_uring.
const STOP_BOUND: Duration = Duration::from_secs(8);

/// Client `c`'s input: the same frame over and over, three words of its own and one word every
/// client shares, so the counts tell how many of its frames were applied, and that each was
/// applied whole.
fn client_input(c: usize) -> Vec<u8> {
    let frame = format!("alpha{c} beta{c}, gamma{c}! shared");
    frame_all(&vec![frame; 10_000])
}

/// Starts `CLIENTS` connections flooding the server with their inputs (practically forever).
fn flood(server: &Server) -> Flood {
    let streams = (0..CLIENTS).map(|_| server.connect()).collect();
    let inputs = (0..CLIENTS).map(|c| Arc::new(client_input(c))).collect();
    Flood::start(streams, inputs, 1_000, 16 * 1024)
}

#[test]
fn sigterm_under_flood_finishes_received_frames_and_exits_zero_in_bounded_time() {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap(), true, false);
    let mut server = Server::serve("127.0.0.1:0", sink.addr(), &[]);
    let flood = flood(&server);
    assert!(
        sink.wait_for_lines(200_000, WAIT),
        "the flood's output does not flow; stderr:\n{}",
        server.stderr()
    );

    server.signal("TERM");
    let signalled = Instant::now();
    let lines_at_signal = sink.lines();
    server.expect_stderr("stopping", "the signal is acknowledged");
    // Once both cores say they stopped accepting, a new client is not served: its frame never
    // counts.
    for core in 0..2 {
        server.expect_stderr(
            &format!("core {core}: stop requested: no longer accepting"),
            "each core stops accepting",
        );
    }
    if let Ok(mut late) = std::net::TcpStream::connect(server.addr()) {
        let _ = late.write_all(&frame_all(&["latecomer"]));
    }
    let status = server.wait_exit(WAIT);
    let took = signalled.elapsed();
    let sent: u64 = flood.stop().iter().sum();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM under load should exit 0, got {status}; stderr:\n{}",
        server.stderr()
    );
    assert!(
        took < STOP_BOUND,
        "the server took {took:.2?} to stop under load (bound {STOP_BOUND:?}); stderr:\n{}",
        server.stderr()
    );

    // Everything the server decoded is in the output, each frame whole, nothing after the stop.
    let m = final_metrics(&server).expect("the server logs its final metrics");
    // The sink reads what the server flushed before exiting.
    let deadline = Instant::now() + WAIT;
    while sink.lines() < m["outputs"] && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(crate::support::SETTLE);
    assert_eq!(
        sink.lines(),
        m["outputs"],
        "the receiver got {} lines of the {} outputs the server produced",
        sink.lines(),
        m["outputs"]
    );
    let counts: HashMap<String, u64> = sink
        .finish()
        .unwrap_or_else(|v| panic!("the output breaks the contract: {v}"));
    let mut frames = 0;
    for c in 0..CLIENTS {
        let n = counts.get(&format!("alpha{c}")).copied().unwrap_or(0);
        for w in ["beta", "gamma"] {
            assert_eq!(
                counts.get(&format!("{w}{c}")).copied().unwrap_or(0),
                n,
                "client {c}: a frame was applied in part"
            );
        }
        frames += n;
    }
    assert_eq!(counts.get("shared").copied().unwrap_or(0), frames);
    assert_eq!(
        frames, m["frames_in"],
        "frames decoded and frames in the output differ"
    );
    assert!(
        !counts.contains_key("latecomer"),
        "a client was served after the stop"
    );
    eprintln!(
        "SIGTERM under a flood of {CLIENTS} connections: exit 0 after {took:.2?} (bound \
         {STOP_BOUND:?}); {frames} frames decoded, all {} outputs delivered ({lines_at_signal} \
         had arrived at the signal); clients had sent {} MiB",
        m["outputs"],
        sent >> 20
    );
}

/// A server whose receiver stopped reading while clients flood it: its output is stuck.
fn stuck_server(extra: &[&str]) -> (Server, TestSink, Flood) {
    let sink = TestSink::start("127.0.0.1:0".parse().unwrap(), false, false);
    let server = Server::serve("127.0.0.1:0", sink.addr(), extra);
    let flood = flood(&server);
    assert!(
        sink.wait_for_lines(10_000, WAIT),
        "no output; stderr:\n{}",
        server.stderr()
    );
    sink.set_pace(Pace::Stalled);
    // Long enough for the held output and the socket buffers to fill.
    thread::sleep(Duration::from_millis(1500));
    (server, sink, flood)
}

#[test]
fn second_signal_exits_at_once_while_the_stop_waits_on_a_stalled_sink() {
    let (mut server, _sink, flood) = stuck_server(&[]);
    server.signal("TERM");
    server.expect_stderr("stopping", "the first signal is acknowledged");
    thread::sleep(Duration::from_millis(1000));
    assert!(
        final_metrics(&server).is_none(),
        "the server stopped while its receiver took nothing: this test needs a stuck stop"
    );
    server.signal("INT");
    let signalled = Instant::now();
    let status = server.wait_exit(WAIT);
    let took = signalled.elapsed();
    flood.stop();
    assert_eq!(status.code(), Some(130), "stderr:\n{}", server.stderr());
    assert!(
        took < Duration::from_millis(500),
        "the second signal took {took:.2?} to end the server"
    );
    server.expect_stderr("second signal", "the immediate exit is logged");
    eprintln!("second signal: exit 130 after {took:.2?}");
}

#[test]
fn stalled_sink_cannot_hold_the_stop_past_the_grace() {
    let (mut server, _sink, flood) = stuck_server(&["--shutdown-grace", "1"]);
    server.signal("TERM");
    let signalled = Instant::now();
    let status = server.wait_exit(WAIT);
    let took = signalled.elapsed();
    flood.stop();
    assert_eq!(
        status.code(),
        Some(1),
        "output was dropped: the exit status must say so; stderr:\n{}",
        server.stderr()
    );
    // The grace, then what is in flight is decoded and its output dropped.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "stopped after {took:.2?} with --shutdown-grace 1"
    );
    let m = final_metrics(&server).expect("final metrics");
    let dropped = m["sink_bytes_dropped"];
    assert!(dropped > 0, "nothing counted as dropped");
    let logged: u64 = server
        .stderr_lines()
        .iter()
        .filter_map(|l| crate::support::number_after(l, ": dropped "))
        .sum();
    assert_eq!(logged, dropped, "the log names every byte dropped");
    server.expect_stderr(
        &format!("{dropped} bytes of output were never written"),
        "the exit error says how much was lost",
    );
    eprintln!("stalled sink, --shutdown-grace 1: exit 1 after {took:.2?}, {dropped} bytes dropped");
}
