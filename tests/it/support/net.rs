//! The client side of the sockets: how test input reaches the server. [`send_in_chunks`] writes
//! framed bytes in random pieces ([`chunk_cuts`]: headers split from payloads, frames split over
//! writes) with a fixed seed; [`Flood`] writes from many connections at once; [`free_addr`] gives
//! an address nothing listens on.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Rng, Server};

/// A reserved-then-released loopback address on which nothing listens (for a while).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("read the free port")
}

/// Where to cut `framed` into writes: increasing offsets ending at `framed.len()`. Most pieces
/// are 1 byte to 4 KiB (a quarter of them 8 bytes or less); about one cut in six goes into the
/// header of the next frame on purpose (however far that is), so headers arrive split as well
/// as payloads.
pub fn chunk_cuts(framed: &[u8], rng: &mut Rng) -> Vec<usize> {
    let bounds = bettong::corpus::frame_bounds(framed).expect("chunk_cuts needs whole frames");
    let mut cuts = Vec::new();
    let mut pos = 0;
    while pos < framed.len() {
        let mut next = if rng.one_in(6) {
            // Inside the header of the next frame that starts after `pos`.
            let i = bounds.partition_point(|&b| b <= pos);
            match bounds.get(i) {
                Some(&start) if start < framed.len() => start + rng.range(1, 3),
                _ => framed.len(),
            }
        } else {
            match rng.below(4) {
                0 => pos + rng.range(1, 8),
                1 => pos + rng.range(9, 256),
                _ => pos + rng.range(257, 4096),
            }
        };
        next = next.min(framed.len());
        cuts.push(next);
        pos = next;
    }
    cuts
}

/// How many of `cuts` fall strictly inside a frame header of `framed`.
pub fn header_splits(framed: &[u8], cuts: &[usize]) -> usize {
    let bounds = bettong::corpus::frame_bounds(framed).expect("whole frames");
    let mut starts = bounds[..bounds.len() - 1].iter().peekable();
    let mut n = 0;
    for &c in cuts {
        while starts.next_if(|&&s| s + 4 <= c).is_some() {}
        if let Some(&&s) = starts.peek() {
            if s < c && c < s + 4 {
                n += 1;
            }
        }
    }
    n
}

/// Writes `framed` to `stream` in the pieces [`chunk_cuts`] chooses, pausing briefly after some
/// tiny pieces so the server's reads really do see them apart.
pub fn send_in_chunks(stream: &mut TcpStream, framed: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut pos = 0;
    for cut in chunk_cuts(framed, rng) {
        stream.write_all(&framed[pos..cut])?;
        if cut - pos <= 8 && rng.one_in(2) {
            thread::sleep(Duration::from_micros(200));
        }
        pos = cut;
    }
    stream.flush()
}

/// Clients that write their framed input to the server from their own threads, as fast as the
/// server takes it, until told to stop or done.
pub struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<Vec<std::sync::atomic::AtomicU64>>,
    streams: Vec<TcpStream>,
    handles: Vec<JoinHandle<Result<(), String>>>,
}

impl Flood {
    /// Starts one thread per stream; each writes `inputs[i]` (`repeat` times over) to stream `i`
    /// in `piece`-byte writes. A write that fails (or stays blocked past the stream's write
    /// timeout) is an error unless the flood was stopped.
    pub fn start(
        streams: Vec<TcpStream>,
        inputs: Vec<Arc<Vec<u8>>>,
        repeat: usize,
        piece: usize,
    ) -> Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sent: Arc<Vec<_>> = Arc::new(
            (0..streams.len())
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        );
        let clones = streams
            .iter()
            .map(|s| s.try_clone().expect("clone a client stream"))
            .collect();
        let handles = streams
            .into_iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (mut s, input))| {
                let (stop, sent) = (stop.clone(), sent.clone());
                thread::spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    for _ in 0..repeat {
                        for chunk in input.chunks(piece.max(1)) {
                            if stop.load(SeqCst) {
                                return Ok(());
                            }
                            if let Err(e) = s.write_all(chunk) {
                                if stop.load(SeqCst) {
                                    return Ok(());
                                }
                                return Err(format!("flood client {i}: write failed: {e}"));
                            }
                            sent[i].fetch_add(chunk.len() as u64, SeqCst);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        Flood {
            stop,
            sent,
            streams: clones,
            handles,
        }
    }

    /// Bytes each client has written so far.
    pub fn sent(&self) -> Vec<u64> {
        self.sent
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }

    /// Whether every client has written all of its input (or failed).
    pub fn is_done(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for every client to finish, for at most `timeout`; fails the test on a client error
    /// or when they do not finish.
    #[track_caller]
    pub fn join(self, timeout: Duration, server: &Server) {
        let deadline = Instant::now() + timeout;
        while !self.is_done() {
            assert!(
                Instant::now() < deadline,
                "flood clients still writing after {timeout:?} (sent {:?}); the server's \
                 stderr:\n{}",
                self.sent(),
                server.stderr()
            );
            thread::sleep(Duration::from_millis(5));
        }
        for h in self.handles {
            if let Err(e) = h.join().expect("a flood client panicked") {
                panic!("{e}; the server's stderr:\n{}", server.stderr());
            }
        }
    }

    /// Stops every client at once (a blocked write is cut short by shutting the socket down),
    /// waits for them, and returns the bytes each had written.
    pub fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for h in self.handles {
            let _ = h.join();
        }
        self.sent
            .iter()
            .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }
}
