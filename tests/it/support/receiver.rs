//! Receivers for the server's output: [`start_receiver`] runs the project's own validating
//! [`Receiver`] (for tests of normal operation), and [`TestSink`] is one whose pace (full,
//! trickle, stalled) and presence (listening, gone, back) the test controls, for the
//! backpressure, sink-failure and shutdown tests.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::receive::Receiver;

/// Starts a validating receiver on a free loopback port.
pub fn start_receiver() -> Receiver {
    Receiver::start("127.0.0.1:0", true).expect("cannot start the receiver")
}

/// How a [`TestSink`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as it can.
    Full,
    /// About this many bytes per second on each connection.
    Trickle(u64),
    /// Not at all (the connections stay open).
    Stalled,
}

/// What a [`TestSink`] saw on one connection.
#[derive(Debug, Clone, Default)]
pub struct SinkConn {
    /// The server's end of the connection (its sink socket's local address).
    pub peer: Option<SocketAddr>,
    /// Bytes read.
    pub bytes: u64,
    /// Everything read, when the sink records.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct SinkShared {
    conns: Mutex<Vec<SinkConn>>,
    validator: Option<Mutex<bettong::validate::OrderValidator>>,
    lines: std::sync::atomic::AtomicU64,
    /// 0: full speed; u64::MAX: stalled; else bytes per second per connection.
    pace: std::sync::atomic::AtomicU64,
    /// Set to make every connection close and the listener go away.
    away: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    record: bool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A receiver for the server's output whose pace (full, trickle, stalled) and presence (listening
/// or gone, connections closed) the test controls. It counts lines, and can validate the output
/// contract as it reads (for long streams) or record every connection's bytes (for tests that
/// inspect what arrived on which connection).
pub struct TestSink {
    addr: SocketAddr,
    shared: Arc<SinkShared>,
}

impl TestSink {
    /// Listens on `addr` (port 0 for a free port).
    pub fn start(addr: SocketAddr, validate: bool, record: bool) -> TestSink {
        let shared = Arc::new(SinkShared {
            validator: validate.then(|| Mutex::new(bettong::validate::OrderValidator::new())),
            record,
            ..Default::default()
        });
        let listener = std::net::TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("test sink: cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("the test sink's address");
        let sink = TestSink { addr, shared };
        sink.accept_on(listener);
        sink
    }

    fn accept_on(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("make the test sink's listener non-blocking");
        let shared = self.shared.clone();
        let handle = thread::spawn(move || {
            use std::sync::atomic::Ordering::SeqCst;
            while !shared.stop.load(SeqCst) && !shared.away.load(SeqCst) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        stream.set_nonblocking(false).expect("blocking stream");
                        let id = {
                            let mut conns = lock(&shared.conns);
                            conns.push(SinkConn {
                                peer: Some(peer),
                                ..Default::default()
                            });
                            conns.len() - 1
                        };
                        let s = shared.clone();
                        let h = thread::spawn(move || sink_read_loop(&s, id, stream));
                        lock(&shared.threads).push(h);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("test sink: accept failed: {e}"),
                }
            }
        });
        lock(&self.shared.threads).push(handle);
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how fast every connection is read.
    pub fn set_pace(&self, pace: Pace) {
        let v = match pace {
            Pace::Full => 0,
            Pace::Trickle(n) => n.clamp(1, u64::MAX - 1),
            Pace::Stalled => u64::MAX,
        };
        self.shared
            .pace
            .store(v, std::sync::atomic::Ordering::SeqCst);
    }

    /// Complete lines read so far.
    pub fn lines(&self) -> u64 {
        self.shared.lines.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` lines were read, for at most `timeout`.
    pub fn wait_for_lines(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.lines() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Connections accepted so far, in order, with what each carried.
    pub fn conns(&self) -> Vec<SinkConn> {
        lock(&self.shared.conns).clone()
    }

    /// The receiver goes away: the listener closes and every connection is closed, with whatever
    /// the server sent into it unread. Returns once all of that is done.
    pub fn go_away(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.away.store(true, SeqCst);
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            t.join().expect("a test sink thread panicked");
        }
    }

    /// The receiver comes back on the same address.
    pub fn come_back(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.away.store(false, SeqCst);
        let listener = std::net::TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("test sink: cannot listen on {} again: {e}", self.addr));
        self.accept_on(listener);
    }

    /// Stops and returns the validator's verdict: `Err` with the first violation (including a
    /// connection that ended mid-line), else the highest count of every word.
    pub fn finish(self) -> Result<HashMap<String, u64>, String> {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.stop.store(true, SeqCst);
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            t.join().expect("a test sink thread panicked");
        }
        let v = lock(
            self.shared
                .validator
                .as_ref()
                .expect("finish needs a validating sink"),
        );
        match v.finish() {
            Ok(summary) => Ok(summary.counts),
            Err(first) => Err(format!(
                "{first} ({} violating lines in all)",
                v.violations().max(1)
            )),
        }
    }
}

impl Drop for TestSink {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.stop.store(true, SeqCst);
        for t in std::mem::take(&mut *lock(&self.shared.threads)) {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads one sink connection at the sink's pace until it ends or the sink stops or goes away.
fn sink_read_loop(shared: &SinkShared, id: usize, mut stream: TcpStream) {
    use std::sync::atomic::Ordering::SeqCst;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("set a read timeout");
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if shared.stop.load(SeqCst) || shared.away.load(SeqCst) {
            break;
        }
        let want = match shared.pace.load(SeqCst) {
            0 => buf.len(),
            u64::MAX => {
                thread::sleep(Duration::from_millis(5));
                continue;
            }
            rate => (rate / 100).clamp(1, buf.len() as u64) as usize,
        };
        let n = match stream.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let data = &buf[..n];
        if let Some(v) = &shared.validator {
            let _ = lock(v).feed(id, data);
        }
        {
            let mut conns = lock(&shared.conns);
            let c = &mut conns[id];
            c.bytes += n as u64;
            if shared.record {
                c.data.extend_from_slice(data);
            }
        }
        let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        shared.lines.fetch_add(newlines, SeqCst);
        if want < buf.len() {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Dropping the stream closes it; unread bytes in it make the kernel reset the connection.
}
