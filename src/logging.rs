//! The log (stderr): `--log-format text` for people, with ANSI colours only when stderr is a
//! terminal (and `NO_COLOR` is unset), or `--log-format json`, one JSON object a line, for log
//! shippers. `RUST_LOG` filters it (default `info`).

use std::io::IsTerminal;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, message and fields.
    Json,
}

/// Whether text logs get colours: stderr is a terminal and `NO_COLOR` is unset or empty.
pub fn colours() -> bool {
    std::io::stderr().is_terminal()
        && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty())
}

/// Installs the process's log subscriber, writing to stderr in `format`.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(colours()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
