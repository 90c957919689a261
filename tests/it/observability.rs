//! Watching a running server (issue 8): `/metrics` parsed by the reference Prometheus parsers,
//! `/metrics.json` under load, progress lines, the first log line, JSON logs and no colour codes
//! in a log that is not a terminal. The page in a real browser is `observability_page.rs`.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::monitor::{http_get, metrics_json, serve_monitored, wait_for_input, Load};
use crate::support::{busy_inputs, send_busy, start_receiver, Server, ShServer, WAIT};

/// The parser script beside the support modules.
const PARSER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/it/support/parse_metrics.py"
);

/// Runs `parse_metrics.py` on `text`: every family the Prometheus parsers read, by name.
fn parse_with_prometheus_client(text: &str) -> HashMap<String, Value> {
    let mut child = Command::new("python3")
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): this test needs python3 with prometheus-client")
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(text.as_bytes())
        .expect("write the scrape to the parser");
    let out = child.wait_with_output().expect("wait for the parser");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(2) => panic!(
            "{stderr}\nthis test needs the Python package prometheus-client (.ci/run installs \
             it): python3 -m pip install prometheus-client"
        ),
        _ => panic!("the Prometheus parsers reject /metrics: {stderr}\nthe scrape:\n{text}"),
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("the parser prints JSON");
    v["families"]
        .as_object()
        .expect("families")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The samples of family `name` named `sample` with label `core`, by core.
