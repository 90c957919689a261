//! A real `nats-server -js` for the cluster tests, on a free port with its own store directory
//! (never one already running), and the `bettong` commands that talk to it: members
//! ([`member`]) and single processes ([`serve`]), `send --nats`, `receive --nats --validate`, `cluster status --json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::server::bettong_bin;
use super::{free_addr, Server, WAIT};

/// The cluster tests' processes run at this niceness, so that the timing-sensitive tests that
/// run beside them keep the CPU they need.
const NICE: &str = "10";

/// One cluster test at a time: each runs a nats-server and several members, and running two at
/// once beside the other tests starves the timing-sensitive ones on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `nats-server` child with JetStream on; killed and its store deleted on drop. While it
/// lives, no other cluster test runs.
pub struct NatsServer {
    _turn: std::sync::MutexGuard<'static, ()>,
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its store directory (and the tests' scratch files).
    pub dir: PathBuf,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

impl NatsServer {
    /// Starts one, waiting until it accepts connections. Fails the test, saying how to install
    /// it, when `nats-server` is not on PATH.
    #[track_caller]
    pub fn start() -> NatsServer {
        // In memory (tmpfs) where there is one: the server's file storage then costs no disk
        // I/O, which the tests beside it (checkpoints with fsync) are sensitive to.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "bettong-nats-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test's store directory");
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let port = free_addr().port();
        let mut s = NatsServer {
            _turn: turn,
            child: None,
            port,
            dir,
        };
        s.launch();
        s
    }

    #[track_caller]
    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("nats-server.log")).expect("server log");
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start nats-server ({e}): the cluster tests need it on PATH \
                     (Debian: apt-get install nats-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not listen within {WAIT:?}; its log:\n{}",
                self.port,
                std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("nats://127.0.0.1:{}/{prefix}", self.port)
    }

    /// Stops the server (SIGTERM, then waits) and starts it again on the same port and store.
    #[track_caller]
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        thread::sleep(down_for);
        self.launch();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `bettong serve --in URL --out URL --job JOB EXTRA…` (one cluster member) and waits for
/// its ready line.
#[track_caller]
pub fn member(url: &str, job: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--job", job];
    args.extend_from_slice(extra);
    serve(url, url, &args)
}

/// Starts `bettong serve --in INPUT --out OUTPUT EXTRA…` and waits for its ready line.
#[track_caller]
pub fn serve(input: &str, output: &str, extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--in", input, "--out", output];
    args.extend_from_slice(extra);
    spawn_ready(&args)
}

/// Starts `bettong ARGS` (a server command) and waits for its ready line.
#[track_caller]
pub fn spawn_ready(args: &[&str]) -> Server {
    let server = Server::spawn_niced(NICE, args);
    let deadline = Instant::now() + WAIT;
    while server.event("ready").is_none() {
        assert!(
            Instant::now() < deadline,
            "{args:?} printed no ready line within {WAIT:?}; its stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    server
}

/// Runs `bettong ARGS` to its end; returns stdout, failing the test (with stderr) on a non-zero
/// exit unless `may_fail`.
#[track_caller]
pub fn run_bettong(args: &[&str], may_fail: bool) -> (bool, String, String) {
    let out = Command::new("nice")
        .args(["-n", NICE, bettong_bin()])
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run bettong {args:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        may_fail || out.status.success(),
        "bettong {args:?} failed ({}); stderr:\n{stderr}",
        out.status
    );
    (out.status.success(), stdout, stderr)
}

/// Publishes the framed file `file` with `send --nats`.
#[track_caller]
pub fn send_file(url: &str, file: &Path, in_partitions: u32) {
    let ip = in_partitions.to_string();
    let file = file.to_str().expect("utf-8 path");
    run_bettong(
        &[
            "send",
            "--nats",
            url,
            "--framed-file",
            file,
            "--in-partitions",
            &ip,
            "--batch-bytes",
            "2048",
        ],
        false,
    );
}

/// `cluster status --json`.
#[track_caller]
pub fn status(nats: &NatsServer, job: &str) -> serde_json::Value {
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let (_, out, _) = run_bettong(
        &["cluster", "status", "--nats", &url, "--job", job, "--json"],
        false,
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
}

/// Waits until the status satisfies `pred`, for at most `timeout`; returns the last status and
/// how long it took (`None` if it never did).
pub fn wait_status(
    nats: &NatsServer,
    job: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Option<Duration>) {
    let t0 = Instant::now();
    loop {
        let s = status(nats, job);
        if pred(&s) {
            return (s, Some(t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            return (s, None);
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Whether the status shows `members` members, every partition owned and balanced, and no lag.
pub fn settled(s: &serde_json::Value, members: usize) -> bool {
    s["members"].as_array().map_or(0, |m| m.len()) == members
        && s["balanced"] == true
        && s["input_lag"] == 0
        && s["repartition_lag"] == 0
}

/// `receive --nats URL --validate --expect-counts FILE [--no-repeats]`: the report, and whether
/// the checks passed.
#[track_caller]
pub fn validate(url: &str, counts: &Path, no_repeats: bool) -> (bool, serde_json::Value, String) {
    let counts = counts.to_str().expect("utf-8 path");
    let mut args = vec![
        "receive",
        "--nats",
        url,
        "--validate",
        "--expect-counts",
        counts,
        "--idle-exit",
        "2",
    ];
    if no_repeats {
        args.push("--no-repeats");
    }
    let (ok, out, err) = run_bettong(&args, true);
    let report = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("receive printed no JSON report ({e}): stdout {out:?}, stderr:\n{err}")
    });
    (ok, report, err)
}
