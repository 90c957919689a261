//! End-to-end checks of the `send` and `receive` tools against tiny in-test servers: the sender's
//! exact totals, pacing and connect errors, and the receiver's validation over several sink
//! connections.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bettong::corpus::{frame_lines, push_frame, split_frames, BILL_OF_RIGHTS};
use bettong::receive::Receiver;
use bettong::send::{run_send, SendOptions, SendSource};

/// A toy word-count server: accepts `inputs` framed connections, splits each message on ASCII
/// whitespace, counts every word and writes `word => count` lines to `out` over `out_conns`
/// connections, each word always on the same one. Ends once every input connection has closed.
fn fake_server(inputs: usize, out: SocketAddr, out_conns: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut sinks: Vec<_> = (0..out_conns)
            .map(|_| BufWriter::new(TcpStream::connect(out).unwrap()))
            .collect();
        let (tx, rx) = mpsc::channel::<Vec<String>>();
        for _ in 0..inputs {
            let (stream, _) = listener.accept().unwrap();
            let tx = tx.clone();
            thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut header = [0u8; 4];
                while r.read_exact(&mut header).is_ok() {
                    let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
                    r.read_exact(&mut payload).unwrap();
                    let text = String::from_utf8(payload).unwrap();
                    let words = text.split_ascii_whitespace().map(String::from).collect();
                    tx.send(words).unwrap();
                }
            });
        }
        drop(tx);
        let mut counts: HashMap<String, u64> = HashMap::new();
        for words in rx {
            for w in words {
                let c = counts.entry(w.clone()).or_default();
                *c += 1;
                let mut h = DefaultHasher::new();
                w.hash(&mut h);
                let sink = &mut sinks[h.finish() as usize % out_conns];
                writeln!(sink, "{w} => {c}").unwrap();
            }
        }
        for s in &mut sinks {
            s.flush().unwrap();
        }
    });
    (addr, handle)
}

/// A server that accepts `conns` connections and returns everything each one sent.
fn sink(conns: usize) -> (SocketAddr, JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let readers: Vec<_> = (0..conns)
            .map(|_| {
                let (mut s, _) = listener.accept().unwrap();
                thread::spawn(move || {
                    let mut data = Vec::new();
                    s.read_to_end(&mut data).unwrap();
                    data
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    (addr, handle)
}

/// Seven small frames `m0` … `m6`.
fn seven_frames() -> Vec<u8> {
    let mut framed = Vec::new();
    for i in 0..7 {
        push_frame(&mut framed, format!("m{i}").as_bytes());
    }
    framed
}

/// How many times each payload occurs in the data received on all connections.
fn payload_counts(received: &[Vec<u8>]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for data in received {
        for p in split_frames(data).unwrap() {
            *out.entry(String::from_utf8(p.to_vec()).unwrap())
                .or_default() += 1;
        }
    }
    out
}

#[test]
fn bill_of_rights_through_a_fake_server_validates() {
    let receiver = Receiver::start("127.0.0.1:0", true).unwrap();
    let (server, server_thread) = fake_server(3, receiver.local_addr(), 2);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/bill_of_rights.txt");
    let opts = SendOptions {
        connections: 3,
        repeat: 2,
        ..SendOptions::new(vec![server.to_string()], SendSource::File(path.into()))
    };
    let report = run_send(&opts).unwrap();
    assert_eq!(report.messages, 40);
    assert_eq!(report.bytes, 2 * frame_lines(BILL_OF_RIGHTS).len() as u64);
    assert_eq!(report.connections, 3);
    server_thread.join().unwrap();

    let mut expected: HashMap<String, u64> = HashMap::new();
    for _ in 0..2 {
        for w in BILL_OF_RIGHTS.split_ascii_whitespace() {
            *expected.entry(w.to_string()).or_default() += 1;
        }
    }
    let lines = expected.values().sum::<u64>();
    assert_eq!(lines, 2 * 482);
    assert!(receiver.wait_for_lines(lines, Duration::from_secs(5)));
    let got = receiver.finish().unwrap();
    assert_eq!(got.violations, None);
    assert_eq!(got.lines, lines);
    assert_eq!(got.connections, 2);
    assert_eq!(got.counts.unwrap(), expected);
}

#[test]
fn sending_to_a_closed_port_names_the_address() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let opts = SendOptions {
        connect_timeout: Duration::from_millis(300),
        ..SendOptions::new(vec![addr.clone()], SendSource::Bytes(seven_frames()))
    };
    let t = Instant::now();
    let err = run_send(&opts).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&addr), "{msg}");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "gave up too early"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "retried too long");
}

#[test]
fn messages_are_exact_and_rate_is_paced() {
    let (addr, server) = sink(2);
    let opts = SendOptions {
        messages: Some(2000),
        rate: 20_000,
        repeat: 0,
        connections: 2,
        ..SendOptions::new(vec![addr.to_string()], SendSource::Bytes(seven_frames()))
    };
    let report = run_send(&opts).unwrap();
    assert_eq!(report.messages, 2000);
    assert!(
        report.elapsed >= Duration::from_millis(50),
        "2000 messages at 20000/s took only {:?}",
        report.elapsed
    );
    let got = payload_counts(&server.join().unwrap());
    assert_eq!(got.values().sum::<u64>(), 2000);
}

