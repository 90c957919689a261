//! The CPU time the engine's own threads have used, read from `/proc/self/task/*/stat`, so the
//! bench can give each phase's server CPU per message (a paced phase against full speed: what
//! each wake-up costs) without counting its own sender, receiver and probe threads.
//!
//! The engine's executor threads are named `bettong-<core>-<id>` (glommio's `name-id`); the
//! bench's own threads are not. `/proc` counts in USER_HZ ticks (100 a second on Linux), so a
//! reading is good to 10 ms per thread: enough over a phase of seconds.

use std::time::Duration;

/// USER_HZ, the unit of `utime` and `stime` in `/proc/*/stat` (100 on every Linux
/// architecture).
const TICKS_PER_SEC: u64 = 100;

/// Total user and system CPU time of this process's threads whose name starts with `prefix`;
/// None where `/proc` cannot be read.
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, t)) = parse_stat(&stat) {
            if name.starts_with(prefix) {
                ticks += t;
            }
        }
    }
    Some(Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SEC))
}

/// Total user and system CPU time of process `pid` (every thread, exited ones included); None
/// where `/proc` cannot be read.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, ticks) = parse_stat(&stat)?;
    Some(Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SEC))
}

/// The engine's threads' CPU time so far.
pub fn engine_cpu() -> Option<Duration> {
    threads_cpu("bettong-")
}

/// A thread's name and its `utime + stime` in ticks, from one `stat` line: `tid (name) state
/// …`, where the name may hold spaces and parentheses, and utime and stime are fields 14 and
/// 15.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_name_and_ticks() {
        let line = "4242 (bettong-1-3) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("bettong-1-3", 290)));
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_busy_named_thread_is_counted_and_others_are_not() {
        let t = std::thread::Builder::new()
            .name("cpu-probe-test".into())
            .spawn(|| {
                // Burn CPU until /proc says this thread used 50 ms (or give up after 20 s).
                let start = std::time::Instant::now();
                let mut x = 0u64;
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                    }
                    let used = threads_cpu("cpu-probe-test").unwrap();
                    if used >= Duration::from_millis(50)
                        || start.elapsed() > Duration::from_secs(20)
                    {
                        return used;
                    }
                }
            })
            .unwrap();
        let used = t.join().unwrap();
        assert!(used >= Duration::from_millis(50), "{used:?}");
        assert_eq!(threads_cpu("no-such-thread-"), Some(Duration::ZERO));
    }
}
