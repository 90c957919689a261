//! A word-count server the bench did not build: another process (tokio-wc, or `bettong serve`
//! itself), started from a command line with `{IN}` and `{OUT}` in it as `loadgen` does, so the
//! bench's paced sender, receiver and probes measure it exactly as they measure the engine
//! (`bettong bench --server-cmd`; `benches/tokio_compare.sh` sets the two side by side).
//!
//! Such a server has no engine metrics, so a phase ends when its output stops moving, and its
//! CPU time is the whole process's, from `/proc/<pid>/stat`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long the output must stay still before a phase against an external server is over: its
/// rates then count from the send's start to the last line that arrived, not to this wait.
const QUIET: Duration = Duration::from_millis(300);

/// A server process started for the bench, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ExternalServer {
    child: Child,
    /// Where the sender and the probes connect.
    pub addr: SocketAddr,
    cmd: String,
}

impl ExternalServer {
    /// Runs `cmd` through `sh -c 'exec …'` with `{IN}` replaced by a free loopback address and
    /// `{OUT}` by `out`, and waits (up to 20 s) until `{IN}` accepts connections. The process
    /// inherits the calling thread's CPUs: pin it in the command (`taskset -c 1 …`).
    pub fn start(cmd: &str, out: SocketAddr) -> Result<ExternalServer> {
        if !cmd.contains("{IN}") || !cmd.contains("{OUT}") {
            bail!("--server-cmd {cmd:?} must name both {{IN}} and {{OUT}}");
        }
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("picking a free port for the external server's input")?;
        let line = cmd
            .replace("{IN}", &addr.to_string())
            .replace("{OUT}", &out.to_string());
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {line}"))
            .stdin(Stdio::null())
            // Its stdout (a ready line, say) would mix with the bench's table or JSON.
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the external server `{line}`"))?;
        let mut server = ExternalServer {
            child,
            addr,
            cmd: line,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the external server `{}` exited ({status}) before listening on {addr}",
                    server.cmd
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the external server `{}` did not listen on {addr} within 20 s",
                    server.cmd
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's user and system CPU time so far (every thread; 10 ms resolution).
    pub fn cpu(&self) -> Option<Duration> {
        crate::thread_cpu::process_cpu(self.child.id())
    }

    /// Waits until `lines()` (the receiver's count) has stayed still for [`QUIET`] and is
    /// above `before`, and returns the count with the time its last change was seen. Fails
    /// after 120 s, or when the server exits.
    pub fn settle(&mut self, lines: impl Fn() -> u64, before: u64) -> Result<(u64, Instant)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut last, mut changed) = (lines(), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(1));
            let now = lines();
            if now != last {
                (last, changed) = (now, Instant::now());
            } else if now > before && changed.elapsed() >= QUIET {
                return Ok((now, changed));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the external server `{}` exited ({status})", self.cmd);
            }
            if Instant::now() > deadline {
                bail!(
                    "the external server `{}`: {} output lines within 120 s, still moving or none",
                    self.cmd,
                    now - before
                );
            }
        }
    }
}

impl Drop for ExternalServer {
    fn drop(&mut self) {
        // SIGTERM first, so a server that flushes on it (bettong serve) ends cleanly.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_without_both_placeholders_is_refused_with_the_reason() {
        let out: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = ExternalServer::start("tokio-wc {IN}", out)
            .err()
            .expect("a command without {OUT} must be refused");
        assert!(e.to_string().contains("{IN} and {OUT}"), "{e}");
    }

    #[test]
    fn a_server_that_exits_before_listening_is_reported() {
        let out: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let e = ExternalServer::start("true {IN} {OUT}", out)
            .err()
            .expect("a command that exits must fail");
        assert!(e.to_string().contains("exited"), "{e}");
    }
}
