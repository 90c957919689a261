//! Watching `serve` and `market-spread` while they run: the metrics server (`--metrics-addr`:
//! Prometheus `/metrics`, `/metrics.json` and the monitoring page, from the engine's
//! [`bettong_engine::monitor`]) and the progress lines (`--progress-interval`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bettong_engine::monitor::{Monitor, MonitorHandle, Progress};
use bettong_engine::Metrics;

/// The default `--progress-interval`.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

/// What a server command shows while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveOptions {
    /// `HOST:PORT` to serve the metrics and the page on (`--metrics-addr`); none: not served.
    pub metrics_addr: Option<String>,
    /// Time between progress lines (`--progress-interval`); zero: none.
    pub progress_interval: Duration,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        ObserveOptions {
            metrics_addr: None,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// The metrics server and the progress lines of a running server; both stop when dropped.
#[derive(Debug)]
pub struct Observers {
    monitor: Option<MonitorHandle>,
    progress: Option<Progress>,
}

impl Observers {
    /// Starts what `opts` asks for on `metrics`, on threads of their own (never an engine core).
    pub fn start(opts: &ObserveOptions, metrics: &Metrics) -> Result<Observers> {
        let monitor = match &opts.metrics_addr {
            Some(addr) => {
                let addr = crate::serve::resolve(addr, "--metrics-addr")?;
                let m = Monitor::start(addr, metrics.clone())?;
                let at = m.local_addr();
                tracing::info!(
                    "metrics on http://{at}/ (the monitoring page), http://{at}/metrics \
                     (Prometheus) and http://{at}/metrics.json"
                );
                Some(m)
            }
            None => None,
        };
        let progress = if opts.progress_interval.is_zero() {
            None
        } else {
            Some(
                Progress::start(metrics.clone(), opts.progress_interval)
                    .context("starting the progress-line thread")?,
            )
        };
        Ok(Observers { monitor, progress })
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.monitor.as_ref().map(MonitorHandle::local_addr)
    }

    /// Stops the progress lines (the metrics stay up until drop).
    pub fn stop_progress(&mut self) {
        self.progress = None;
    }
}
