//! End-to-end tests of `bettong market-spread`, the real binary, against its contract
//! (`spec/market-spread.md`): the spread rule on every edge (absolute, relative, NaN, crossed,
//! never quoted, last quote wins, across connections), the result's fields, every row of the
//! bad-input table with its counters, several chunked connections per source against the
//! sequential reference (per-symbol connection and order), and SIGTERM while orders flow (every
//! result of every order received is delivered, with no gap).
//!
//! Quotes are always proven applied before orders are sent: each quote stream ends with quotes
//! for sync symbols, and probe orders on those come back with the sync quotes' bid and offer
//! ([`QuoteSync`]). Every server runs on 2 cores and is killed when its test ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bettong::corpus::split_frames;
use bettong::market_spread::gen::{generate, GenOptions};
use bettong::market_spread::reference::{expected_results, final_states};
use bettong::market_spread::{Nbbo, Order, OrderResult, Side, SymbolState};

use crate::support::market::{
    is_sync_symbol, order, order_frame, quote, quote_frame, MarketServer, QuoteSync, ResultSink,
};
use crate::support::{chunk_cuts, final_metrics, header_splits, send_in_chunks, Rng, WAIT};

/// How long to keep listening after the expected results arrived, to catch extra ones.
const SETTLE: Duration = Duration::from_millis(300);

/// Wall-clock nanoseconds now.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn text(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

/// The results of real orders (sync probes left out), each with its sink connection, in the order
/// received on that connection.
fn real_results(sink: &ResultSink) -> Vec<(usize, OrderResult)> {
    sink.results()
        .into_iter()
        .enumerate()
        .flat_map(|(c, rs)| rs.into_iter().map(move |r| (c, r)))
        .filter(|(_, r)| !is_sync_symbol(&r.symbol))
        .collect()
}

/// Fails unless `r` carries exactly `o`'s fields, `state`'s bid and offer, and a timestamp within
/// `window`.
#[track_caller]
fn assert_result_fields(r: &OrderResult, o: &Order, state: &SymbolState, window: (u64, u64)) {
    let what = format!(
        "result of order {} on {}",
        text(&o.order_id),
        text(&o.symbol)
    );
    assert_eq!(r.side, o.side, "{what}: side");
    assert_eq!(r.account, o.account, "{what}: account");
    assert_eq!(r.order_id, o.order_id, "{what}: order id");
    assert_eq!(r.symbol, o.symbol, "{what}: symbol");
    assert_eq!(r.qty.to_bits(), o.qty.to_bits(), "{what}: quantity");
    assert_eq!(r.price.to_bits(), o.price.to_bits(), "{what}: price");
    assert_eq!(
        (r.bid.to_bits(), r.offer.to_bits()),
        (state.last_bid.to_bits(), state.last_offer.to_bits()),
        "{what}: last bid and offer {} / {}, expected {} / {}",
        r.bid,
        r.offer,
        state.last_bid,
        state.last_offer
    );
    assert!(
        window.0 <= r.timestamp_ns && r.timestamp_ns <= window.1,
        "{what}: timestamp {} outside the test's wall-clock window {window:?}",
        r.timestamp_ns
    );
}

/// Waits for `n` results in all (probes included), fails the test with the server's stderr
/// otherwise, then listens [`SETTLE`] longer.
#[track_caller]
fn await_results(ms: &MarketServer, sink: &ResultSink, n: usize, what: &str) {
    if !sink.wait_for(n, WAIT) {
        panic!(
            "{what}: {} of {n} expected results arrived within {WAIT:?}; stderr:\n{}",
            sink.count(),
            ms.server.stderr()
        );
    }
    thread::sleep(SETTLE);
}

// 1. The rule, case by case, with the expectation written by hand and checked against the
// library's `SymbolState`.

/// One symbol's quotes, in the order sent, and whether its orders get a result afterwards, worked
/// out by hand.
struct Case {
    symbol: &'static [u8; 4],
    quotes: &'static [(f64, f64)],
    rejects: bool,
    why: &'static str,
}

