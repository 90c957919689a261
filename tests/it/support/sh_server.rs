//! A `bettong serve` started through `sh -c`, for what the shared [`super::Server`] cannot
//! set: a shell limit (`ulimit -n`) or an environment variable (`BETTONG_IO`) for one server.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::server::bettong_bin;
use super::{CORES, WAIT};

/// A `bettong serve` run through `sh -c PREFIX exec bettong serve …`, for a shell limit
/// (`ulimit -n`) or an environment the shared [`Server`] cannot set.
pub struct ShServer {
    child: Child,
    /// Where its source listens.
    pub addr: SocketAddr,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl ShServer {
    pub fn start(prefix: &str, env: &[(&str, &str)], sink: SocketAddr, extra: &[&str]) -> ShServer {
        let sink = sink.to_string();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{prefix} exec \"$0\" \"$@\""))
            .arg(bettong_bin())
            .args([
                "serve",
                "--in",
                "127.0.0.1:0",
                "--out",
                &sink,
                "--cores",
                CORES,
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sh");
        let out: Arc<Mutex<Vec<String>>> = Arc::default();
        let err: Arc<Mutex<Vec<String>>> = Arc::default();
        let collect = |s: Box<dyn Read + Send>, log: Arc<Mutex<Vec<String>>>| {
            thread::spawn(move || {
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            })
        };
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), out.clone()),
            collect(Box::new(child.stderr.take().unwrap()), err.clone()),
        ];
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            let ready = out.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["event"] == "ready").then(|| v["in"].as_str()?.parse::<SocketAddr>().ok())?
            });
            if let Some(a) = ready {
                break a;
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "`{prefix} bettong serve` exited ({status}) before listening:\n{}",
                    err.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "no ready line");
            thread::sleep(Duration::from_millis(20));
        };
        ShServer {
            child,
            addr,
            out,
            err,
            readers,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().join("\n")
    }

    /// A connection to its source.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to the server");
        s.set_nodelay(true).expect("nodelay");
        s.set_write_timeout(Some(WAIT)).expect("write timeout");
        s
    }

    /// SIGTERM, then the exit status and the counters of its stopped line.
    pub fn stop(mut self) -> (Option<i32>, HashMap<String, u64>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "no exit after TERM");
            thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let metrics = self
            .out
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["event"] == "stopped").then(|| {
                    v["metrics"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                                .collect()
                        })
                        .unwrap_or_default()
                })
            })
            .unwrap_or_default();
        (status.code(), metrics, self.stderr())
    }
}

impl Drop for ShServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
