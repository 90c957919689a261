//! One GIL acquisition per batch, not per record.
//!
//! The engine calls a pipeline's functions record by record, synchronously, inside one
//! executor task (the read of a buffer of frames, or the drain of a batch from another core).
//! [`with_python`] takes the GIL the first time such a run needs it and keeps it until that task
//! gives control back to its executor: it spawns a tiny task on the core's executor that
//! releases the GIL, and that task runs only once the current one yields. So a whole read
//! buffer, or a whole cross-core batch, runs under one acquisition, and the batch stays bounded
//! in size by the engine's own batch bounds (a read is at most one buffer, a cross-core batch at
//! most 1 MiB) and in time by [`BATCH_TIME`]. A core never waits for another core while it holds the GIL: every wait in the
//! engine is an `.await`, which yields, which runs the release task first.
//!
//! Off an executor thread (a plain thread), the GIL is taken and released around each call.
//! Under free-threaded CPython the same code holds the thread's attachment instead of a global
//! lock, so this costs nothing there and closes nothing off.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pyo3::ffi;
use pyo3::Python;

/// Longest a core keeps the GIL for one batch: past it, the next call releases the GIL and
/// takes it again, so another core waiting for it gets a turn (latency stays bounded even when
/// one read holds thousands of frames). Each handover between cores is costly (the waiting
/// thread must be woken and scheduled, and the releasing one then waits for the GIL back): on
/// 2 cores, word count ran 0.08 M words/s at 2 ms, 0.14–0.27 at 20 ms, 0.13–0.23 at 100 ms
/// (README, Python; `BETTONG_PYTHON_BATCH_MS` overrides it).
pub const BATCH_TIME: Duration = Duration::from_millis(20);

thread_local! {
    /// The `PyGILState_Ensure` state this thread holds until its release task runs, if any,
    /// and when it was taken.
    static HELD: Cell<Option<(ffi::PyGILState_STATE, Instant)>> = const { Cell::new(None) };

    /// Calls to [`with_python`] on this thread, for [`tick`].
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

/// [`BATCH_TIME`], or the milliseconds in `BETTONG_PYTHON_BATCH_MS` (read once), for measuring
/// other bounds (`python/bench/batch_time.sh`).
fn batch_time() -> Duration {
    static TIME: OnceLock<Duration> = OnceLock::new();
    *TIME.get_or_init(|| {
        std::env::var("BETTONG_PYTHON_BATCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(BATCH_TIME)
    })
}

/// How many calls pass between two looks at the clock for [`BATCH_TIME`].
const CHECK_EVERY: u32 = 32;

/// True once every [`CHECK_EVERY`] calls on this thread.
fn tick() -> bool {
    CALLS.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % CHECK_EVERY == 0
    })
}

/// Acquisitions made (one per batch), over every thread: the measure of batching.
pub static ACQUISITIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `f` with the GIL, taking it for the rest of the current executor task if this thread
/// does not hold it yet (see the module doc).
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    match HELD.get() {
        None => hold_until_yield(),
        // The clock is read every CHECK_EVERY calls only (it cost 3 % of a word count's time).
        Some((state, since)) if tick() && since.elapsed() >= batch_time() => {
            // SAFETY: `state` came from `PyGILState_Ensure` on this thread and is released
            // once: `HELD` is overwritten with the new state just below.
            unsafe { ffi::PyGILState_Release(state) };
            // SAFETY: as in `hold_until_yield`; the release task already scheduled releases it.
            let state = unsafe { ffi::PyGILState_Ensure() };
            HELD.set(Some((state, Instant::now())));
            ACQUISITIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(_) => {}
    }
    Python::attach(f)
}

/// Takes the GIL and schedules its release for when the current executor task yields.
fn hold_until_yield() {
    // SAFETY: the interpreter is initialised (this module was imported into it), and the state
    // returned is released exactly once, on this same thread, by `release`.
    let state = unsafe { ffi::PyGILState_Ensure() };
    HELD.set(Some((state, Instant::now())));
    ACQUISITIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // `spawn_local` panics off an executor thread; there, release at once after the call.
    let spawned = std::panic::catch_unwind(|| {
        // glommio polls a new task once at once: the task first yields, so the release comes
        // only when the executor gets back to it, after the current task has yielded.
        glommio::spawn_local(async {
            yield_once().await;
            release();
        })
        .detach();
    });
    if spawned.is_err() {
        // The caller's `Python::attach` takes the GIL again for its own call.
        release();
    }
}

/// Pending once (waking itself), then ready: gives the executor back for one turn.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Releases the GIL this thread holds for its batch, if any.
pub fn release() {
    if let Some((state, _)) = HELD.take() {
        // SAFETY: `state` came from `PyGILState_Ensure` on this thread (`HELD` is
        // thread-local) and is released once, as `take` cleared it.
        unsafe { ffi::PyGILState_Release(state) };
    }
}
