//! The io_uring source over loopback, one rule per test, with tiny provided buffers (64 bytes,
//! a handful of them) so that frames straddle buffers, buffers run out and receives re-arm.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::FullMesh;
use glommio::LocalExecutorBuilder;

use super::ring::{Ring, RingParams};
use super::socket::listen;
use crate::codec::encode_frame;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pipeline::{App, Pipeline};
use crate::routing::{Envelope, Router};
use crate::shutdown::Shutdown;
use crate::sink::{run_memory_sink, SinkPort};
use crate::source::TcpSourceConfig;
use crate::tcp;
use crate::worker::Worker;

/// Each frame's text, one line per frame, in the order the core applied them.
fn echo() -> impl App {
    Pipeline::text()
        .key_by(|t: &str| (t, ()))
        .state(|_t: &str, n: &mut u64, ()| {
            *n += 1;
            Some(*n)
        })
        .encode(|t: &str, _n: &u64, out: &mut Vec<u8>| {
            out.extend_from_slice(t.as_bytes());
            out.push(b'\n');
        })
}

fn tiny(buf_count: u16) -> RingParams {
    RingParams {
        entries: 32,
        buf_count,
        buf_size: 64,
    }
}

fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    let mut w = Vec::new();
    for p in payloads {
        encode_frame(p, &mut w);
    }
    w
}

/// What a run of the source did.
struct Outcome {
    output: String,
    metrics: MetricsSnapshot,
    /// Multishot receives re-armed after they ended without the connection ending.
    rearmed: u64,
    /// From the stop request to the source's return.
    stop_took: Duration,
}

/// Runs one core's io_uring source on 127.0.0.1 with `params`, hands the address to `client`
/// (on its own thread), waits until `done` holds for the core's metrics, then stops the source.
fn run<C>(
    params: RingParams,
    configure: impl FnOnce(&mut TcpSourceConfig) + Send + 'static,
    client: C,
    done: impl Fn(&MetricsSnapshot) -> bool + Send + 'static,
) -> Outcome
where
    C: FnOnce(SocketAddr) + Send + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (senders, _receivers) = FullMesh::<Envelope>::full(1, 8).join().await.unwrap();
            let metrics = Metrics::new(1);
            let shutdown = Shutdown::new();
            let port = Rc::new(SinkPort::new(4));
            let sink =
                glommio::spawn_local(run_memory_sink(port.clone(), metrics.clone(), 0, true));
            let worker = Rc::new(Worker::new(
                echo(),
                Router::new(1, 7),
                senders,
                port,
                metrics.clone(),
                shutdown.clone(),
            ));
            let mut cfg = TcpSourceConfig::new("127.0.0.1:0".parse().unwrap());
            configure(&mut cfg);
            let Ok(listener) = listen(&cfg, params) else {
                panic!("io_uring is available and the address binds");
            };
            cfg.addr = listener.local_addr();
            let ring: Rc<Ring> = listener.ring().clone();
            let addr = cfg.addr;
            let client = std::thread::spawn(move || client(addr));
            let source = glommio::spawn_local(tcp::run(
                worker.clone(),
                0,
                tcp::Listener::Uring(listener),
                cfg,
                None,
            ));
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done(&metrics.core(0).snapshot()) {
                assert!(Instant::now() < deadline, "{}", metrics.core(0).snapshot());
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            let stopped = Instant::now();
            shutdown.trigger();
            source.await;
            let stop_took = stopped.elapsed();
            worker.flush().await;
            worker.sink.close();
            let out = sink.await;
            client.join().expect("the client thread panicked");
            Outcome {
                output: String::from_utf8(out).unwrap(),
                metrics: metrics.core(0).snapshot(),
                rearmed: ring.rearmed(),
                stop_took,
            }
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Writes `wire` in pieces of 1 to `max` bytes (a fixed pseudo-random sequence), unbuffered.
fn write_in_pieces(s: &mut TcpStream, wire: &[u8], max: usize) {
    s.set_nodelay(true).unwrap();
    let mut x = 0x9e37_79b9_u32;
    let mut pos = 0;
    while pos < wire.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (1 + x as usize % max).min(wire.len() - pos);
        s.write_all(&wire[pos..pos + n]).unwrap();
        pos += n;
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("frame-{i}-{}", "w".repeat(i % 150)))
        .collect()
}