#[test]
fn messages_cycle_the_input_exactly_and_repeat_caps_them() {
    let (addr, server) = sink(3);
    let mut opts = SendOptions {
        messages: Some(1001),
        repeat: 0,
        connections: 3,
        batch_size: 64,
        ..SendOptions::new(vec![addr.to_string()], SendSource::Bytes(seven_frames()))
    };
    assert_eq!(run_send(&opts).unwrap().messages, 1001);
    let got = payload_counts(&server.join().unwrap());
    for i in 0..7u64 {
        let want = (0..1001u64).filter(|g| g % 7 == i).count() as u64;
        assert_eq!(got[&format!("m{i}")], want, "m{i}");
    }

    // repeat = 1 stops after one pass, before the message limit.
    let (addr, server) = sink(3);
    opts.hosts = vec![addr.to_string()];
    opts.repeat = 1;
    assert_eq!(run_send(&opts).unwrap().messages, 7);
    let got = payload_counts(&server.join().unwrap());
    assert_eq!(got.len(), 7);
    assert!(got.values().all(|&c| c == 1));
}

#[test]
fn market_spread_files_are_sent_byte_for_byte() {
    use bettong::market_spread::gen::{write_files, GenOptions};
    let dir = std::env::temp_dir().join(format!("bettong-ms-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (orders, nbbo) = (dir.join("orders.bin"), dir.join("nbbo.bin"));
    let opts = GenOptions {
        symbols: 350,
        orders: 3_000,
        quotes: 700,
        seed: 5,
    };
    write_files(&opts, &orders, &nbbo).unwrap();
    for (path, count) in [(&nbbo, 700), (&orders, 3_000)] {
        let (addr, handle) = sink(1);
        let source = SendSource::FramedFile(path.clone());
        let report = run_send(&SendOptions::new(vec![addr.to_string()], source)).unwrap();
        assert_eq!(report.messages, count);
        let received = handle.join().unwrap();
        assert_eq!(
            received[0],
            std::fs::read(path).unwrap(),
            "{}",
            path.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A toy Market Spread server: reads `inputs` framed connections one after the other (quotes
/// first, then orders), applies quotes and checks orders per symbol, and writes the results to
/// `out` over `out_conns` connections, each symbol always on the same one.
fn fake_market_spread(
    inputs: usize,
    out: SocketAddr,
    out_conns: usize,
) -> (SocketAddr, JoinHandle<()>) {
    use bettong::market_spread::{encode_result, Nbbo, Order, SymbolState};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let mut sinks: Vec<_> = (0..out_conns)
            .map(|_| TcpStream::connect(out).unwrap())
            .collect();
        let mut states: HashMap<[u8; 4], SymbolState> = HashMap::new();
        for _ in 0..inputs {
            let (stream, _) = listener.accept().unwrap();
            let mut r = BufReader::new(stream);
            let mut header = [0u8; 4];
            while r.read_exact(&mut header).is_ok() {
                let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
                r.read_exact(&mut payload).unwrap();
                if let Ok(q) = Nbbo::parse(&payload) {
                    states.entry(q.symbol).or_default().apply_quote(&q);
                } else if let Ok(o) = Order::parse(&payload) {
                    let state = states.get(&o.symbol).copied().unwrap_or_default();
                    if state.check_order(&o) {
                        let mut frame = Vec::new();
                        encode_result(&o, &state, 1, &mut frame);
                        // Byte by byte now and then, so the receiver sees split frames.
                        let sink = &mut sinks[o.symbol[0] as usize % out_conns];
                        if o.order_id[5] == b'7' {
                            for b in frame {
                                sink.write_all(&[b]).unwrap();
                            }
                        } else {
                            sink.write_all(&frame).unwrap();
                        }
                    }
                }
            }
        }
    });
    (addr, handle)
}

#[test]
fn market_spread_results_through_a_fake_server_match_the_reference() {
    use bettong::market_spread::check::ResultChecker;
    use bettong::market_spread::gen::{generate, GenOptions};
    use bettong::market_spread::reference::expected_results;
    let opts = GenOptions {
        symbols: 350,
        orders: 4_000,
        quotes: 1_000,
        seed: 11,
    };
    let (orders, nbbo) = generate(&opts).unwrap();
    let expected = expected_results(
        &split_frames(&nbbo).unwrap(),
        &split_frames(&orders).unwrap(),
    );
    let receiver =
        Receiver::start_market_spread("127.0.0.1:0", ResultChecker::expecting(&expected, true))
            .unwrap();
    let (server, server_thread) = fake_market_spread(2, receiver.local_addr(), 3);
    for framed in [nbbo, orders] {
        let sent = run_send(&SendOptions::new(
            vec![server.to_string()],
            SendSource::Bytes(framed),
        ))
        .unwrap();
        assert!(sent.messages > 0);
    }
    server_thread.join().unwrap();
    let n = expected.len() as u64;
    assert!(receiver.wait_for_lines(n, Duration::from_secs(10)));
    let report = receiver.finish().unwrap();
    assert_eq!(report.violations, None);
    assert_eq!((report.lines, report.connections), (n, 3));
    assert_eq!(report.bytes, 59 * n);
}