const CASES: &[Case] = &[
    Case {
        symbol: b"ABS1",
        quotes: &[(1.0, 1.05)],
        rejects: true,
        why: "diff 1.05 - 1.0 = 0.050000000000000044 >= 0.05 (relative 0.0488 alone would not)",
    },
    Case {
        symbol: b"ABS2",
        quotes: &[(10.0, 11.0)],
        rejects: true,
        why: "diff 1.0 >= 0.05",
    },
    Case {
        symbol: b"ABS3",
        quotes: &[(100.0, 100.05)],
        rejects: false,
        why: "diff 0.04999999999999716 < 0.05 in doubles, relative 0.0005",
    },
    Case {
        symbol: b"REL1",
        quotes: &[(0.5, 0.53)],
        rejects: true,
        why: "diff 0.03 < 0.05, but diff / mid = 0.03 / 0.515 = 0.058 >= 0.05",
    },
    Case {
        symbol: b"REL2",
        quotes: &[(0.39, 0.41)],
        rejects: false,
        why: "0.019999999999999962 / 0.4 = 0.049999999999999906 < 0.05",
    },
    Case {
        symbol: b"NAR1",
        quotes: &[(10.0, 10.01)],
        rejects: false,
        why: "narrow: diff 0.01, relative 0.001",
    },
    Case {
        symbol: b"NAN1",
        quotes: &[(f64::NAN, 1.0)],
        rejects: false,
        why: "bid NaN: diff and mid NaN, both comparisons false",
    },
    Case {
        symbol: b"NAN2",
        quotes: &[(10.0, 11.0), (1.0, f64::NAN)],
        rejects: false,
        why: "offer NaN after a wide quote: comparisons false, accepted",
    },
    Case {
        symbol: b"ZER1",
        quotes: &[(0.0, 0.0)],
        rejects: false,
        why: "0 / 0 is NaN: accepted",
    },
    Case {
        symbol: b"CRS1",
        quotes: &[(101.0, 100.0)],
        rejects: false,
        why: "crossed with a positive mid: diff and diff / mid negative",
    },
    Case {
        symbol: b"NEG1",
        quotes: &[(-0.9, -1.0)],
        rejects: true,
        why: "diff -0.1, mid -0.95: diff / mid = 0.105 >= 0.05",
    },
    Case {
        symbol: b"INF1",
        quotes: &[(1.0, f64::INFINITY)],
        rejects: true,
        why: "diff +inf >= 0.05",
    },
    Case {
        symbol: b"LST1",
        quotes: &[(10.0, 12.0), (10.0, 10.02)],
        rejects: false,
        why: "wide then narrow: the last quote wins",
    },
    Case {
        symbol: b"LST2",
        quotes: &[(20.0, 20.01), (30.0, 30.01), (20.0, 21.5)],
        rejects: true,
        why: "narrow, narrow, then wide: the last quote wins, with its bid and offer",
    },
    Case {
        symbol: b"NEVR",
        quotes: &[],
        rejects: true,
        why: "never quoted: rejects every order, bid and offer 0.0",
    },
];

/// Two orders per symbol, with distinct sides, accounts, quantities and prices, ids `{p}{s}{k}`.
fn case_orders(symbol: &[u8; 4], s: usize, phase: u8) -> Vec<Order> {
    (0..2)
        .map(|k| {
            let id = format!("{}{s:03}{k:02}", phase as char);
            Order {
                side: if k == 0 { Side::Buy } else { Side::Sell },
                account: 1_000_000 * u32::from(phase) + 1000 * s as u32 + k as u32,
                order_id: id.as_bytes().try_into().unwrap(),
                symbol: *symbol,
                qty: 100.0 * (s + 1) as f64 + k as f64,
                price: if k == 0 { 0.125 * s as f64 } else { -3.75e-7 },
                transact_time: *b"20150818-14:30:00.456",
            }
        })
        .collect()
}

/// Sends `orders` on one Orders connection and checks that exactly those whose symbol rejects
/// in `states` get a result, with every field, in the order sent.
#[track_caller]
fn send_and_check_orders(
    ms: &MarketServer,
    sink: &ResultSink,
    orders: &[Order],
    states: &HashMap<[u8; 4], SymbolState>,
    what: &str,
) {
    let before: HashSet<[u8; 6]> = real_results(sink).iter().map(|(_, r)| r.order_id).collect();
    let expected: Vec<&Order> = orders
        .iter()
        .filter(|o| states.get(&o.symbol).copied().unwrap_or_default().reject)
        .collect();
    let total_before = sink.count();
    let t0 = now_ns();
    let mut conn = ms.connect_orders();
    let framed: Vec<u8> = orders.iter().flat_map(order_frame).collect();
    conn.write_all(&framed).expect("send the orders");
    await_results(ms, sink, total_before + expected.len(), what);
    let t1 = now_ns();
    let got: Vec<(usize, OrderResult)> = real_results(sink)
        .into_iter()
        .filter(|(_, r)| !before.contains(&r.order_id))
        .collect();
    let got_ids: Vec<String> = got.iter().map(|(_, r)| text(&r.order_id)).collect();
    let want_ids: Vec<String> = expected.iter().map(|o| text(&o.order_id)).collect();
    let (mut g, mut w) = (got_ids.clone(), want_ids.clone());
    g.sort();
    w.sort();
    assert_eq!(g, w, "{what}: the orders that got a result");
    for (_, r) in &got {
        let o = orders.iter().find(|o| o.order_id == r.order_id).unwrap();
        let state = states.get(&o.symbol).copied().unwrap_or_default();
        assert_result_fields(r, o, &state, (t0, t1));
    }
    // Each symbol's results: one sink connection, in the order sent.
    let mut per_symbol: BTreeMap<[u8; 4], Vec<(usize, [u8; 6])>> = BTreeMap::new();
    for (c, r) in &got {
        per_symbol
            .entry(r.symbol)
            .or_default()
            .push((*c, r.order_id));
    }
    for (sym, rs) in per_symbol {
        let conns: HashSet<usize> = rs.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            conns.len(),
            1,
            "{what}: {} on several sink connections",
            text(&sym)
        );
        let sent: Vec<[u8; 6]> = orders
            .iter()
            .filter(|o| o.symbol == sym)
            .map(|o| o.order_id)
            .collect();
        let received: Vec<[u8; 6]> = rs.iter().map(|(_, id)| *id).collect();
        assert_eq!(
            received,
            sent,
            "{what}: {} results out of order",
            text(&sym)
        );
    }
}