#[test]
fn frames_spanning_many_small_buffers_come_out_whole_and_in_order() {
    let texts = numbered(3000);
    let refs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    let wire = frames(&refs);
    let n = texts.len() as u64;
    let out = run(
        tiny(8),
        |_| {},
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            write_in_pieces(&mut s, &wire, 97);
        },
        move |m| m.frames_in == n,
    );
    let expected: String = texts.iter().map(|t| format!("{t}\n")).collect();
    assert_eq!(out.output, expected);
    assert_eq!(out.metrics.connections_accepted, 1);
    assert_eq!(out.metrics.connections_truncated, 0);
}

#[test]
fn a_sender_faster_than_the_core_runs_the_buffers_dry_and_the_receive_rearms() {
    // 2 MiB in one go into 4 buffers of 64 bytes: the kernel runs out of buffers again and
    // again, ends the multishot receive, and the connection re-arms it; nothing is lost.
    let texts = numbered(20_000);
    let refs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    let wire = frames(&refs);
    let n = texts.len() as u64;
    let out = run(
        tiny(4),
        |_| {},
        move |addr| {
            TcpStream::connect(addr).unwrap().write_all(&wire).unwrap();
        },
        move |m| m.frames_in == n,
    );
    let expected: String = texts.iter().map(|t| format!("{t}\n")).collect();
    assert_eq!(out.output, expected);
    assert!(out.rearmed > 0, "the buffers never ran dry");
}

#[test]
fn frame_larger_than_a_buffer_is_reassembled() {
    let big = "b".repeat(10_000);
    let wire = frames(&[b"before", big.as_bytes(), b"after"]);
    let out = run(
        tiny(8),
        |_| {},
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            write_in_pieces(&mut s, &wire, 500);
        },
        |m| m.frames_in == 3,
    );
    assert_eq!(out.output, format!("before\n{big}\nafter\n"));
}

#[test]
fn oversized_header_closes_only_that_connection() {
    let out = run(
        tiny(8),
        |cfg| cfg.max_frame = 100,
        |addr| {
            let mut bad = TcpStream::connect(addr).unwrap();
            let mut wire = frames(&[b"ok-from-bad"]);
            wire.extend_from_slice(&101u32.to_be_bytes());
            wire.extend_from_slice(&[b'x'; 50]);
            bad.write_all(&wire).unwrap();
            // The server closes it: reading sees the end (or a reset).
            let mut byte = [0u8; 1];
            assert!(matches!(bad.read(&mut byte), Ok(0) | Err(_)));
            let mut good = TcpStream::connect(addr).unwrap();
            write_in_pieces(&mut good, &frames(&[b"good-1", &[b'g'; 100], b"good-3"]), 7);
        },
        |m| m.frames_in == 4,
    );
    let g = "g".repeat(100);
    assert_eq!(out.output, format!("ok-from-bad\ngood-1\n{g}\ngood-3\n"));
    assert_eq!(out.metrics.connections_oversized, 1);
    assert_eq!(out.metrics.connections_accepted, 2);
}

#[test]
fn invalid_utf8_frame_is_rejected_whole_and_the_connection_goes_on() {
    let wire = frames(&[b"first", b"bad \xff\xfe text", b"last"]);
    let out = run(
        tiny(8),
        |_| {},
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            write_in_pieces(&mut s, &wire, 5);
        },
        |m| m.frames_in == 3,
    );
    assert_eq!(out.output, "first\nlast\n");
    assert_eq!(out.metrics.frames_rejected, 1);
}

#[test]
fn connection_ending_inside_a_frame_drops_only_the_partial_frame() {
    let mut wire = frames(&[b"complete"]);
    wire.extend_from_slice(&frames(&[&[b'p'; 90]])[..60]);
    let out = run(
        tiny(8),
        |_| {},
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            write_in_pieces(&mut s, &wire, 9);
        },
        |m| m.connections_truncated == 1,
    );
    assert_eq!(out.output, "complete\n");
    assert_eq!(out.metrics.frames_in, 1);
}

#[test]
fn shutdown_with_a_connection_open_finishes_what_was_received_and_returns() {
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let out = run(
        tiny(8),
        |_| {},
        move |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&frames(&[b"one", b"two"])).unwrap();
            // Half a frame, then keep the connection open until the test is over.
            s.write_all(&frames(&[b"three"])[..5]).unwrap();
            let _ = hold_rx.recv_timeout(Duration::from_secs(20));
        },
        move |m| {
            let done = m.frames_in == 2;
            if done {
                let _ = hold_tx.send(());
            }
            done
        },
    );
    assert_eq!(out.output, "one\ntwo\n");
    assert!(
        out.stop_took < Duration::from_secs(2),
        "{:?}",
        out.stop_took
    );
}

