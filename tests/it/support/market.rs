//! Market Spread over the real binary: [`MarketServer`] starts `bettong market-spread` with both
//! sources on free loopback ports (learnt from its ready line), [`ResultSink`] receives its framed
//! 55-byte order results per sink connection, and [`QuoteSync`] proves that the quotes sent so far
//! are applied (through the `last_bid`/`last_offer` of probe orders' results) so that tests can
//! send orders after them without sleeping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::market_spread::{Nbbo, Order, OrderResult, Side};

use super::{Server, CORES, WAIT};

/// A `bettong market-spread` child process and the addresses of its two sources.
pub struct MarketServer {
    /// The process (signals, stderr, stopped line).
    pub server: Server,
    /// Where the Orders source listens.
    pub orders: SocketAddr,
    /// Where the Nbbo source listens.
    pub nbbo: SocketAddr,
}

impl MarketServer {
    /// Starts `bettong market-spread --in Orders@127.0.0.1:0,Nbbo@127.0.0.1:0 --out OUT
    /// --cores 2 EXTRA…` and waits for its ready line
    /// (`{"event":"ready","in":"Orders@IP:PORT,Nbbo@IP:PORT","cores":2}`).
    #[track_caller]
    pub fn start(out: SocketAddr, extra: &[&str]) -> MarketServer {
        let out = out.to_string();
        let mut args = vec![
            "market-spread",
            "--in",
            "Orders@127.0.0.1:0,Nbbo@127.0.0.1:0",
            "--out",
            &out,
            "--cores",
            CORES,
        ];
        args.extend_from_slice(extra);
        let server = Server::spawn(&args);
        let deadline = Instant::now() + WAIT;
        let ready = loop {
            if let Some(ready) = server.event("ready") {
                break ready;
            }
            assert!(
                Instant::now() < deadline,
                "bettong {args:?} printed no ready line within {WAIT:?}; its stdout:\n{}\n\
                 its stderr:\n{}",
                server.stdout(),
                server.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            ready["cores"].as_u64(),
            Some(CORES.parse().unwrap()),
            "ready line {ready}"
        );
        let input = ready["in"].as_str().unwrap_or_default();
        let (orders, nbbo) = bettong::market_spread::serve::parse_inputs(input)
            .unwrap_or_else(|e| panic!("the ready line {ready} has no Orders and Nbbo: {e:#}"));
        assert!(
            input.starts_with("Orders@") && orders.port() != 0 && nbbo.port() != 0,
            "the ready line's \"in\" should be Orders@IP:PORT,Nbbo@IP:PORT with real ports: {ready}"
        );
        MarketServer {
            server,
            orders,
            nbbo,
        }
    }

    /// A new connection to the Orders source.
    #[track_caller]
    pub fn connect_orders(&self) -> TcpStream {
        self.connect(self.orders)
    }

    /// A new connection to the Nbbo source.
    #[track_caller]
    pub fn connect_nbbo(&self) -> TcpStream {
        self.connect(self.nbbo)
    }

    #[track_caller]
    fn connect(&self, addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| {
            panic!(
                "cannot connect to {addr}: {e}; the server's stderr:\n{}",
                self.server.stderr()
            )
        });
        s.set_nodelay(true).expect("set TCP_NODELAY");
        s.set_read_timeout(Some(WAIT)).expect("set a read timeout");
        s.set_write_timeout(Some(WAIT))
            .expect("set a write timeout");
        s
    }
}

/// One framed order.
pub fn order_frame(o: &Order) -> Vec<u8> {
    let mut f = Vec::new();
    o.encode_frame(&mut f);
    f
}

/// One framed quote.
pub fn quote_frame(q: &Nbbo) -> Vec<u8> {
    let mut f = Vec::new();
    q.encode_frame(&mut f);
    f
}

/// An order with plain fields, for hand-written cases.
pub fn order(symbol: &[u8; 4], id: &[u8; 6]) -> Order {
    Order {
        side: Side::Buy,
        account: 4242,
        order_id: *id,
        symbol: *symbol,
        qty: 100.0,
        price: 10.5,
        transact_time: *b"20150818-14:30:00.123",
    }
}