#[test]
fn every_rule_decides_which_orders_get_a_result() {
    let sink = ResultSink::start();
    let ms = MarketServer::start(sink.addr(), &[]);
    let mut sync = QuoteSync::new();

    // The hand-written expectation agrees with the library's rule, case by case.
    let mut states: HashMap<[u8; 4], SymbolState> = HashMap::new();
    for case in CASES {
        let mut s = SymbolState::default();
        for &(bid, offer) in case.quotes {
            s.apply_quote(&quote(case.symbol, bid, offer));
        }
        assert_eq!(
            s.reject,
            case.rejects,
            "{}: the library's rule disagrees with the hand-worked case ({})",
            text(case.symbol),
            case.why
        );
        if let Some(&(bid, offer)) = case.quotes.last() {
            assert_eq!(
                (s.last_bid.to_bits(), s.last_offer.to_bits()),
                (bid.to_bits(), offer.to_bits())
            );
            states.insert(*case.symbol, s);
        } else {
            assert_eq!((s.last_bid, s.last_offer), (0.0, 0.0));
        }
    }
    // Two more symbols whose last quote comes on a second Nbbo connection later.
    let (x1, x2) = (b"XCN1", b"XCN2");
    let phase1 = [quote(x1, 5.0, 5.01), quote(x2, 5.0, 6.0)];
    let phase2 = [quote(x1, 5.0, 6.0), quote(x2, 5.0, 5.01)];

    // Phase 1: every case's quotes in order on one connection, then the sync quotes.
    let mut framed = Vec::new();
    for case in CASES {
        for &(bid, offer) in case.quotes {
            framed.extend(quote_frame(&quote(case.symbol, bid, offer)));
        }
    }
    for q in &phase1 {
        framed.extend(quote_frame(q));
        states.entry(q.symbol).or_default().apply_quote(q);
    }
    framed.extend(sync.frames(b'A'));
    let mut nbbo = ms.connect_nbbo();
    nbbo.write_all(&framed).expect("send the quotes");
    sync.wait_applied(&ms, &sink);
    // Quotes produce no output: only the probes' results so far.
    assert_eq!(real_results(&sink).len(), 0, "a quote produced a result");

    let mut orders = Vec::new();
    for (s, case) in CASES.iter().enumerate() {
        orders.extend(case_orders(case.symbol, s, b'1'));
    }
    orders.extend(case_orders(x1, 90, b'1'));
    orders.extend(case_orders(x2, 91, b'1'));
    // By hand: ABS1, ABS2, REL1, NEG1, INF1, LST2, NEVR and XCN2 reject, two orders each.
    let by_hand: Vec<&[u8; 4]> = vec![
        b"ABS1", b"ABS2", b"REL1", b"NEG1", b"INF1", b"LST2", b"NEVR", b"XCN2",
    ];
    let rule: HashSet<[u8; 4]> = orders
        .iter()
        .map(|o| o.symbol)
        .filter(|s| states.get(s).copied().unwrap_or_default().reject)
        .collect();
    assert_eq!(rule, by_hand.iter().map(|s| **s).collect::<HashSet<_>>());
    send_and_check_orders(&ms, &sink, &orders, &states, "phase 1");
    assert_eq!(real_results(&sink).len(), 2 * by_hand.len());

    // Phase 2: the last quote applied wins whatever connection it came on (the first Nbbo
    // connection is still open).
    let mut framed = Vec::new();
    for q in &phase2 {
        framed.extend(quote_frame(q));
        states.entry(q.symbol).or_default().apply_quote(q);
    }
    framed.extend(sync.frames(b'B'));
    let mut nbbo2 = ms.connect_nbbo();
    nbbo2.write_all(&framed).expect("send the second quotes");
    sync.wait_applied(&ms, &sink);
    assert!(states[x1].reject && !states[x2].reject);
    let orders2: Vec<Order> = [case_orders(x1, 92, b'2'), case_orders(x2, 93, b'2')].concat();
    send_and_check_orders(&ms, &sink, &orders2, &states, "phase 2");
    let xcn1: Vec<OrderResult> = real_results(&sink)
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| &r.symbol == x1)
        .collect();
    assert_eq!(xcn1.len(), 2, "XCN1 rejects only after its second quote");
    assert!(xcn1.iter().all(|r| (r.bid, r.offer) == (5.0, 6.0)));
    drop((nbbo, nbbo2));
}

// 2. The bad-input table.

/// An order payload changed by `f`, framed with its own length.
fn bad_frame(payload: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = payload.to_vec();
    f(&mut p);
    let mut out = (p.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&p);
    out
}

/// Reads `conn` until the server closes it; fails the test if it does not within [`WAIT`].
#[track_caller]
fn expect_closed(ms: &MarketServer, conn: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: the server wrote {n} bytes to a source connection"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => panic!(
            "{what}: the server did not close the connection within {WAIT:?}; stderr:\n{}",
            ms.server.stderr()
        ),
        Err(_) => {} // reset: closed with our bytes unread
    }
}