#[test]
fn connection_stuck_inside_a_frame_is_closed_after_the_idle_timeout() {
    let (closed_tx, closed_rx) = mpsc::channel::<Duration>();
    let out = run(
        tiny(8),
        |cfg| cfg.idle_timeout = Duration::from_millis(300),
        move |addr| {
            // Idle between frames: left open past the timeout.
            let mut quiet = TcpStream::connect(addr).unwrap();
            quiet.write_all(&frames(&[b"quiet"])).unwrap();
            // Stuck inside a frame: closed once the timeout passes.
            let mut stuck = TcpStream::connect(addr).unwrap();
            stuck.write_all(&frames(&[b"stuck"])[..6]).unwrap();
            let since = Instant::now();
            let mut byte = [0u8; 1];
            assert!(matches!(stuck.read(&mut byte), Ok(0) | Err(_)));
            let took = since.elapsed();
            // The quiet one still works.
            quiet.write_all(&frames(&[b"still here"])).unwrap();
            closed_tx.send(took).unwrap();
        },
        |m| m.frames_in == 2,
    );
    let took = closed_rx.recv().unwrap();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(out.output, "quiet\nstill here\n");
}

#[test]
fn connections_beyond_the_per_core_limit_are_closed_at_once() {
    let out = run(
        tiny(8),
        |cfg| cfg.max_connections_per_core = 1,
        |addr| {
            let mut first = TcpStream::connect(addr).unwrap();
            first.write_all(&frames(&[b"first"])).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let mut second = TcpStream::connect(addr).unwrap();
            let mut byte = [0u8; 1];
            assert!(matches!(second.read(&mut byte), Ok(0) | Err(_)));
            first.write_all(&frames(&[b"again"])).unwrap();
        },
        |m| m.frames_in == 2,
    );
    assert_eq!(out.output, "first\nagain\n");
    assert_eq!(out.metrics.connections_accepted, 1);
}

#[test]
fn many_connections_on_one_core_each_keep_their_order() {
    let conns = 8;
    let out = run(
        tiny(16),
        |_| {},
        move |addr| {
            let senders: Vec<_> = (0..conns)
                .map(|c| {
                    std::thread::spawn(move || {
                        let texts: Vec<String> = (0..500)
                            .map(|i| format!("c{c}-{i}-{}", "z".repeat(i % 70)))
                            .collect();
                        let refs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
                        let mut s = TcpStream::connect(addr).unwrap();
                        write_in_pieces(&mut s, &frames(&refs), 300);
                    })
                })
                .collect();
            for s in senders {
                s.join().unwrap();
            }
        },
        move |m| m.frames_in == conns * 500,
    );
    for c in 0..conns {
        let prefix = format!("c{c}-");
        let got: Vec<&str> = out
            .output
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let want: Vec<String> = (0..500)
            .map(|i| format!("c{c}-{i}-{}", "z".repeat(i % 70)))
            .collect();
        assert_eq!(got, want);
    }
}

