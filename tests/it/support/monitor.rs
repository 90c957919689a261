//! The server's monitor from outside: its address (the ready line's `metrics`), plain HTTP GETs
//! of `/metrics`, `/metrics.json` and the page, and a steady load to watch ([`Load`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bettong::receive::Receiver;

use super::{busy_inputs, Flood, Server, WAIT};

/// Starts `bettong serve` on 2 cores writing to `receiver`, with its metrics on a free port and
/// no progress lines; returns it and the metrics' address.
#[track_caller]
pub fn serve_monitored(receiver: &Receiver) -> (Server, SocketAddr) {
    let server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--metrics-addr", "127.0.0.1:0", "--progress-interval", "0"],
    );
    let addr = metrics_addr(&server);
    (server, addr)
}

/// Where the server serves its metrics: the `metrics` of its ready line (it was started with
/// `--metrics-addr 127.0.0.1:0`).
#[track_caller]
pub fn metrics_addr(server: &Server) -> SocketAddr {
    let ready = server.event("ready").expect("the server is ready");
    ready["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no \"metrics\":\"HOST:PORT\" in the ready line {ready}"))
}

/// `GET path` on `addr`: the status code and the body.
#[track_caller]
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("cannot connect to the monitor at {addr}: {e}"));
    s.set_read_timeout(Some(WAIT)).expect("set a read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the response to GET {path}: {text}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in the response to GET {path}: {head}"));
    // tiny_http answers HTTP/1.1 with `Connection: close` unchunked; a chunked body would show
    // its sizes here and fail the callers' parsing loudly.
    (status, body.to_string())
}

/// `/metrics.json` as JSON.
#[track_caller]
pub fn metrics_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}

/// Waits until the monitor's latest sample shows messages coming in; returns that sample.
#[track_caller]
pub fn wait_for_input(addr: SocketAddr, server: &Server) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metrics_json(addr, "/metrics.json");
        if v["total"]["per_s"]["frames_in"].as_f64().unwrap_or(0.0) > 0.0 {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics.json never showed input within {WAIT:?}: {v}; the server's stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Clients sending random messages to the server until stopped, so there is something to watch.
pub struct Load(Flood);

impl Load {
    /// Starts `clients` connections, each sending its own random messages over and over.
    pub fn start(server: &Server, clients: usize) -> Load {
        let inputs = busy_inputs(clients, 2_000, 77)
            .into_iter()
            .map(Arc::new)
            .collect();
        let streams = (0..clients).map(|_| server.connect()).collect();
        Load(Flood::start(streams, inputs, 100_000, 16 * 1024))
    }

    /// Stops the clients; returns the bytes they wrote.
    pub fn stop(self) -> u64 {
        self.0.stop().iter().sum()
    }
}
