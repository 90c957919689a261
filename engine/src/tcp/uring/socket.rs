//! The io_uring byte backend of the TCP source ([`crate::tcp`]): the listener and the
//! connections on the core's own ring.
//!
//! The core keeps one multishot accept armed on its listener. Each connection keeps one
//! multishot receive armed: the kernel fills a provided buffer whenever bytes arrive and posts
//! it, and [`Connection::decode`] decodes every frame in place, straight from the buffers posted
//! since it last looked, and hands the buffers back. The source's wait for sink room and its
//! flush are the backpressure: while the sink or a ring to another core is full, the task takes
//! no completions, the kernel keeps filling buffers until the core has none left, then ends the
//! receive (`ENOBUFS`) and leaves the bytes in the socket, where TCP flow control pushes back on
//! the sender. [`Connection::prepare`] re-arms the receive once buffers are back.
//!
//! On stop the receive is cancelled and what the kernel had already received is decoded.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::reassembly::Reassembly;
use super::ring::{Op, Ring, RingParams};
use crate::codec::FrameDecoder;
use crate::source::TcpSourceConfig;
use crate::tcp::{Accept, Connection, Ended};

/// One core's listening socket and the ring its connections live on.
pub(crate) struct UringListener {
    ring: Rc<Ring>,
    socket: Socket,
}

/// Why [`listen`] gave no listener.
pub(crate) enum ListenError {
    /// io_uring, or a feature this backend needs, is not available here.
    Unavailable(io::Error),
    /// The address could not be bound.
    Bind(io::Error),
}

/// Builds this core's ring and listener. Called on the core itself.
pub(crate) fn listen(
    cfg: &TcpSourceConfig,
    params: RingParams,
) -> Result<UringListener, ListenError> {
    let ring = Ring::new(params).map_err(ListenError::Unavailable)?;
    let socket = listen_socket(cfg.addr).map_err(ListenError::Bind)?;
    Ok(UringListener { ring, socket })
}

fn listen_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

impl UringListener {
    /// The address the listener is bound to.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound TCP listener has an address")
    }

    /// The ring the listener's connections live on.
    pub(crate) fn ring(&self) -> &Rc<Ring> {
        &self.ring
    }

    /// The listener as the source accepts from it.
    pub(crate) fn into_accept(self, cfg: &TcpSourceConfig) -> UringAccept {
        UringAccept {
            ring: self.ring,
            socket: self.socket,
            accept: None,
            decoder: FrameDecoder::new(cfg.max_frame),
            // Decode at most about `read_buffer` bytes per step, as the glommio backend reads at
            // most that much per read: the output of one step is one sink chunk, and a bounded
            // chunk keeps the sink's queue (and the latency behind it) short.
            pass_bytes: cfg.read_buffer.max(1),
        }
    }
}

/// The listener with its multishot accept.
pub(crate) struct UringAccept {
    ring: Rc<Ring>,
    socket: Socket,
    accept: Option<Op>,
    decoder: FrameDecoder,
    pass_bytes: usize,
}

impl UringAccept {
    fn conn(&self, stream: Socket) -> UringConn {
        UringConn {
            ring: self.ring.clone(),
            stream,
            recv: None,
            carry: Reassembly::default(),
            decoder: self.decoder,
            pass_bytes: self.pass_bytes,
            stopping: false,
            reactor_seen: Instant::now(),
        }
    }
}

impl Accept for UringAccept {
    type Conn = UringConn;

    async fn accept(&mut self) -> io::Result<(UringConn, SocketAddr)> {
        loop {
            let op = match &self.accept {
                Some(op) => op,
                None => self
                    .accept
                    .insert(self.ring.accept_multi(self.socket.as_raw_fd())?),
            };
            let Some(c) = op.next().await else {
                self.accept = None;
                continue;
            };
            if !c.more() {
                // The multishot accept ended (an error, or the kernel's choice): arm a new one.
                self.accept = None;
            }
            if let Some(e) = c.error() {
                return Err(e);
            }
            // SAFETY: a successful accept completion's result is a new descriptor that only this
            // completion names; the socket takes ownership and closes it.
            let stream = unsafe { Socket::from_raw_fd(c.res) };
            if let Err(e) = crate::tcp::set_keepalive(stream.as_raw_fd()) {
                tracing::debug!("cannot turn TCP keepalive on for an accepted connection: {e}");
            }
            let peer = stream
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            return Ok((self.conn(stream), peer));
        }
    }

    fn adopt(&self, fd: OwnedFd) -> io::Result<UringConn> {
        Ok(self.conn(Socket::from(fd)))
    }

    async fn close(self) {
        // Connections the kernel accepted meanwhile are closed unread.
        if let Some(op) = self.accept {
            op.cancel();
            while let Some(c) = op.next().await {
                if c.res >= 0 {
                    // SAFETY: as above, a new descriptor nobody else owns; dropping closes it.
                    drop(unsafe { Socket::from_raw_fd(c.res) });
                }
            }
        }
        drop(self.socket);
    }
}

