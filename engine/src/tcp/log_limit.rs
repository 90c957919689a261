//! Rate limits for the TCP source's log lines: a storm of clients could repeat an event
//! thousands of times a second, so each kind of line is logged at most [`LogLimit::BURST`] times
//! a second per core, and the lines held back are counted in the next one.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Rate-limits one kind of log line on one core: at most [`LogLimit::BURST`] lines a second;
/// the lines held back are counted and the count is given with the next line logged.
#[derive(Debug, Default)]
pub struct LogLimit {
    window: Cell<Option<Instant>>,
    logged: Cell<u32>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// Lines logged per second, at most.
    pub const BURST: u32 = 5;

    /// `Some(n)` when a line may be logged now, `n` being the lines held back since the last
    /// one; None when this one must be held back (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        match self.window.get() {
            Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window.set(Some(now));
                self.logged.set(0);
            }
        }
        if self.logged.get() < Self::BURST {
            self.logged.set(self.logged.get() + 1);
            Some(self.held_back.replace(0))
        } else {
            self.held_back.set(self.held_back.get() + 1);
            None
        }
    }

    /// The suffix saying how many lines were held back ("" when none were).
    pub fn note(held_back: u64) -> String {
        if held_back == 0 {
            String::new()
        } else {
            format!(" ({held_back} more like this were not logged)")
        }
    }
}

/// The kinds of connection event whose log lines are rate-limited, each on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LogKind {
    /// An accept failed.
    Accept,
    /// A connection over the per-core limit was refused.
    Refused,
    /// A connection ended or failed (inside a frame or not).
    Ended,
    /// The core closed a connection (oversized header, idle timeout).
    Closed,
}

thread_local! {
    /// This core's limits, one per [`LogKind`] (each core is one thread).
    static LOG_LIMITS: [LogLimit; 4] = Default::default();
}

/// `Some(n)` when a line of this kind may be logged on this core now (`n` lines of it were held
/// back since the last one: say so with [`LogLimit::note`]); None when it must be held back.
pub(crate) fn may_log(kind: LogKind) -> Option<u64> {
    LOG_LIMITS.with(|l| l[kind as usize].allow())
}