/// A quote.
pub fn quote(symbol: &[u8; 4], bid: f64, offer: f64) -> Nbbo {
    Nbbo {
        symbol: *symbol,
        transact_time: *b"20150818-14:29:59.999",
        bid,
        offer,
    }
}

/// What a [`ResultSink`] read on each connection: its results, whether a frame was malformed,
/// and the bytes of a frame still arriving.
#[derive(Default)]
struct SinkConnState {
    results: Vec<OrderResult>,
    error: Option<String>,
    pending: Vec<u8>,
}

/// A receiver of the server's framed order results, one list per sink connection, parsed with
/// [`OrderResult::parse`] as they arrive.
pub struct ResultSink {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<SinkConnState>>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResultSink {
    /// Listens on a free loopback port.
    pub fn start() -> ResultSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the result sink");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("the sink's address");
        let sink = ResultSink {
            addr,
            conns: Arc::default(),
            stop: Arc::default(),
            threads: Arc::default(),
        };
        let (conns, stop, threads) = (sink.conns.clone(), sink.stop.clone(), sink.threads.clone());
        let acceptor = thread::spawn(move || {
            while !stop.load(SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking stream");
                        stream
                            .set_read_timeout(Some(Duration::from_millis(20)))
                            .expect("set a read timeout");
                        let id = {
                            let mut c = lock(&conns);
                            c.push(SinkConnState::default());
                            c.len() - 1
                        };
                        let (conns, stop) = (conns.clone(), stop.clone());
                        lock(&threads).push(thread::spawn(move || {
                            read_results(stream, id, &conns, &stop)
                        }));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("result sink: accept failed: {e}"),
                }
            }
        });
        lock(&sink.threads).push(acceptor);
        sink
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Results received so far, over all connections.
    pub fn count(&self) -> usize {
        lock(&self.conns).iter().map(|c| c.results.len()).sum()
    }

    /// Each connection's results so far, in connection order; fails the test if a connection
    /// carried a frame that is not a 55-byte order result.
    #[track_caller]
    pub fn results(&self) -> Vec<Vec<OrderResult>> {
        let conns = lock(&self.conns);
        for (i, c) in conns.iter().enumerate() {
            if let Some(e) = &c.error {
                panic!("sink connection {i}: {e}");
            }
        }
        conns.iter().map(|c| c.results.clone()).collect()
    }

    /// Bytes of an incomplete frame at the end of each connection so far.
    pub fn partial_bytes(&self) -> usize {
        lock(&self.conns).iter().map(|c| c.pending.len()).sum()
    }

    /// Waits until at least `n` results arrived, for at most `timeout`; returns whether they did.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits until `pred` holds for the results so far, for at most `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[Vec<OrderResult>]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.results()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ResultSink {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in std::mem::take(&mut *lock(&self.threads)) {
            let _ = t.join();
        }
    }
}