#[test]
fn bad_input_rows_reject_frames_close_or_drop_as_specified() {
    let sink = ResultSink::start();
    let mut ms = MarketServer::start(sink.addr(), &["--max-frame", "100"]);
    let mut sync = QuoteSync::new();
    // (symbol, order id) of every order that must get a result, and of those that must not.
    let mut want: Vec<([u8; 4], [u8; 6])> = Vec::new();
    let mut never: Vec<[u8; 6]> = Vec::new();
    let mut frames_in = 0u64;
    let mut rejected = 0u64;

    // Orders: every bad kind, each followed by a valid order on the same connection (BAD1 is
    // never quoted, so every valid order on it rejects). The bad frames carry valid order fields
    // otherwise, so a server that parsed them would send a result for an `x` id.
    let good = |k: u8| order(b"BAD1", &[b'a', b'0', b'0', b'0', b'0', b'0' + k]);
    let bad = |k: u8| order(b"BAD1", &[b'x', b'0', b'0', b'0', b'0', b'0' + k]).encode();
    let bad_orders: Vec<(&str, Vec<u8>)> = vec![
        ("order of 52 bytes", bad_frame(&bad(1), |p| p.truncate(52))),
        ("order of 54 bytes", bad_frame(&bad(2), |p| p.push(0))),
        ("empty frame on Orders", bad_frame(&[], |_| {})),
        ("order of type 3", bad_frame(&bad(3), |p| p[0] = 3)),
        ("order of type 2", bad_frame(&bad(4), |p| p[0] = 2)),
        ("order of side 0", bad_frame(&bad(5), |p| p[1] = 0)),
        ("order of side 3", bad_frame(&bad(6), |p| p[1] = 3)),
        (
            "a valid quote on Orders (42 bytes)",
            quote_frame(&quote(b"BADQ", 10.0, 10.01)),
        ),
    ];
    let mut framed = order_frame(&good(0));
    want.push((*b"BAD1", good(0).order_id));
    frames_in += 1;
    for (k, (_, f)) in bad_orders.iter().enumerate() {
        framed.extend(f);
        let g = good(k as u8 + 1);
        framed.extend(order_frame(&g));
        want.push((g.symbol, g.order_id));
        frames_in += 2;
        rejected += 1;
    }
    never.extend((1..=6).map(|k| [b'x', b'0', b'0', b'0', b'0', b'0' + k]));
    // BADQ stays never quoted (the quote on Orders was rejected): its order rejects, bid 0.
    let badq = order(b"BADQ", b"q00001");
    framed.extend(order_frame(&badq));
    want.push((badq.symbol, badq.order_id));
    frames_in += 1;
    let mut orders_conn = ms.connect_orders();
    send_in_chunks(&mut orders_conn, &framed, &mut Rng::new(0xBAD)).expect("send the orders");

    // Nbbo: every bad kind, then a valid quote on the same connection. NB1 is quoted narrow
    // first; the bad frames all carry a wide quote for NB1, which must not apply.
    let wide_nb1 = quote(b"NB1 ", 10.0, 20.0).encode();
    let bad_quotes: Vec<(&str, Vec<u8>)> = vec![
        (
            "quote of 41 bytes",
            bad_frame(&wide_nb1, |p| p.truncate(41)),
        ),
        ("quote of 43 bytes", bad_frame(&wide_nb1, |p| p.push(0))),
        ("quote of type 1", bad_frame(&wide_nb1, |p| p[0] = 1)),
        ("quote of type 3", bad_frame(&wide_nb1, |p| p[0] = 3)),
        (
            "a valid order on Nbbo (53 bytes)",
            order_frame(&order(b"NB1 ", b"y00001")),
        ),
        ("empty frame on Nbbo", bad_frame(&[], |_| {})),
    ];
    let mut framed = quote_frame(&quote(b"NB1 ", 10.0, 10.01));
    frames_in += 1;
    for (_, f) in &bad_quotes {
        framed.extend(f);
        frames_in += 1;
        rejected += 1;
    }
    framed.extend(quote_frame(&quote(b"NB2 ", 3.0, 4.0)));
    frames_in += 1;
    framed.extend(sync.frames(b'N'));
    let mut nbbo_conn = ms.connect_nbbo();
    send_in_chunks(&mut nbbo_conn, &framed, &mut Rng::new(0xBAD2)).expect("send the quotes");

    // Oversized headers (101 and 1000 bytes over --max-frame 100): the frames before count, the
    // connection is closed, nothing after counts.
    let mut over_orders = ms.connect_orders();
    let (o1, o2, o3) = (
        order(b"OVR1", b"o00001"),
        order(b"OVR1", b"o00002"),
        order(b"OVR1", b"o00003"),
    );
    let mut framed = [order_frame(&o1), order_frame(&o2)].concat();
    framed.extend(bad_frame(&[b'z'; 101], |_| {}));
    framed.extend(order_frame(&o3));
    want.extend([(o1.symbol, o1.order_id), (o2.symbol, o2.order_id)]);
    never.push(o3.order_id);
    frames_in += 2;
    let _ = over_orders.write_all(&framed);
    expect_closed(&ms, &mut over_orders, "Orders, 101-byte header");

    let mut over_nbbo = ms.connect_nbbo();
    let mut framed = quote_frame(&quote(b"OVQ1", 7.0, 8.0));
    framed.extend(sync.frames(b'O'));
    frames_in += 1;
    framed.extend(1000u32.to_be_bytes());
    framed.extend([b'z'; 60]);
    framed.extend(quote_frame(&quote(b"OVQ1", 7.0, 7.01)));
    let _ = over_nbbo.write_all(&framed);
    expect_closed(&ms, &mut over_nbbo, "Nbbo, 1000-byte header");

    // Connections ending inside a frame: inside an order's payload, inside a quote's header.
    let mut trunc_orders = ms.connect_orders();
    let (t1, t2) = (order(b"TRN1", b"t00001"), order(b"TRN1", b"t00002"));
    let mut framed = order_frame(&t1);
    framed.extend(&order_frame(&t2)[..4 + 30]);
    want.push((t1.symbol, t1.order_id));
    never.push(t2.order_id);
    frames_in += 1;
    let trunc_orders_peer = trunc_orders.local_addr().unwrap();
    trunc_orders.write_all(&framed).expect("send");
    trunc_orders.shutdown(Shutdown::Write).expect("close");

    let mut trunc_nbbo = ms.connect_nbbo();
    let mut framed = quote_frame(&quote(b"TRQ1", 5.0, 6.0));
    framed.extend(sync.frames(b'T'));
    frames_in += 1;
    framed.extend(&quote_frame(&quote(b"TRQ1", 5.0, 5.01))[..2]);
    let trunc_nbbo_peer = trunc_nbbo.local_addr().unwrap();
    trunc_nbbo.write_all(&framed).expect("send");
    trunc_nbbo.shutdown(Shutdown::Write).expect("close");
    for peer in [trunc_orders_peer, trunc_nbbo_peer] {
        let line = ms.server.wait_for_stderr_line(
            |l| l.contains(&peer.to_string()) && l.contains("inside a frame"),
            WAIT,
        );
        assert!(
            line.is_some(),
            "the connection from {peer} that ended inside a frame is not logged; stderr:\n{}",
            ms.server.stderr()
        );
    }

    // The quotes around the bad frames are applied (sync), then orders on the quoted symbols.
    sync.wait_applied(&ms, &sink);
    let checks = [
        (order(b"NB1 ", b"n00001"), None),
        (order(b"NB2 ", b"n00002"), Some((3.0, 4.0))),
        (order(b"OVQ1", b"v00001"), Some((7.0, 8.0))),
        (order(b"TRQ1", b"r00001"), Some((5.0, 6.0))),
    ];
    let mut framed = Vec::new();
    for (o, result) in &checks {
        framed.extend(order_frame(o));
        frames_in += 1;
        if result.is_some() {
            want.push((o.symbol, o.order_id));
        } else {
            never.push(o.order_id);
        }
    }
    orders_conn.write_all(&framed).expect("send the checks");
    frames_in += (sync.quotes_sent + sync.probes_sent) as u64;
    await_results(&ms, &sink, want.len() + sync.probes_sent, "bad input");

    let results: Vec<OrderResult> = real_results(&sink).into_iter().map(|(_, r)| r).collect();
    let mut got: Vec<([u8; 4], [u8; 6])> = results.iter().map(|r| (r.symbol, r.order_id)).collect();
    for id in &never {
        assert!(
            !got.iter().any(|(_, g)| g == id),
            "order {} got a result, but its frame was bad, cut or after an oversized header",
            text(id)
        );
    }
    got.sort();
    want.sort();
    assert_eq!(got, want, "the orders that got a result");
    for r in &results {
        let expected = match &r.symbol {
            b"NB2 " => (3.0, 4.0),
            b"OVQ1" => (7.0, 8.0),
            b"TRQ1" => (5.0, 6.0),
            _ => (0.0, 0.0), // BAD1, BADQ, OVR1, TRN1: never quoted
        };
        assert_eq!(
            (r.bid, r.offer),
            expected,
            "result of {} {}: a bad, oversized or partial quote was applied",
            text(&r.symbol),
            text(&r.order_id)
        );
    }
    // The valid orders around the bad ones kept their order on the one connection.
    let bad1: Vec<[u8; 6]> = results
        .iter()
        .filter(|r| &r.symbol == b"BAD1")
        .map(|r| r.order_id)
        .collect();
    assert_eq!(bad1, (0..=8).map(|k| good(k).order_id).collect::<Vec<_>>());
    let oversized_logged = ms
        .server
        .stderr_lines()
        .iter()
        .any(|l| l.contains("closing connection"));
    assert!(oversized_logged, "the oversized connections are not logged");
    ms.server
        .expect_stderr("rejected", "the rejected frames are logged (rate-limited)");

    drop((orders_conn, nbbo_conn));
    let m = ms.server.stop_gracefully();
    let stderr = ms.server.stderr();
    assert_eq!(
        m["frames_rejected"], rejected,
        "frames_rejected; stderr:\n{stderr}"
    );
    assert_eq!(
        rejected,
        (bad_orders.len() + bad_quotes.len()) as u64,
        "{:?}",
        bad_orders
            .iter()
            .chain(&bad_quotes)
            .map(|(w, _)| w)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        m["connections_oversized"], 2,
        "connections_oversized; stderr:\n{stderr}"
    );
    assert_eq!(
        m["connections_truncated"], 2,
        "connections_truncated; stderr:\n{stderr}"
    );
    assert_eq!(
        m["frames_in"], frames_in,
        "frames_in (valid or not); stderr:\n{stderr}"
    );
    assert_eq!(
        m["records_in"],
        frames_in - rejected,
        "records_in; stderr:\n{stderr}"
    );
    assert_eq!(m["outputs"], sink.count() as u64, "outputs");
}

