//! The monitoring page's static files, embedded in the binary: nothing is fetched from
//! anywhere at run time. The page (`page/index.html`, `page/monitor.js`) draws `/metrics.json`
//! with uPlot, vendored from the npm registry (`page/uplot/`, its LICENSE and version beside it).

/// One embedded file: its content type and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// Its content.
    pub body: &'static str,
}

/// The page's files by URL path.
pub const ASSETS: &[(&str, Asset)] = &[
    (
        "/",
        Asset {
            content_type: "text/html; charset=utf-8",
            body: include_str!("page/index.html"),
        },
    ),
    (
        "/monitor.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("page/monitor.js"),
        },
    ),
    (
        "/monitor.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("page/monitor.css"),
        },
    ),
    (
        "/uPlot.iife.min.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_str!("page/uplot/uPlot.iife.min.js"),
        },
    ),
    (
        "/uPlot.min.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_str!("page/uplot/uPlot.min.css"),
        },
    ),
];

/// The embedded file served at `path` (`/index.html` is `/`).
pub fn asset(path: &str) -> Option<Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the page loads is embedded, and nothing it loads comes from elsewhere.
    #[test]
    fn the_page_loads_only_embedded_files() {
        let html = asset("/").unwrap().body;
        let loaded = html
            .split(" src=\"")
            .chain(html.split(" href=\""))
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .filter(|s| s.ends_with(".js") || s.ends_with(".css"));
        for src in loaded {
            assert!(
                asset(src).is_some(),
                "the page loads {src}, which is not embedded"
            );
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(asset("/uPlot.iife.min.js").unwrap().body.contains("uPlot"));
        assert!(asset("/nope").is_none());
    }
}
