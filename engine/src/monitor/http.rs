//! The monitor's HTTP server: one thread (off the engine's cores) answering `/metrics`
//! (Prometheus), `/metrics.json` (the latest [`Sample`](super::sample::Sample);
//! `?history` for every one kept) and the page's files, with `tiny_http`.
//!
//! Each request is answered from data already read off the cores: the samples are taken by the
//! monitor's sampler thread, and a scrape reads the relaxed atomic counters and copies the
//! histograms. Requests are answered one at a time on this thread: a slow client delays other
//! monitor requests, never a core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Request, Response, Server};

use super::{page, prometheus, History};

/// Serves requests until `stop` is set (and the server unblocked).
pub(super) fn serve(
    server: Arc<Server>,
    registry: Registry,
    history: History,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                if !stop.load(Ordering::Relaxed) {
                    tracing::warn!("monitor: accepting an HTTP request failed: {e}; going on");
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        answer(request, &registry, &history);
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// Answers one request; a client gone meanwhile is only logged at debug level.
fn answer(request: Request, registry: &Registry, history: &History) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let (status, content_type, body): (u16, &str, String) = match (request.method(), path) {
        (Method::Get | Method::Head, "/metrics") => {
            (200, prometheus::CONTENT_TYPE, prometheus::encode(registry))
        }
        (Method::Get | Method::Head, "/metrics.json") => {
            let body = if query.split('&').any(|q| q == "history") {
                history.all_json()
            } else {
                history.latest_json()
            };
            (200, "application/json", body)
        }
        (Method::Get | Method::Head, p) => match page::asset(p) {
            Some(a) => (200, a.content_type, a.body.to_string()),
            None => (
                404,
                "text/plain; charset=utf-8",
                format!(
                    "{p} is not served here: the monitor serves / (the page), /metrics \
                     (Prometheus) and /metrics.json\n"
                ),
            ),
        },
        (m, p) => (
            405,
            "text/plain; charset=utf-8",
            format!("{m} {p}: the monitor only answers GET\n"),
        ),
    };
    let response = Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"));
    if let Err(e) = request.respond(response) {
        tracing::debug!("monitor: answering {url} failed (client gone?): {e}");
    }
}
