//! The monitoring page in a real browser: headless Chromium loads `/` from a server under load
//! and the test reads, from the DOM the page built, that its charts plot non-zero throughput,
//! then takes a screenshot.
//!
//! Chromium is Debian's `chromium` package (`.ci/run` installs it). Without it the test fails
//! saying so, unless `BETTONG_SKIP_BROWSER_TEST=1` is set (it then passes without checking
//! anything and says that it skipped). `BETTONG_SCREENSHOT=PATH` also copies the screenshot
//! there (README's `docs/monitor.png` was taken so).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::monitor::{serve_monitored, wait_for_input, Load};
use crate::support::start_receiver;

/// The environment variable that lets the test pass without a browser.
const SKIP: &str = "BETTONG_SKIP_BROWSER_TEST";

/// The Chromium binary on PATH, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs headless Chromium on `url` with its own new profile in `profile`, letting the page run
/// for `budget` of virtual time (its timers and its polls of /metrics.json), plus `extra` flags;
/// returns stdout.
fn run_chromium(bin: &Path, profile: &Path, url: &str, budget: Duration, extra: &[&str]) -> String {
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1400",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of attribute `attr` of the element with id `id` in `html`.
fn attribute(html: &str, id: &str, attr: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag_end = at + html[at..].find('>')?;
    let start = html[..at].rfind('<')?;
    let tag = &html[start..tag_end];
    let from = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
    Some(tag[from..].split('"').next()?.to_string())
}

#[test]
fn the_monitoring_page_charts_live_throughput_in_a_browser() {
    let Some(bin) = chromium() else {
        if std::env::var_os(SKIP).is_some_and(|v| v == "1") {
            eprintln!("SKIPPED: no chromium on PATH and {SKIP}=1: the page was not tested");
            return;
        }
        panic!(
            "this test needs Chromium (Debian: apt-get install -y chromium; .ci/run installs \
             it); set {SKIP}=1 to skip it"
        );
    };
    let receiver = start_receiver();
    let (server, addr) = serve_monitored(&receiver);
    let load = Load::start(&server, 2);
    wait_for_input(addr, &server);
    // A few seconds of samples in the history the page loads first.
    std::thread::sleep(Duration::from_secs(3));
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("monitor-page-{}", std::process::id()));
    let url = format!("http://{addr}/");
    let dom = run_chromium(
        &bin,
        &tmp.join("profile-dom"),
        &url,
        Duration::from_secs(3),
        &["--dump-dom"],
    );
    let shot = tmp.join("monitor.png");
    run_chromium(
        &bin,
        &tmp.join("profile-shot"),
        &url,
        Duration::from_secs(3),
        &[&format!("--screenshot={}", shot.display())],
    );
    let sent = load.stop();
    assert!(sent > 0);

    let number = |id: &str, attr: &str| -> f64 {
        attribute(&dom, id, attr)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {attr} on #{id} in the page's DOM:\n{dom}"))
    };
    for chart in [
        "chart-throughput",
        "chart-output",
        "chart-latency",
        "chart-connections",
    ] {
        assert!(
            number(chart, "data-points") >= 2.0,
            "#{chart} plots several samples"
        );
        assert!(
            number(chart, "data-max") > 0.0,
            "#{chart} plots only zeros:\n{dom}"
        );
    }
    // The tile shows the last second only, which a stall of this shared machine can leave at
    // zero: it must be filled in, while the charts above must show input over the minutes.
    assert!(
        number("in-rate", "data-value") >= 0.0
            && !dom.contains("id=\"in-rate\" data-value=\"0\">–"),
        "the msgs/s tile is filled in"
    );
    assert!(
        dom.contains("class=\"uplot"),
        "uPlot drew the charts:\n{dom}"
    );
    assert!(
        dom.contains("2/2 connected"),
        "the sink tile shows both cores connected"
    );

    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG"
    );
    assert!(
        png.len() > 20_000,
        "the screenshot is not blank: {} bytes",
        png.len()
    );
    if let Some(copy) = std::env::var_os("BETTONG_SCREENSHOT") {
        std::fs::copy(&shot, &copy).expect("copy the screenshot to BETTONG_SCREENSHOT");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
