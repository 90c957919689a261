//! Connections spread evenly over the cores (`engine/src/tcp/balance.rs`): SO_REUSEPORT's hash
//! alone often puts 3 or 4 of 4 connections on one of 2 cores; a core that accepts a
//! connection while another has fewer open hands it over, on both socket backends, and nothing
//! sent on a handed-over connection is lost.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bettong_engine::{Engine, IoBackend, MemorySource, SinkConfig, SourceConfig, TcpSourceConfig};

use crate::support::frame_all;

/// `engine` (2 cores) spreads 8 connections 4 and 4 on `io`.
fn balanced_on(io: IoBackend, engine: Engine) {
    let mut cfg = TcpSourceConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.io = io;
    let running = engine
        .start(
            bettong::app::word_count(),
            SourceConfig::Tcp(cfg),
            SinkConfig::Memory,
        )
        .unwrap();
    let addr = running.local_addr().unwrap();
    let metrics = running.metrics().clone();
    let frames = frame_all(&["alpha beta", "gamma"]);
    // Eight connections, one after another, each kept open.
    let mut conns = Vec::new();
    for i in 0..8 {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&frames).unwrap();
        conns.push(c);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metrics.total().connections_accepted < i + 1 {
            assert!(
                Instant::now() < deadline,
                "connection {i} was never accepted"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.total().frames_in < 16 {
        assert!(Instant::now() < deadline, "{:?}", metrics.total());
        std::thread::sleep(Duration::from_millis(2));
    }
    let per_core = metrics.per_core();
    let accepted: Vec<u64> = per_core.iter().map(|m| m.connections_accepted).collect();
    assert_eq!(accepted, [4, 4], "{io:?}: {per_core:?}");
    // Each core read the frames of its own connections.
    let frames_in: Vec<u64> = per_core.iter().map(|m| m.frames_in).collect();
    assert_eq!(frames_in, [8, 8], "{io:?}: {per_core:?}");
    drop(conns);
    running.stop();
    let report = running.join().unwrap();
    let mut lines: Vec<String> = report.output_lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 24, "{lines:?}");
    assert!(lines.contains(&"alpha => 8".to_string()), "{lines:?}");
    assert!(lines.contains(&"gamma => 8".to_string()), "{lines:?}");
}

#[test]
fn connections_are_spread_evenly_over_the_cores_with_io_uring() {
    balanced_on(
        IoBackend::Uring,
        Engine::new().cores(2).balance_connections(true),
    );
}

#[test]
fn connections_are_balanced_by_default() {
    assert_ne!(
        std::env::var("BETTONG_BALANCE").as_deref(),
        Ok("0"),
        "BETTONG_BALANCE=0 in the environment turns the default off: unset it for this test"
    );
    balanced_on(IoBackend::Uring, Engine::new().cores(2));
}

#[test]
fn connections_are_spread_evenly_over_the_cores_with_glommio_sockets() {
    balanced_on(
        IoBackend::Glommio,
        Engine::new().cores(2).balance_connections(true),
    );
}

#[test]
fn a_memory_source_is_not_affected() {
    let report = Engine::new()
        .cores(2)
        .run(
            bettong::app::word_count(),
            SourceConfig::Memory(MemorySource::from_frames(["a b", "a"])),
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(report.total().connections_handed_off, 0);
    assert_eq!(report.output_lines().count(), 3);
}