/// Reads one sink connection, parsing every complete frame, until it ends or the sink stops.
fn read_results(
    mut stream: TcpStream,
    id: usize,
    conns: &Mutex<Vec<SinkConnState>>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(SeqCst) {
        let n = match stream.read(&mut buf) {
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
        let mut all = lock(conns);
        let c = &mut all[id];
        if c.error.is_some() {
            continue;
        }
        c.pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while c.pending.len() - at >= 4 {
            let len = u32::from_be_bytes(c.pending[at..at + 4].try_into().unwrap()) as usize;
            if len != 55 {
                c.error = Some(format!(
                    "a frame header announces {len} bytes after {} results, expected 55",
                    c.results.len()
                ));
                break;
            }
            if c.pending.len() - at < 4 + len {
                break;
            }
            match OrderResult::parse(&c.pending[at + 4..at + 4 + len]) {
                Ok(r) => c.results.push(r),
                Err(e) => {
                    c.error = Some(format!("result {}: {e}", c.results.len()));
                    break;
                }
            }
            at += 4 + len;
        }
        c.pending.drain(..at);
    }
}

/// The symbol of sync probe `k` of tag `tag`: `~` first, which generated symbols (letters and
/// spaces) never have.
pub fn sync_symbol(tag: u8, k: usize) -> [u8; 4] {
    [b'~', tag, b'0' + (k / 10) as u8, b'0' + (k % 10) as u8]
}

/// Whether `symbol` is one of the sync probes' symbols.
pub fn is_sync_symbol(symbol: &[u8; 4]) -> bool {
    symbol[0] == b'~'
}

/// How many sync symbols end each quote stream: with 2 cores, all of them are owned by one core
/// with probability 2^-15 only.
pub const SYNC_SYMBOLS: usize = 16;

/// Proof that quotes are applied: each Nbbo connection ends with wide quotes for its own fresh
/// sync symbols (so their state rejects, with a bid and offer no earlier state has). Quotes from
/// one connection reach each owner core in the order sent, so once a probe order on each sync
/// symbol comes back with that symbol's quoted bid and offer, every quote sent before on that
/// connection to that core is applied (with [`SYNC_SYMBOLS`] symbols per connection, every core
/// owns some of them, except with negligible probability).
pub struct QuoteSync {
    expected: Vec<([u8; 4], f64, f64)>,
    /// Probe orders sent so far (each produces one result, on a sync symbol).
    pub probes_sent: usize,
    /// Quotes [`frames`](Self::frames) returned so far.
    pub quotes_sent: usize,
    round: usize,
}

impl Default for QuoteSync {
    fn default() -> Self {
        Self::new()
    }
}

impl QuoteSync {
    /// No sync quotes yet.
    pub fn new() -> QuoteSync {
        QuoteSync {
            expected: Vec::new(),
            probes_sent: 0,
            quotes_sent: 0,
            round: 0,
        }
    }

    /// The framed sync quotes to append to a quote stream, with a tag (a printable byte) unique
    /// to this stream in the test.
    pub fn frames(&mut self, tag: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for k in 0..SYNC_SYMBOLS {
            let sym = sync_symbol(tag, k);
            let (bid, offer) = (f64::from(tag) + k as f64 / 100.0, f64::from(tag) + 1.0);
            quote(&sym, bid, offer).encode_frame(&mut out);
            self.expected.push((sym, bid, offer));
            self.quotes_sent += 1;
        }
        out
    }

    /// Sends probe orders (on a new Orders connection each round) until every sync quote given
    /// out so far shows in its probe's result, for at most [`WAIT`]; fails the test otherwise.
    #[track_caller]
    pub fn wait_applied(&mut self, ms: &MarketServer, sink: &ResultSink) {
        let deadline = Instant::now() + WAIT;
        let mut pending = std::mem::take(&mut self.expected);
        while !pending.is_empty() {
            self.round += 1;
            assert!(self.round < 10_000);
            let id: [u8; 6] = format!("~p{:04}", self.round)
                .as_bytes()
                .try_into()
                .unwrap();
            let mut frames = Vec::new();
            for (sym, _, _) in &pending {
                order(sym, &id).encode_frame(&mut frames);
            }
            let mut conn = ms.connect_orders();
            conn.write_all(&frames).expect("send the probe orders");
            drop(conn);
            self.probes_sent += pending.len();
            let want = pending.len();
            let mut seen = Vec::new();
            let arrived =
                sink.wait_until(deadline.saturating_duration_since(Instant::now()), |r| {
                    seen = r
                        .iter()
                        .flatten()
                        .filter(|r| r.order_id == id)
                        .copied()
                        .collect();
                    seen.len() >= want
                });
            assert!(
                arrived,
                "only {} of {want} probe orders {:?} got their result within {WAIT:?} (a \
                 never-quoted or wide symbol rejects every order); the server's stderr:\n{}",
                seen.len(),
                String::from_utf8_lossy(&id),
                ms.server.stderr()
            );
            pending.retain(|(sym, bid, offer)| {
                !seen.iter().any(|r| {
                    &r.symbol == sym && r.bid.to_bits() == bid.to_bits() && r.offer == *offer
                })
            });
            if !pending.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "sync quotes {:?} not applied within {WAIT:?}",
                    pending
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