// 3. Several chunked connections per source against the sequential reference.

#[test]
fn chunked_connections_match_the_reference_in_order_per_symbol() {
    const ORDER_CONNS: usize = 3;
    const NBBO_CONNS: usize = 2;
    let opts = GenOptions {
        symbols: 60,
        orders: 6_000,
        quotes: 900,
        seed: 0x5EED,
    };
    let (orders_file, nbbo_file) = generate(&opts).expect("generate");
    let order_payloads = split_frames(&orders_file).unwrap();
    let nbbo_payloads = split_frames(&nbbo_file).unwrap();
    let expected = expected_results(&nbbo_payloads, &order_payloads);
    let states = final_states(&nbbo_payloads);
    assert!(
        expected.len() > 1000 && expected.len() < 5000,
        "{} results expected",
        expected.len()
    );

    let sink = ResultSink::start();
    let ms = MarketServer::start(sink.addr(), &[]);
    let mut sync = QuoteSync::new();

    // Quotes: every symbol's quotes on one Nbbo connection, in file order (so the last one
    // applied is the reference's), each connection ending with its sync quotes.
    let mut quote_streams = vec![Vec::new(); NBBO_CONNS];
    for p in &nbbo_payloads {
        let q = Nbbo::parse(p).unwrap();
        let c = q.symbol.iter().map(|&b| b as usize).sum::<usize>() % NBBO_CONNS;
        quote_streams[c].extend(quote_frame(&q));
    }
    for (c, s) in quote_streams.iter_mut().enumerate() {
        s.extend(sync.frames(b'a' + c as u8));
    }
    // Orders: each on a random one of the connections.
    let mut rng = Rng::new(0x0D3);
    let mut conn_orders: Vec<Vec<Order>> = vec![Vec::new(); ORDER_CONNS];
    for p in &order_payloads {
        conn_orders[rng.below(ORDER_CONNS)].push(Order::parse(p).unwrap());
    }
    let order_streams: Vec<Vec<u8>> = conn_orders
        .iter()
        .map(|os| os.iter().flat_map(order_frame).collect())
        .collect();
    let splits: usize = quote_streams
        .iter()
        .chain(&order_streams)
        .enumerate()
        .map(|(i, s)| header_splits(s, &chunk_cuts(s, &mut Rng::new(0xC0 + i as u64))))
        .sum();
    assert!(splits >= 20, "only {splits} header splits planned");

    let send_all = |streams: &[Vec<u8>], conns: Vec<TcpStream>, seed0: usize| {
        thread::scope(|s| {
            let senders: Vec<_> = streams
                .iter()
                .zip(conns)
                .enumerate()
                .map(|(i, (framed, mut conn))| {
                    s.spawn(move || {
                        send_in_chunks(&mut conn, framed, &mut Rng::new(0xC0 + (seed0 + i) as u64))
                            .map_err(|e| format!("connection {i}: {e}"))
                    })
                })
                .collect();
            for h in senders {
                if let Err(e) = h.join().expect("a sender panicked") {
                    panic!("{e}; stderr:\n{}", ms.server.stderr());
                }
            }
        })
    };
    let t0 = now_ns();
    let started = Instant::now();
    send_all(
        &quote_streams,
        (0..NBBO_CONNS).map(|_| ms.connect_nbbo()).collect(),
        0,
    );
    sync.wait_applied(&ms, &sink);
    let probes = sink.count();
    send_all(
        &order_streams,
        (0..ORDER_CONNS).map(|_| ms.connect_orders()).collect(),
        NBBO_CONNS,
    );
    await_results(&ms, &sink, probes + expected.len(), "chunked connections");
    let t1 = now_ns();

    let results = real_results(&sink);
    let sink_conns: HashSet<usize> = results.iter().map(|(c, _)| *c).collect();
    assert!(
        sink_conns.len() <= 2,
        "{} sink connections for 2 cores",
        sink_conns.len()
    );
    // The set equals the reference.
    let mut got: Vec<([u8; 4], [u8; 6])> = results
        .iter()
        .map(|(_, r)| (r.symbol, r.order_id))
        .collect();
    let mut want = expected.clone();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "results received vs the reference");
    assert_eq!(
        got, want,
        "the orders that got a result differ from the reference"
    );
    // Fields, and where each order was sent.
    let mut sent_on: HashMap<[u8; 6], (usize, usize)> = HashMap::new();
    for (c, os) in conn_orders.iter().enumerate() {
        for (i, o) in os.iter().enumerate() {
            sent_on.insert(o.order_id, (c, i));
        }
    }
    let mut owner: HashMap<[u8; 4], usize> = HashMap::new();
    let mut last: HashMap<([u8; 4], usize), usize> = HashMap::new();
    for (sc, r) in &results {
        let (c, i) = sent_on[&r.order_id];
        assert_result_fields(r, &conn_orders[c][i], &states[&r.symbol], (t0, t1));
        let o = *owner.entry(r.symbol).or_insert(*sc);
        assert_eq!(
            o,
            *sc,
            "symbol {}: results on sink connections {o} and {sc}",
            text(&r.symbol)
        );
        // In the order of that symbol's orders on their Orders connection.
        if let Some(prev) = last.insert((r.symbol, c), i) {
            assert!(
                prev < i,
                "symbol {}: the result of order #{i} on Orders connection {c} came after #{prev}",
                text(&r.symbol)
            );
        }
    }
    eprintln!(
        "{} orders on {ORDER_CONNS} connections, {} quotes on {NBBO_CONNS}, {splits} header \
         splits, {} results over {} sink connections in {:.2?}",
        opts.orders,
        opts.quotes,
        results.len(),
        sink_conns.len(),
        started.elapsed()
    );
}

