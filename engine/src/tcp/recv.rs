//! The glommio byte backend of the TCP source ([`super`]): `recv(2)` into a buffer.
//!
//! Each connection's bytes are read with glommio's `TcpStream` into its [`ReadBuf`] and decoded
//! in place; only a trailing partial frame is moved. A connection costs no read buffer until its
//! first byte arrives, so idle connections are cheap. Everything else (limits, the idle rule,
//! backpressure, logging) is the source's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use super::{Accept, Connection, Ended};
use crate::codec::{FrameDecoder, ReadBuf};
use crate::source::TcpSourceConfig;

/// An accept in progress, kept across calls (see [`RecvAccept::accept`]).
type PendingAccept = Pin<Box<dyn Future<Output = glommio::Result<TcpStream, ()>>>>;

/// One core's glommio listener.
pub(super) struct RecvAccept {
    listener: Rc<TcpListener>,
    /// glommio's accept is not cancel-safe (a connection it took just as it was dropped would
    /// be lost), and the source races it with connections handed over by other cores: so the
    /// accept lives here until it completes, and the next call resumes it.
    pending: Option<PendingAccept>,
    decoder: FrameDecoder,
    read_buffer: usize,
}

impl RecvAccept {
    pub(super) fn new(listener: TcpListener, cfg: &TcpSourceConfig) -> Self {
        RecvAccept {
            listener: Rc::new(listener),
            pending: None,
            decoder: FrameDecoder::new(cfg.max_frame),
            read_buffer: cfg.read_buffer,
        }
    }
}

impl RecvAccept {
    fn conn(&self, stream: TcpStream) -> RecvConn {
        RecvConn {
            stream,
            rb: None,
            decoder: self.decoder,
            read_buffer: self.read_buffer,
            undecoded: false,
            arrived: None,
        }
    }
}

impl Accept for RecvAccept {
    type Conn = RecvConn;

    async fn accept(&mut self) -> io::Result<(RecvConn, SocketAddr)> {
        let pending = self.pending.get_or_insert_with(|| {
            let listener = self.listener.clone();
            Box::pin(async move { listener.accept().await })
        });
        let accepted = pending.as_mut().await;
        self.pending = None;
        let stream = accepted.map_err(|e| io::Error::other(e.to_string()))?;
        if let Err(e) = super::set_keepalive(stream.as_raw_fd()) {
            tracing::debug!("cannot turn TCP keepalive on for an accepted connection: {e}");
        }
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok((self.conn(stream), peer))
    }

    fn adopt(&self, fd: OwnedFd) -> io::Result<RecvConn> {
        // SAFETY: `into_raw_fd` gives up the only owner of an open socket descriptor, which the
        // stream takes over (and closes when dropped).
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        Ok(self.conn(stream))
    }

    async fn close(self) {}
}

/// One connection read with `recv(2)`.
pub(super) struct RecvConn {
    stream: TcpStream,
    /// None until the first byte is there.
    rb: Option<ReadBuf>,
    decoder: FrameDecoder,
    read_buffer: usize,
    /// Bytes were read that `decode` has not seen yet.
    undecoded: bool,
    /// When the oldest read not yet decoded returned.
    arrived: Option<Instant>,
}

impl Connection for RecvConn {
    fn partial(&self) -> usize {
        self.rb.as_ref().map_or(0, |rb| rb.pending().len())
    }

    async fn prepare(&mut self) -> Result<(), Ended> {
        Ok(())
    }

    async fn receive(&mut self) -> Result<(), Ended> {
        let rb = match &mut self.rb {
            Some(rb) => rb,
            None => {
                // No read buffer until the first byte is there: a thousand idle connections
                // cost no memory.
                let mut probe = [0u8; 1];
                match self.stream.peek(&mut probe).await {
                    Ok(0) => return Err(Ended::Eof),
                    Err(e) => return Err(Ended::Failed(io::Error::other(e.to_string()))),
                    Ok(_) => self.rb.insert(ReadBuf::with_capacity(self.read_buffer)),
                }
            }
        };
        match self.stream.read(rb.spare(&self.decoder)).await {
            Ok(0) => Err(Ended::Eof),
            Ok(n) => {
                rb.filled_by(n);
                self.undecoded = true;
                self.arrived.get_or_insert_with(Instant::now);
                Ok(())
            }
            Err(e) => Err(Ended::Failed(e)),
        }
    }

    fn arrived(&self) -> Option<Instant> {
        self.arrived
    }

    fn decode(&mut self, on_frame: &mut dyn FnMut(&[u8])) -> Result<(), Ended> {
        self.undecoded = false;
        self.arrived = None;
        match &mut self.rb {
            Some(rb) => match rb.drain_frames(&self.decoder, on_frame) {
                Ok(_) => Ok(()),
                Err(too_large) => Err(Ended::Oversized(too_large)),
            },
            None => Ok(()),
        }
    }

    /// Nothing to cancel: no read runs unless the source awaits one.
    fn stop(&mut self) {}

    /// The last read, if the stop came before it was decoded.
    async fn drain_ready(&mut self) -> bool {
        self.undecoded
    }

    async fn close(self) {}

    fn into_fd(self) -> Result<OwnedFd, Self> {
        // SAFETY: the descriptor is the stream's, open for as long as `self.stream` lives, which
        // outlives this borrow; the clone is a new descriptor for the same socket, and the
        // stream's own closes when `self` drops.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        match fd.try_clone_to_owned() {
            Ok(owned) => Ok(owned),
            Err(_) => Err(self),
        }
    }
}
