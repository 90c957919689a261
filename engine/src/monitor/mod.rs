//! Watching a running engine: Prometheus metrics, a live monitoring page and progress lines.
//!
//! [`Monitor::start`] serves, on its own threads (never on an engine core):
//! - `/metrics`: every per-core counter and gauge with a `core` label, the histograms of
//!   [`Metrics::histograms`] in seconds, and the checkpoint counters, in the Prometheus
//!   (OpenMetrics) text format ([`prometheus`], names from [`names`]);
//! - `/metrics.json`: the latest one-second [`Sample`] (`?history`: the last
//!   [`HISTORY`] of them), rates, levels and latency percentiles per core and in total;
//! - `/`: the monitoring page ([`page`]), which charts `/metrics.json` every second.
//!
//! [`Progress`] logs one line every interval from the same samples. Both read the cores'
//! counters with relaxed atomic loads and copy their histograms (see [`Metrics::histograms`]).
//!
//! ```no_run
//! use bettong_engine::monitor::Monitor;
//! # fn run(running: &bettong_engine::Running) -> Result<(), bettong_engine::monitor::MonitorError> {
//! let monitor = Monitor::start("127.0.0.1:9100".parse().unwrap(), running.metrics().clone())?;
//! println!("metrics on http://{}/metrics", monitor.local_addr());
//! # Ok(()) }
//! ```

mod http;
pub mod names;
pub mod page;
pub mod progress;
pub mod prometheus;
pub mod sample;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use progress::Progress;
pub use sample::{Sample, Sampler};

use crate::Metrics;

/// Samples kept for `/metrics.json?history`: ten minutes at one a second.
pub const HISTORY: usize = 600;

/// How often the monitor samples the metrics for `/metrics.json`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The HTTP server could not listen.
    #[error(
        "the metrics server cannot listen on {addr}: {reason}; pick a free port with \
         --metrics-addr (port 0 picks one)"
    )]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A thread could not be started.
    #[error("the metrics server cannot start its {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// The samples kept, newest last, shared by the sampler and the HTTP thread (never by a core).
#[derive(Debug, Clone, Default)]
struct History(Arc<Mutex<VecDeque<Arc<str>>>>);

impl History {
    fn push(&self, json: String) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(json.into());
    }

    /// The newest sample's JSON (`{}` before the first).
    fn latest_json(&self) -> String {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.back().map_or_else(|| "{}".to_string(), |s| s.to_string())
    }

    /// Every sample kept, as a JSON array, oldest first.
    fn all_json(&self) -> String {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(h.iter().map(|s| s.len() + 1).sum::<usize>() + 2);
        out.push('[');
        for (i, s) in h.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(s);
        }
        out.push(']');
        out
    }
}

/// Starts the monitor.
#[derive(Debug)]
pub struct Monitor;

/// A running monitor: its threads stop when this is dropped (or [`MonitorHandle::stop`]).
pub struct MonitorHandle {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    http_stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Monitor {
    /// Serves `/metrics`, `/metrics.json` and the page on `addr` (port 0: any free port, see
    /// [`MonitorHandle::local_addr`]) from `metrics`, on two threads of its own: one samples
    /// the metrics every [`SAMPLE_EVERY`], one answers HTTP requests.
    pub fn start(addr: SocketAddr, metrics: Metrics) -> Result<MonitorHandle, MonitorError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MonitorError::Listen {
            addr,
            reason: e.to_string(),
        })?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| MonitorError::Listen {
                addr,
                reason: "it is not an IP address".into(),
            })?;
        let server = Arc::new(server);
        let history = History::default();
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let http_stop = Arc::new(AtomicBool::new(false));
        let mut handle = MonitorHandle {
            addr: local,
            server: server.clone(),
            stop: stop.clone(),
            http_stop: http_stop.clone(),
            threads: Vec::new(),
        };
        let mut sampler = Sampler::new(metrics.clone());
        let h = history.clone();
        let sampling = std::thread::Builder::new()
            .name("bettong-monitor-sample".into())
            .spawn(move || loop {
                let (lock, cvar) = &*stop;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = cvar
                    .wait_timeout_while(stopped, SAMPLE_EVERY, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                h.push(sampler.sample().json().to_string());
            })
            .map_err(|source| MonitorError::Thread {
                what: "sampling",
                source,
            })?;
        handle.threads.push(sampling);
        let registry = prometheus::registry(metrics);
        let serving = std::thread::Builder::new()
            .name("bettong-monitor-http".into())
            .spawn(move || http::serve(server, registry, history, http_stop))
            .map_err(|source| MonitorError::Thread {
                what: "HTTP",
                source,
            })?;
        handle.threads.push(serving);
        Ok(handle)
    }
}

impl std::fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MonitorHandle {
    /// The address it really listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the threads.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        self.http_stop.store(true, Ordering::Relaxed);
        self.server.unblock();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreMetrics;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_samples_and_the_page_then_stops() {
        let m = Metrics::new(2);
        CoreMetrics::add(&m.core(1).frames_in, 5);
        let monitor = Monitor::start("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
        let addr = monitor.local_addr();
        assert_ne!(addr.port(), 0);
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains(prometheus::CONTENT_TYPE), "{metrics}");
        assert!(
            metrics.contains("bettong_frames_in_total{core=\"1\"} 5"),
            "{metrics}"
        );
        assert!(get(addr, "/").contains("<title>Bettong monitor</title>"));
        // The first sample comes after one interval.
        std::thread::sleep(SAMPLE_EVERY + Duration::from_millis(300));
        let json = get(addr, "/metrics.json?history");
        let body = json.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v[0]["total"]["now"]["frames_in"], 5, "{v}");
        assert!(get(addr, "/elsewhere").starts_with("HTTP/1.1 404"));
        monitor.stop();
        // tiny_http's accept thread closes the listener just after the server is dropped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "still listening 5 s after stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_busy_address_is_an_error_that_names_it_and_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Monitor::start(addr, Metrics::new(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&addr.to_string()) && err.contains("--metrics-addr"),
            "{err}"
        );
    }
}