// 4. SIGTERM while orders flow.

/// Symbols of the flood: 28 wide, 12 narrow.
fn flood_symbols() -> Vec<([u8; 4], bool)> {
    (0..40)
        .map(|k| {
            let name = [b'F', b'A' + (k / 26) as u8, b'A' + (k % 26) as u8, b' '];
            (name, k % 10 < 7)
        })
        .collect()
}

/// Order `i` of flood connection `c`: a symbol drawn from `i` and `c`, id `c` then `i` in base 36.
fn flood_order(symbols: &[([u8; 4], bool)], c: usize, i: u64) -> Order {
    let mix = (i ^ (c as u64).rotate_left(32))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29);
    let mut id = [b'0'; 6];
    id[0] = b'a' + c as u8;
    let mut n = i;
    for b in id[1..].iter_mut().rev() {
        *b = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(n % 36) as usize];
        n /= 36;
    }
    assert_eq!(n, 0, "order index {i} does not fit in 5 base-36 digits");
    Order {
        side: if i.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        },
        account: i as u32,
        order_id: id,
        symbol: symbols[(mix % symbols.len() as u64) as usize].0,
        qty: (i % 1000) as f64,
        price: 1.0 + c as f64,
        transact_time: *b"20150818-14:31:00.000",
    }
}