/// One connection with its multishot receive.
pub(crate) struct UringConn {
    ring: Rc<Ring>,
    stream: Socket,
    recv: Option<Op>,
    carry: Reassembly,
    decoder: FrameDecoder,
    pass_bytes: usize,
    stopping: bool,
    /// When this task last waited for something (and so let the reactor run).
    reactor_seen: Instant,
}

/// How long a connection task may decode completions that are always ready before it lets the
/// reactor run (see [`UringConn::after_step`]): 500 µs, or `BETTONG_REACTOR_EVERY_US` (a
/// measurement knob, see tuning.md).
fn reactor_every() -> Duration {
    static EVERY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        let us = std::env::var("BETTONG_REACTOR_EVERY_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        Duration::from_micros(us)
    })
}

impl Connection for UringConn {
    fn partial(&self) -> usize {
        self.carry.pending()
    }

    /// Arms a multishot receive, once the core has a buffer to receive into.
    async fn prepare(&mut self) -> Result<(), Ended> {
        if self.recv.is_some() {
            return Ok(());
        }
        if let Some(bufs) = self.ring.bufs() {
            if !bufs.available() {
                self.reactor_seen = Instant::now();
                bufs.wait_available().await;
            }
        }
        let op = self
            .ring
            .recv_multi(self.stream.as_raw_fd())
            .map_err(Ended::Failed)?;
        self.recv = Some(op);
        Ok(())
    }

    async fn receive(&mut self) -> Result<(), Ended> {
        if let Some(op) = &self.recv {
            if !op.has_completion() && !op.is_done() {
                self.reactor_seen = Instant::now();
                op.ready().await;
            }
        }
        Ok(())
    }

    fn decode(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<(), Ended> {
        let Some(op) = &self.recv else {
            return Ok(());
        };
        let mut taken = 0;
        let mut rearm = false;
        while taken < self.pass_bytes {
            let Some(c) = op.try_next() else { break };
            let last = !c.more();
            let end = match (&c.buf, c.res) {
                (Some(buf), _) => {
                    taken += buf.bytes().len();
                    self.carry
                        .feed(buf.bytes(), &self.decoder, on_frame)
                        .err()
                        .map(Ended::Oversized)
                }
                (None, 0) => Some(Ended::Eof),
                // No buffer was left: the receive ended, the bytes wait in the socket.
                (None, res) if res == -libc::ENOBUFS => None,
                (None, res) if res == -libc::ECANCELED && self.stopping => Some(Ended::Stopped),
                (None, res) if res < 0 => Some(Ended::Failed(io::Error::from_raw_os_error(-res))),
                (None, res) => Some(Ended::Failed(io::Error::other(format!(
                    "the kernel reported {res} bytes received without a buffer"
                )))),
            };
            if let Some(end) = end {
                return Err(end);
            }
            if last {
                // The multishot receive ended without the connection ending (no buffers were
                // left, or the kernel stopped it): arm a new one.
                rearm = true;
                break;
            }
        }
        if rearm {
            self.ring.note_rearm();
            self.recv = None;
        }
        Ok(())
    }

    fn arrived(&self) -> Option<Instant> {
        self.recv.as_ref().and_then(Op::first_at)
    }

    fn stop(&mut self) {
        self.stopping = true;
        if let Some(op) = &self.recv {
            op.cancel();
        }
    }

    async fn drain_ready(&mut self) -> bool {
        let Some(op) = &self.recv else {
            return false;
        };
        if !op.has_completion() && !op.is_done() {
            op.ready().await;
        }
        op.has_completion()
    }

    /// Under load completions are always queued (the kernel fills buffers while this core
    /// decodes), so this task never waits. glommio polls its reactor (socket readiness for the
    /// sink writer, wake-ups from the other cores' rings, timers) only once no task is runnable,
    /// or every preempt period (100 ms): yielding alone would still starve those, and the other
    /// cores would stall on full rings. A timer due at once sends this task through the next
    /// reactor poll, after the core's other runnable tasks.
    async fn after_step(&mut self) {
        if self.reactor_seen.elapsed() >= reactor_every() {
            glommio::timer::sleep(Duration::from_micros(1)).await;
            self.reactor_seen = Instant::now();
        }
    }

    /// Only before the first receive is armed: a live request would go on filling buffers for
    /// a socket this core no longer reads.
    fn into_fd(self) -> Result<OwnedFd, Self> {
        if self.recv.is_some() {
            return Err(self);
        }
        Ok(OwnedFd::from(self.stream))
    }

    /// The receive must be over before the socket closes (the kernel holds the socket, not the
    /// descriptor number, but a live request would keep taking buffers).
    async fn close(self) {
        if let Some(op) = self.recv {
            op.finish().await;
        }
        drop(self.stream);
    }
}
