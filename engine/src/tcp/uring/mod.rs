//! The io_uring byte backend of the TCP source ([`crate::tcp`]): each core's sockets on its own
//! ring, with multishot accept, multishot receive into provided buffers, and frames decoded in
//! place from the buffers the kernel filled.
//!
//! The glommio backend ([`crate::tcp`]'s `recv`) reads with `recv(2)` into each connection's
//! buffer and uses io_uring only to learn that a socket is readable. Here the kernel does the receiving: one
//! multishot accept per core and one multishot receive per connection stay armed, and every
//! completion carries the bytes in a buffer of the core's provided-buffer ring. A connection
//! costs no system call per read: the receives of all of a core's connections are run in one
//! enter, and frames are decoded from the kernel's buffers without a copy into ours.
//!
//! - [`ring`]: the core's io_uring, its requests, and the eventfd bridge that lets the glommio
//!   executor sleep while the ring is idle;
//! - [`buf_ring`]: the provided receive buffers;
//! - [`reassembly`]: frames decoded in place, and the partial frames carried between buffers;
//! - [`socket`]: the listener and connections, as the TCP source reads them ([`crate::tcp::Accept`],
//!   [`crate::tcp::Connection`]).
//!
//! The backend is chosen per engine with [`crate::source::IoBackend`] (the `bettong` binary reads
//! `BETTONG_IO=uring|glommio`). Where io_uring or one of the features used here is unavailable
//! (Linux before 6.1, `kernel.io_uring_disabled`, seccomp), [`crate::tcp::listen`] says so and
//! falls back to the glommio backend.
//!
//! The sink stays on glommio's `send(2)`. It writes one chunk of about 100-200 KiB at a time, in
//! order, about a thousand times a second per core, so a system call per chunk is noise, and over
//! loopback an io_uring `Send` measured the same as `send(2)` while `SendZc` was 1.6 to 9 times
//! slower (loopback copies the pages anyway, and the notification costs extra): see
//! `tests::sink_sends_over_loopback_send_vs_uring_send_vs_send_zc`.

mod buf_ring;
mod reassembly;
mod ring;
mod socket;

#[cfg(test)]
mod tests;

pub(crate) use ring::RingParams;
pub(crate) use socket::{listen, ListenError, UringListener};

use crate::source::TcpSourceConfig;

/// Provided-buffer memory per core when the buffers are the default 64 KiB (`read_buffer`).
const BUFFER_BUDGET: usize = 4 << 20;

impl RingParams {
    /// The ring of a core's TCP source: `read_buffer`-sized receive buffers (4 MiB of them in
    /// all by default, at least 8 and at most 4096).
    pub(crate) fn for_source(cfg: &TcpSourceConfig) -> RingParams {
        let size = cfg.read_buffer.clamp(64, 1 << 20);
        let count = (BUFFER_BUDGET / size).clamp(8, 4096).next_power_of_two() as u16;
        RingParams {
            entries: 256,
            buf_count: count,
            buf_size: size as u32,
        }
    }
}