/// The index of a flood order id, and its connection.
fn flood_index(id: &[u8; 6]) -> (usize, u64) {
    let digits = &id[1..];
    let i = digits.iter().fold(0u64, |n, &b| {
        let d = if b.is_ascii_digit() {
            b - b'0'
        } else {
            b - b'A' + 10
        };
        n * 36 + u64::from(d)
    });
    ((id[0] - b'a') as usize, i)
}

#[test]
fn sigterm_while_orders_flow_delivers_every_result_without_gap() {
    const CLIENTS: usize = 3;
    const BATCH: u64 = 64;
    let sink = ResultSink::start();
    let mut ms = MarketServer::start(sink.addr(), &[]);
    let mut sync = QuoteSync::new();
    let symbols = flood_symbols();
    let mut states: HashMap<[u8; 4], SymbolState> = HashMap::new();
    let mut framed = Vec::new();
    for (k, (sym, wide)) in symbols.iter().enumerate() {
        let bid = 10.0 + k as f64;
        let q = quote(sym, bid, if *wide { bid + 0.5 } else { bid + 0.01 });
        framed.extend(quote_frame(&q));
        states.entry(*sym).or_default().apply_quote(&q);
        assert_eq!(states[sym].reject, *wide);
    }
    framed.extend(sync.frames(b'S'));
    let quotes = symbols.len() + sync.quotes_sent;
    let mut nbbo = ms.connect_nbbo();
    nbbo.write_all(&framed).expect("send the quotes");
    sync.wait_applied(&ms, &sink);
    let probe_results = sink.count();

    // The flood: each client writes its orders 0, 1, 2, … in batches, counting whole orders
    // written, until its connection fails after the signal (the server stops and exits).
    let signalled = Arc::new(AtomicBool::new(false));
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let streams: Vec<TcpStream> = (0..CLIENTS).map(|_| ms.connect_orders()).collect();
    let clones: Vec<TcpStream> = streams.iter().map(|s| s.try_clone().unwrap()).collect();
    let t0 = now_ns();
    let clients: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            let (signalled, sent, symbols) = (signalled.clone(), sent.clone(), symbols.clone());
            thread::spawn(move || -> Result<(), String> {
                let mut i = 0u64;
                loop {
                    let batch: Vec<u8> = (i..i + BATCH)
                        .flat_map(|j| order_frame(&flood_order(&symbols, c, j)))
                        .collect();
                    // A write cut short counts only the orders known to be written whole.
                    let mut written = 0;
                    while written < batch.len() {
                        match s.write(&batch[written..]) {
                            Ok(0) => return Ok(()),
                            Ok(n) => {
                                written += n;
                                sent[c].store(i + (written / 57) as u64, SeqCst);
                            }
                            Err(_) if signalled.load(SeqCst) => return Ok(()),
                            Err(e) => return Err(format!("write failed before the signal: {e}")),
                        }
                    }
                    i += BATCH;
                }
            })
        })
        .collect();
    let flowing = sink.wait_for(probe_results + 5_000, WAIT);
    assert!(
        flowing,
        "the flood's results do not flow; stderr:\n{}",
        ms.server.stderr()
    );
    let sent_at_signal: Vec<u64> = sent.iter().map(|s| s.load(SeqCst)).collect();
    signalled.store(true, SeqCst);
    let signal_time = Instant::now();
    ms.server.signal("TERM");
    let status = ms.server.wait_exit(WAIT);
    let took = signal_time.elapsed();
    let still_writing = clients.iter().filter(|h| !h.is_finished()).count();
    for s in &clones {
        let _ = s.shutdown(Shutdown::Both);
    }
    for (c, h) in clients.into_iter().enumerate() {
        if let Err(e) = h.join().expect("a client panicked") {
            panic!("client {c}: {e}; stderr:\n{}", ms.server.stderr());
        }
    }
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM while orders flow should exit 0, got {status}; stderr:\n{}",
        ms.server.stderr()
    );
    let m = final_metrics(&ms.server).expect("the stopped line");
    let sent: Vec<u64> = sent.iter().map(|s| s.load(SeqCst)).collect();
    // Every output the server made reaches the sink.
    let outputs = m["outputs"] as usize;
    let arrived = sink.wait_for(outputs, WAIT);
    thread::sleep(SETTLE);
    assert!(
        arrived && sink.count() == outputs,
        "the sink got {} results of the {outputs} the server made",
        sink.count()
    );
    assert_eq!(sink.partial_bytes(), 0, "a result frame was cut");
    assert_eq!(m["frames_rejected"], 0);
    let t1 = now_ns();

    // Per client: the results are exactly the rejecting orders among its first K_c, in order
    // per symbol, on one sink connection per symbol.
    let results = real_results(&sink);
    let mut delivered: Vec<Vec<u64>> = vec![Vec::new(); CLIENTS];
    let mut owner: HashMap<[u8; 4], usize> = HashMap::new();
    let mut last: HashMap<([u8; 4], usize), u64> = HashMap::new();
    for (sc, r) in &results {
        let (c, i) = flood_index(&r.order_id);
        assert!(c < CLIENTS, "unknown order id {}", text(&r.order_id));
        let o = flood_order(&symbols, c, i);
        assert_result_fields(r, &o, &states[&o.symbol], (t0, t1));
        assert_eq!(
            *owner.entry(r.symbol).or_insert(*sc),
            *sc,
            "{}",
            text(&r.symbol)
        );
        if let Some(prev) = last.insert((r.symbol, c), i) {
            assert!(
                prev < i,
                "{}: client {c}'s order {i} after {prev}",
                text(&r.symbol)
            );
        }
        delivered[c].push(i);
    }
    let mut prefix_total = 0;
    let mut slack_total = 0;
    for c in 0..CLIENTS {
        let mut d = delivered[c].clone();
        d.sort_unstable();
        let k = d.last().map_or(0, |i| i + 1);
        let want: Vec<u64> = (0..k)
            .filter(|&i| states[&flood_order(&symbols, c, i).symbol].reject)
            .collect();
        let missing: Vec<u64> = want
            .iter()
            .filter(|i| d.binary_search(i).is_err())
            .copied()
            .collect();
        assert!(
            missing.is_empty() && d.len() == want.len(),
            "client {c}: results of {} orders before its last delivered one (#{}) are missing, \
             the first #{:?}; a gap",
            missing.len(),
            k.saturating_sub(1),
            missing.first()
        );
        assert!(k <= sent[c], "client {c}: a result for an order never sent");
        // Orders after K_c that were received get no result only if none of them rejects.
        let slack = (k..sent[c])
            .take_while(|&i| !states[&flood_order(&symbols, c, i).symbol].reject)
            .count() as u64;
        prefix_total += k;
        slack_total += slack;
    }
    let received = m["frames_in"] - (quotes + sync.probes_sent) as u64;
    assert!(
        prefix_total <= received && received <= prefix_total + slack_total,
        "the server received {received} orders, but the results delivered cover the first \
         {prefix_total} orders of the clients (plus {slack_total} accepted ones after them): \
         results of received orders are missing; stderr:\n{}",
        ms.server.stderr()
    );
    eprintln!(
        "SIGTERM while {CLIENTS} clients flood: exit 0 after {took:.2?}; sent {sent_at_signal:?} \
         at the signal, {sent:?} in all ({still_writing} clients still writing at the exit); \
         {received} orders received, {} results delivered (the first {prefix_total} orders \
         of the clients, {slack_total} accepted after them)",
        results.len()
    );
    drop(nbbo);
}