fn per_core(families: &HashMap<String, Value>, name: &str, sample: &str) -> Vec<f64> {
    let family = families
        .get(name)
        .unwrap_or_else(|| panic!("no family {name} in {:?}", families.keys()));
    let mut by_core: Vec<(usize, f64)> = family["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s[0] == sample)
        .map(|s| {
            let core = s[1]["core"]
                .as_str()
                .expect("a core label")
                .parse()
                .unwrap();
            (core, s[2].as_f64().expect("a value"))
        })
        .collect();
    by_core.sort_by_key(|(c, _)| *c);
    by_core.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn metrics_validate_against_the_prometheus_parsers() {
    let receiver = start_receiver();
    let (server, addr) = serve_monitored(&receiver);
    let inputs = busy_inputs(4, 300, 8);
    send_busy(&server, &inputs, 8);
    // Wait until every frame is read and every record's output made (the monitor samples every
    // second), then a little for the last outputs to be written and their latency recorded.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = &metrics_json(addr, "/metrics.json")["total"]["now"];
        if now["frames_in"] == 1200 && now["outputs"] == now["records_in"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not all read: {now}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let families = parse_with_prometheus_client(&text);

    for name in families.keys() {
        assert!(
            name.starts_with("bettong_"),
            "{name} lacks the bettong_ prefix"
        );
    }
    let family = |n: &str| &families[n];
    assert_eq!(family("bettong_frames_in")["type"], "counter");
    let frames = per_core(&families, "bettong_frames_in", "bettong_frames_in_total");
    assert_eq!(frames.len(), 2, "one series per core: {frames:?}");
    assert_eq!(
        frames.iter().sum::<f64>(),
        4.0 * 300.0,
        "every frame sent is counted"
    );
    assert_eq!(family("bettong_input_bytes")["unit"], "bytes");
    let bytes_in = per_core(
        &families,
        "bettong_input_bytes",
        "bettong_input_bytes_total",
    );
    let sent: usize = inputs.iter().map(Vec::len).sum();
    assert_eq!(bytes_in.iter().sum::<f64>(), sent as f64);
    assert_eq!(family("bettong_keys")["type"], "gauge");
    assert!(
        per_core(&families, "bettong_keys", "bettong_keys")
            .iter()
            .sum::<f64>()
            > 0.0
    );
    assert_eq!(
        per_core(
            &families,
            "bettong_sink_connected",
            "bettong_sink_connected"
        ),
        [1.0, 1.0],
        "both cores are connected to the receiver"
    );
    assert_eq!(
        family("bettong_checkpoint_pause_seconds")["unit"],
        "seconds"
    );

    let latency = family("bettong_latency_seconds");
    assert_eq!(latency["type"], "histogram");
    assert_eq!(latency["unit"], "seconds");
    let counts = per_core(
        &families,
        "bettong_latency_seconds",
        "bettong_latency_seconds_count",
    );
    assert!(
        counts.iter().sum::<f64>() > 0.0,
        "latencies were recorded: {counts:?}"
    );
    let inf: Vec<f64> = latency["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == "bettong_latency_seconds_bucket" && s[1]["le"] == "+Inf")
        .map(|s| s[2].as_f64().unwrap())
        .collect();
    assert_eq!(inf.iter().sum::<f64>(), counts.iter().sum::<f64>());
    let bounds: Vec<String> = latency["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == "bettong_latency_seconds_bucket" && s[1]["core"] == "0")
        .map(|s| s[1]["le"].as_str().unwrap().to_string())
        .collect();
    assert!(
        bounds.first().map(String::as_str) == Some("0.00001") && bounds.contains(&"10.0".into()),
        "buckets from 10 µs to 10 s: {bounds:?}"
    );
    assert_eq!(families["bettong_cores"]["samples"][0][2], 2.0);
    drop(server);
}

#[test]
fn metrics_json_and_the_page_are_served_under_load() {
    let receiver = start_receiver();
    let (server, addr) = serve_monitored(&receiver);
    let load = Load::start(&server, 2);
    let sample = wait_for_input(addr, &server);
    assert_eq!(sample["cores"], 2);
    assert_eq!(sample["per_core"].as_array().map(Vec::len), Some(2));
    assert!(
        sample["total"]["per_s"]["outputs"].as_f64().unwrap() > 0.0,
        "{sample}"
    );
    assert_eq!(sample["total"]["now"]["connections_open"], 2, "{sample}");
    assert!(
        sample["total"]["hist_us"]["latency"]["count"]
            .as_u64()
            .unwrap()
            > 0,
        "{sample}"
    );
    let history = metrics_json(addr, "/metrics.json?history");
    let history = history.as_array().expect("?history is an array");
    assert!(!history.is_empty());
    let times: Vec<u64> = history
        .iter()
        .map(|s| s["unix_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );
    load.stop();

    let (status, page) = http_get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/monitor.js\">"), "{page}");
    let (status, js) = http_get(addr, "/uPlot.iife.min.js");
    assert_eq!(status, 200);
    assert!(js.contains("uPlot"));
    let (status, body) = http_get(addr, "/nothing-here");
    assert_eq!(status, 404);
    assert!(
        body.contains("/metrics.json"),
        "the 404 says what is served: {body}"
    );
}

#[test]
fn progress_lines_and_the_first_log_line() {
    let receiver = start_receiver();
    let server = Server::serve(
        "127.0.0.1:0",
        receiver.local_addr(),
        &["--progress-interval", "300ms"],
    );
    let load = Load::start(&server, 2);
    let line = server
        .wait_for_stderr_line(
            |l| l.contains("progress: ") && !l.contains("progress: 0 msgs/s in"),
            WAIT,
        )
        .unwrap_or_else(|| panic!("no progress line with input; stderr:\n{}", server.stderr()));
    load.stop();
    for part in [
        "msgs/s in",
        "lines/s out",
        "p99 ",
        "connections",
        "keys",
        "sink 2/2 connected",
    ] {
        assert!(
            line.contains(part),
            "the progress line lacks {part:?}: {line}"
        );
    }
    let first = server.stderr_lines().first().cloned().unwrap_or_default();
    assert!(
        first.contains("serve (pid ") && first.contains("listening on 127.0.0.1:0 (--in)"),
        "the first log line says where the server listens: {first}"
    );
}

#[test]
fn json_logs_and_no_colours_when_stderr_is_not_a_terminal() {
    let receiver = start_receiver();
    // NO_COLOR unset (empty): colours are left off because stderr is a pipe, not because of it.
    let text = ShServer::start("", &[("NO_COLOR", "")], receiver.local_addr(), &[]);
    let (code, _, log) = text.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("listening on"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in a log that is not a terminal:\n{log}"
    );

    let json = ShServer::start(
        "",
        &[("NO_COLOR", "")],
        receiver.local_addr(),
        &["--log-format", "json", "--progress-interval", "200ms"],
    );
    send_busy(&json, &busy_inputs(1, 50, 3), 3);
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, log) = json.stop();
    assert_eq!(code, Some(0), "{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    assert!(
        message(&lines[0]).contains("listening on"),
        "{:?}",
        lines[0]
    );
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let progress = lines
        .iter()
        .find(|l| message(l).starts_with("progress: "))
        .unwrap_or_else(|| panic!("no progress line:\n{log}"));
    assert!(progress["fields"]["msgs_in_per_s"].is_u64(), "{progress}");
    let last = lines
        .iter()
        .rev()
        .find(|l| message(l).starts_with("final metrics: "));
    let last = message(last.expect("a final metrics line"));
    let metrics: Value = serde_json::from_str(last.trim_start_matches("final metrics: "))
        .expect("the final metrics are one JSON object");
    assert_eq!(metrics["frames_in"], 50);
}

#[test]
fn market_spread_serves_its_metrics_too() {
    use crate::support::market::{quote, quote_frame, MarketServer, ResultSink};
    let sink = ResultSink::start();
    let ms = MarketServer::start(sink.addr(), &["--metrics-addr", "127.0.0.1:0"]);
    let addr = crate::support::monitor::metrics_addr(&ms.server);
    let mut nbbo = ms.connect_nbbo();
    for _ in 0..10 {
        nbbo.write_all(&quote_frame(&quote(b"ABCD", 10.0, 10.01)))
            .expect("send a quote");
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        let frames: u64 = text
            .lines()
            .filter(|l| l.starts_with("bettong_frames_in_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if frames == 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frames {frames}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `send` and `receive` off a terminal: plain progress lines, no bar redrawn with `\r` or ANSI
/// codes.
#[test]
fn send_and_receive_print_plain_progress_lines_off_a_terminal() {
    let listen = crate::support::free_addr().to_string();
    let mut receive = Server::spawn(&[
        "receive",
        "--listen",
        &listen,
        "--no-write",
        "--idle-exit",
        "1",
    ]);
    let server = Server::serve(
        "127.0.0.1:0",
        listen.parse().unwrap(),
        &["--progress-interval", "0"],
    );
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/data/bill_of_rights.txt");
    let host = server.addr().to_string();
    let (status, send_log) = crate::support::run_to_exit(&[
        "send",
        "--host",
        &host,
        "--file",
        file,
        "--repeat",
        "0",
        "--messages",
        "3000",
        "--rate",
        "2500",
        "--progress-interval",
        "300ms",
    ]);
    assert!(status.success(), "{send_log}");
    let lines: Vec<&str> = send_log
        .lines()
        .filter(|l| l.starts_with("send: "))
        .collect();
    assert!(
        lines.len() >= 2,
        "plain progress lines every 300 ms for 1.2 s:\n{send_log}"
    );
    assert!(
        lines[0].contains(" of 3000 msgs (") && lines[0].ends_with(" msgs/s"),
        "{send_log}"
    );
    let status = receive.wait_exit(WAIT);
    let receive_log = receive.stderr();
    assert!(status.success(), "{receive_log}");
    assert!(receive_log.contains("receive: "), "{receive_log}");
    for log in [&send_log, &receive_log] {
        assert!(
            !log.contains('\r') && !log.contains('\u{1b}'),
            "bar codes in a log:\n{log}"
        );
    }
}