#[test]
fn dropping_a_ring_with_requests_in_flight_cancels_them() {
    // A receive armed on an idle connection, whose Op is dropped (orphaned) and then the ring:
    // the ring must cancel the request before its buffers are freed. Run twice to reuse slots.
    LocalExecutorBuilder::default()
        .spawn(|| async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let ring = Ring::new(tiny(4)).unwrap();
            let driver = glommio::spawn_local(ring.clone().drive());
            use std::os::fd::AsRawFd;
            for _ in 0..2 {
                let op = ring.recv_multi(server.as_raw_fd()).unwrap();
                assert!(!op.has_completion());
                drop(op);
            }
            let kept = ring.recv_multi(server.as_raw_fd()).unwrap();
            (&client).write_all(b"hello").unwrap();
            let c = kept.next().await.unwrap();
            assert_eq!(c.buf.as_ref().unwrap().bytes(), b"hello");
            drop(c);
            drop(kept);
            ring.close();
            driver.await;
            drop(ring);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn the_driver_survives_far_more_wakeups_than_a_task_has_references() {
    // Each wake-up of the driver used to leave a waker behind; glommio counts a task's wakers in
    // an i16, so 32768 wake-ups broke it. Make the kernel post a completion while the core is
    // asleep, many more times than that.
    LocalExecutorBuilder::default()
        .spawn(|| async {
            let ring = Ring::new(tiny(4)).unwrap();
            let driver = glommio::spawn_local(ring.clone().drive());
            let mut rounds = 0;
            while ring.wakeups() < 40_000 {
                // Long enough for the task to be waiting when it fires.
                let op = ring.timer(50_000).unwrap();
                let c = futures_lite::future::or(op.next(), async {
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                    panic!("no wake-up after {} of them", ring.wakeups());
                })
                .await;
                assert_eq!(c.expect("a timeout completes").res, -libc::ETIME);
                rounds += 1;
                assert!(
                    rounds < 400_000,
                    "the driver woke only {} times",
                    ring.wakeups()
                );
            }
            ring.close();
            driver.await;
        })
        .unwrap()
        .join()
        .unwrap();
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The measurement behind keeping the sink on glommio's `send(2)`: one sink's worth of chunks
/// over loopback with `send(2)`, an io_uring `Send` and an io_uring `SendZc`, each awaited (the
/// sink writes one chunk at a time, in order). Run with
/// `cargo test --release -p bettong-engine sink_sends -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn sink_sends_over_loopback_send_vs_uring_send_vs_send_zc() {
    LocalExecutorBuilder::default()
        .spawn(|| async {
            use std::os::fd::AsRawFd;
            let total: usize = 2 << 30;
            for chunk in [16 << 10, 64 << 10, 256 << 10] {
                for how in ["send(2)", "uring Send", "uring SendZc"] {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let addr = listener.local_addr().unwrap();
                    let reader = std::thread::spawn(move || {
                        let (mut s, _) = listener.accept().unwrap();
                        let mut buf = vec![0u8; 1 << 20];
                        let mut n = 0;
                        while let Ok(k) = s.read(&mut buf) {
                            if k == 0 {
                                break;
                            }
                            n += k;
                        }
                        n
                    });
                    let mut s = TcpStream::connect(addr).unwrap();
                    let ring = Ring::new(RingParams {
                        entries: 32,
                        buf_count: 0,
                        buf_size: 0,
                                })
                    .unwrap();
                    let driver = glommio::spawn_local(ring.clone().drive());
                    let data: Rc<[u8]> = vec![b'x'; chunk].into();
                    let (wall, cpu) = (Instant::now(), thread_cpu());
                    let mut sent = 0;
                    while sent < total {
                        match how {
                            "send(2)" => {
                                s.write_all(&data[..]).unwrap();
                                sent += chunk;
                            }
                            _ => {
                                let op = ring
                                    .send(s.as_raw_fd(), data.clone(), 0, how == "uring SendZc")
                                    .unwrap();
                                let mut n = 0;
                                while let Some(c) = op.next().await {
                                    if !io_uring::cqueue::notif(c.flags) {
                                        assert!(c.res > 0, "{:?}", c.error());
                                        n = c.res as usize;
                                    }
                                }
                                sent += n;
                            }
                        }
                    }
                    let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
                    drop(s);
                    assert!(reader.join().unwrap() >= total);
                    ring.close();
                    driver.await;
                    let gib = total as f64 / (1u64 << 30) as f64;
                    println!(
                        "{:>4} KiB chunks, {how:<12}: {:5.2} GiB/s, sender thread {:5.1} ms CPU per GiB",
                        chunk >> 10,
                        gib / wall.as_secs_f64(),
                        cpu.as_secs_f64() * 1e3 / gib
                    );
                }
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_failed_enter_after_queueing_keeps_the_request_and_submits_it_later() {
    // The kernel may take a queued entry at any later enter, so a request whose first enter
    // failed must keep its slot (its buffer) and complete once the entry goes in.
    LocalExecutorBuilder::default()
        .spawn(|| async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let ring = Ring::new(tiny(4)).unwrap();
            let driver = glommio::spawn_local(ring.clone().drive());
            use std::os::fd::AsRawFd;
            ring.fail_next_enter.set(true);
            let op = ring
                .recv_multi(server.as_raw_fd())
                .expect("a queued request is not an error, even if its enter failed");
            (&client).write_all(b"later").unwrap();
            // The driver's next reap submits what is still queued.
            ring.reap();
            let c = futures_lite::future::or(op.next(), async {
                glommio::timer::sleep(Duration::from_secs(5)).await;
                panic!("the queued receive never completed");
            })
            .await
            .expect("a completion");
            assert_eq!(c.buf.as_ref().unwrap().bytes(), b"later");
            drop(c);
            drop(op);
            ring.close();
            driver.await;
        })
        .unwrap()
        .join()
        .unwrap();
}
