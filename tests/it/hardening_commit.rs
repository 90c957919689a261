//! Issue 10, item 3: a checkpoint commits only once the receiver's kernel acknowledged every byte
//! of output produced before its cut, so a sink connection reset after a commit, then `kill -9`
//! and a restart, leave no gap in any word's counts.
//!
//! Run 1 writes into a sink that accepts and reads nothing (a tiny receive buffer: the receiver's
//! kernel acknowledges a few KiB; the rest waits in the server's send queue). Once the server
//! committed a checkpoint (or had 3 s to), it is stopped (SIGSTOP, so it commits nothing more),
//! the test reads exactly what the receiver's kernel holds (`rx_queue` in `/proc/net/tcp`, a
//! superset of what it acknowledged), resets the connection (SO_LINGER 0) and kills the server
//! with SIGKILL. Run 2 restarts with a sink that reads everything. Over both runs every word's
//! counts must cover 1..=N. Before the fix, run 1 committed a checkpoint whose cut lay beyond
//! what the receiver had, and those counts were never emitted again.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bettong::corpus::split_frames;
use bettong_engine::checkpoint;

use crate::support::{reference_counts, Server, WAIT};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bettong-hco-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// Bytes waiting unread in the receive queue of the established TCP connection from `local` to
/// `peer` (both on 127.0.0.1), from `/proc/net/tcp`.
fn rx_queue(local: SocketAddr, peer: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let want_local = format!("0100007F:{:04X}", local.port());
    let want_peer = format!("0100007F:{:04X}", peer.port());
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1] == want_local && f[2] == want_peer {
            let rx = f[4].split(':').nth(1).expect("tx_queue:rx_queue");
            return u64::from_str_radix(rx, 16).expect("hex rx_queue");
        }
    }
    panic!("no connection {local} <- {peer} in /proc/net/tcp:\n{table}");
}

fn lines_of(bytes: &[u8]) -> Vec<String> {
    // Only complete lines: a tail cut short belongs to output after the last checkpoint.
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn parse(line: &str) -> (&str, u64) {
    let (w, n) = line
        .rsplit_once(" => ")
        .unwrap_or_else(|| panic!("malformed output line {line:?}"));
    (
        w,
        n.parse()
            .unwrap_or_else(|_| panic!("bad count in {line:?}")),
    )
}

/// A sink that keeps every complete line of every connection.
fn collecting_sink() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let addr = listener.local_addr().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = lines.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let keep = keep.clone();
            thread::spawn(move || {
                for line in BufReader::new(s).split(b'\n').map_while(Result::ok) {
                    keep.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).into_owned());
                }
            });
        }
    });
    (addr, lines)
}

#[test]
fn reset_sink_after_a_commit_then_kill_9_leaves_no_gap() {
    let dir = scratch("gap");
    let file = dir.join("corpus.bin");
    let framed = bettong::synth::zipf_corpus(1_500, 10, 300, 7);
    std::fs::write(&file, &framed).expect("write the corpus");
    let expected: HashMap<String, u64> =
        reference_counts(split_frames(&framed).expect("whole frames"));
    let ckdir = dir.join("ck");
    let (file_s, ck_s) = (
        format!("file:{}", file.display()),
        ckdir.display().to_string(),
    );

    // Run 1: a sink that accepts and reads nothing, with a tiny receive buffer.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind the stalled sink");
    sock.listen(8).unwrap();
    let listener: TcpListener = sock.into();
    let sink = listener.local_addr().unwrap();
    let sink_s = sink.to_string();
    let args = [
        "serve",
        "--in",
        &file_s,
        "--out",
        &sink_s,
        "--cores",
        "1",
        "--resilience-dir",
        &ck_s,
        "--checkpoint-interval",
        "200ms",
    ];
    let mut server = Server::spawn(&args);
    let (mut conn, peer) = listener.accept().expect("the server connects to its sink");
    let started = Instant::now();
    let mut committed = false;
    while started.elapsed() < Duration::from_secs(3) {
        if !checkpoint::ids(&ckdir).unwrap_or_default().is_empty() {
            committed = true;
            thread::sleep(Duration::from_millis(300));
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Freeze the server (it commits nothing more), take exactly what the receiver's kernel
    // holds, reset the connection, and kill the server.
    let _ = Command::new("kill")
        .args(["-STOP", &server.pid().to_string()])
        .status();
    thread::sleep(Duration::from_millis(50));
    let held = rx_queue(sink, peer);
    let mut got1 = vec![0u8; held as usize];
    conn.read_exact(&mut got1)
        .expect("read what the receiver's kernel holds");
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(conn);
    let _ = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status();
    let _ = server.wait_exit(WAIT);
    let ids1 = checkpoint::ids(&ckdir).unwrap_or_default();
    let lines1 = lines_of(&got1);

    // Run 2: a normal sink.
    let (sink2, lines2) = collecting_sink();
    let sink2_s = sink2.to_string();
    let mut args2 = args;
    args2[4] = &sink2_s;
    let mut server2 = Server::spawn(&args2);
    let status = server2.wait_exit(WAIT);
    assert!(
        status.success(),
        "run 2 exited with {status}:\n{}",
        server2.stderr()
    );
    thread::sleep(Duration::from_millis(200));
    let lines2 = lines2.lock().unwrap().clone();

    let mut seen: HashMap<&str, HashSet<u64>> = HashMap::new();
    for line in lines1.iter().chain(&lines2) {
        let (w, n) = parse(line);
        seen.entry(w).or_default().insert(n);
    }
    let mut gaps = Vec::new();
    for (w, &n) in &expected {
        let s = seen.get(w.as_str());
        if let Some(first) = (1..=n).find(|k| !s.is_some_and(|s| s.contains(k))) {
            gaps.push(format!("{w:?} (occurs {n}): {first} never emitted"));
        }
    }
    gaps.sort();
    assert!(
        gaps.is_empty(),
        "{} words have gaps across both runs (run 1 committed {ids1:?} (seen committed: \
         {committed}); the receiver held {held} bytes = {} lines; run 2 emitted {} lines): {}",
        gaps.len(),
        lines1.len(),
        lines2.len(),
        gaps[..gaps.len().min(5)].join("; ")
    );
    eprintln!(
        "run 1: committed {ids1:?}, receiver held {held} bytes ({} lines); run 2: {} lines",
        lines1.len(),
        lines2.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
