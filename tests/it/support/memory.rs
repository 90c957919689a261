//! The server's memory, read from `/proc`, for the tests that bound it under load.

/// A line of `/proc/PID/status` in KiB (`VmRSS`: resident now; `VmHWM`: the peak so far).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of process `pid` now, in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// Peak resident memory of process `pid` so far, in MiB (0 if it is gone).
pub fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0
}
