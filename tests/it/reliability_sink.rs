//! Sink failures: the receiver is not up at the start, goes away in the middle of the stream and
//! comes back. The server must retry with capped backoff, log each change of state once (not
//! once per attempt), hold the output it has not written (bounded by `--sink-buffer`) while
//! slowing its sources, and resume without dropping any of it. Output it had already written
//! into the connection that broke may be lost: that, and only that, must be counted in the
//! metrics and named in the log, to the byte.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bettong::corpus::{frame_lines, split_frames, BILL_OF_RIGHTS};

use crate::support::{
    final_metrics, frame_all, free_addr, number_after, reference_counts, Flood, Pace, Rng, Server,
    SinkConn, TestSink, WAIT,
};

/// Output held per core while the sink is away, in this test (the default is 4 MiB).
const SINK_BUFFER: usize = 64 * 1024;
/// Input sent while the receiver goes away: more than the kernel's socket buffers (some 10 MiB
/// on loopback) and the server's io_uring receive buffers (4 MiB per core) can hold, so the
/// sender can only finish if the server keeps reading.
const STREAM_BYTES: usize = 32 << 20;

/// Input of the stream during which the receiver goes away: long words from a vocabulary of 2000.
fn stream_input() -> Vec<u8> {
    let mut rng = Rng::new(0x5111C);
    let mut payloads = Vec::new();
    let mut size = 0;
    while size < STREAM_BYTES {
        let words: Vec<String> = (0..rng.range(20, 80))
            .map(|_| format!("sinkfailure-{:04}", rng.below(2000)))
            .collect();
        let msg = words.join(" ");
        size += msg.len() + 4;
        payloads.push(msg);
    }
    frame_all(&payloads)
}

/// Log lines about the sink, per core: how many of each kind.
#[derive(Debug, Default)]
struct SinkLog {
    /// Per core, its sink events in order: `C` cannot connect, `U` connected, `B` broke.
    events: BTreeMap<usize, String>,
    cannot_connect: BTreeMap<usize, usize>,
    broke: BTreeMap<usize, usize>,
    /// The sink connection of each local address: its core, and the bytes of whole records the
    /// server says it wrote into it if it broke.
    conns: HashMap<SocketAddr, (usize, Option<u64>)>,
}

fn core_of(line: &str) -> Option<usize> {
    number_after(line, "core ").map(|c| c as usize)
}

fn sink_log(server: &Server, sink: SocketAddr) -> SinkLog {
    let mut log = SinkLog::default();
    let sink = sink.to_string();
    for line in server.stderr_lines() {
        if !line.contains(&sink) {
            continue;
        }
        let Some(core) = core_of(&line) else { continue };
        if line.contains("cannot connect to sink") {
            *log.cannot_connect.entry(core).or_default() += 1;
            log.events.entry(core).or_default().push('C');
        } else if line.contains("connected to sink") || line.contains("connected again from") {
            log.events.entry(core).or_default().push('U');
            let local = line
                .split(" from ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|a| a.trim_end_matches(|c: char| !c.is_ascii_digit()));
            if let Some(local) = local.and_then(|a| a.parse().ok()) {
                log.conns.insert(local, (core, None));
            }
        } else if line.contains(" broke (") {
            *log.broke.entry(core).or_default() += 1;
            log.events.entry(core).or_default().push('B');
            let local = line
                .split("connection ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            let written = number_after(&line, "after writing ");
            if let (Some(local), Some(w)) = (local, written) {
                log.conns.insert(local, (core, Some(w)));
            }
        }
    }
    log
}

/// Checks what arrived on every sink connection against the contract as it stands when a
/// connection may break: for every word, counts rise by exactly 1 within a connection and never
/// go back; a jump happens only right after a connection the server reported broken; the bytes
/// of the lines that never arrived add up exactly to what the server reported writing into the
/// broken connections beyond what the receiver read from them; and the last count of every word
/// is its expected total. Returns the number of lines lost.
fn check_across_breaks(
    conns: &[SinkConn],
    log: &SinkLog,
    expected: &HashMap<String, u64>,
    stderr: &str,
) -> u64 {
    // Per word: its core, and the last (connection, count) seen.
    let mut last: HashMap<String, (usize, usize, u64)> = HashMap::new();
    let mut missing_bytes = 0u64;
    let mut missing_lines = 0u64;
    let mut unread_bytes = 0u64;
    let mut cut_tail_conns = 0;
    let mut received = std::collections::HashSet::new();
    for (i, c) in conns.iter().enumerate() {
        let peer = c.peer.expect("the sink records each connection's peer");
        let Some(&(core, broke)) = log.conns.get(&peer) else {
            panic!("sink connection {i} from {peer} is not named in the server's log:\n{stderr}");
        };
        let whole = c
            .data
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        if whole < c.data.len() {
            assert!(
                broke.is_some(),
                "sink connection {i} from {peer} ended inside a line but the server does not say \
                 it broke:\n{stderr}"
            );
            cut_tail_conns += 1;
        }
        if let Some(written) = broke {
            assert!(
                written >= whole as u64,
                "the server says it wrote {written} bytes of whole records into {peer}, but the \
                 receiver read {whole} bytes of whole lines from it"
            );
            unread_bytes += written - whole as u64;
        }
        received.insert(peer);
        for line in c.data[..whole]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            let text = std::str::from_utf8(line).expect("output lines are UTF-8");
            let (word, n) = text.rsplit_once(" => ").expect("a `word => count` line");
            let n: u64 = n.parse().expect("a count");
            match last.get(word) {
                None => {
                    assert!(
                        n == 1 || conns_broke_before(conns, log, core, i),
                        "{word:?} starts at {n} on connection {i} with no broken connection \
                         before it"
                    );
                    for k in 1..n {
                        missing_bytes += line_len(word, k);
                        missing_lines += 1;
                    }
                }
                Some(&(wcore, conn, prev)) => {
                    assert_eq!(
                        wcore, core,
                        "{word:?} moved from core {wcore}'s connection to core {core}'s"
                    );
                    assert!(n > prev, "{word:?} went from {prev} back to {n}");
                    if n != prev + 1 {
                        assert!(
                            conn != i && broken_between(conns, log, core, conn, i),
                            "{word:?} jumps from {prev} to {n} (connections {conn} to {i}) \
                             without a broken connection in between"
                        );
                        for k in prev + 1..n {
                            missing_bytes += line_len(word, k);
                            missing_lines += 1;
                        }
                    }
                }
            }
            last.insert(word.to_string(), (core, i, n));
        }
    }
    // A connection the server made while the receiver was going away may never have been
    // accepted: all it was written is unread.
    for (local, &(_, broke)) in &log.conns {
        if let (false, Some(written)) = (received.contains(local), broke) {
            unread_bytes += written;
        }
    }
    let got: HashMap<String, u64> = last.iter().map(|(w, &(_, _, n))| (w.clone(), n)).collect();
    let diff = crate::support::diff_counts(expected, &got);
    assert!(diff.is_empty(), "last counts differ: {diff}");
    assert_eq!(
        missing_bytes, unread_bytes,
        "the lines that never arrived ({missing_lines} lines, {missing_bytes} bytes) are not \
         exactly the bytes written into broken connections that the receiver did not read \
         ({unread_bytes}); {cut_tail_conns} connections ended inside a line; the server's \
         stderr:\n{stderr}"
    );
    missing_lines
}

/// The highest count of each word received so far, updated from the new bytes of each connection.
#[derive(Default)]
struct MaxCounts {
    /// Bytes of each connection already looked at (up to its last whole line).
    seen: Vec<usize>,
    max: HashMap<String, u64>,
}

impl MaxCounts {
    /// Looks at what arrived since the last call; true once every word of `expected` reached its
    /// expected count.
    fn update(&mut self, conns: &[SinkConn], expected: &HashMap<String, u64>) -> bool {
        self.seen.resize(conns.len(), 0);
        for (c, from) in conns.iter().zip(self.seen.iter_mut()) {
            let whole = c
                .data
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            for line in c.data[(*from).min(whole)..whole].split(|&b| b == b'\n') {
                let Ok(text) = std::str::from_utf8(line) else {
                    continue;
                };
                if let Some((w, n)) = text.rsplit_once(" => ") {
                    let n: u64 = n.parse().unwrap_or(0);
                    let m = self.max.entry(w.to_string()).or_default();
                    *m = (*m).max(n);
                }
            }
            *from = whole.max(*from);
        }
        expected.iter().all(|(w, &n)| self.max.get(w) == Some(&n))
    }
}

fn line_len(word: &str, count: u64) -> u64 {
    (word.len() + " => ".len() + count.to_string().len() + 1) as u64
}

fn core_conns<'a>(
    conns: &'a [SinkConn],
    log: &'a SinkLog,
    core: usize,
) -> impl Iterator<Item = (usize, Option<u64>)> + 'a {
    conns.iter().enumerate().filter_map(move |(i, c)| {
        let (k, broke) = log.conns.get(&c.peer?)?;
        (*k == core).then_some((i, *broke))
    })
}

fn conns_broke_before(conns: &[SinkConn], log: &SinkLog, core: usize, i: usize) -> bool {
    core_conns(conns, log, core).any(|(j, broke)| j < i && broke.is_some())
}

fn broken_between(conns: &[SinkConn], log: &SinkLog, core: usize, from: usize, to: usize) -> bool {
    core_conns(conns, log, core).any(|(j, broke)| from <= j && j < to && broke.is_some())
}

#[test]
fn sink_down_at_start_then_gone_mid_stream_then_back() {
    let sink_addr = free_addr();
    let sink_buffer = SINK_BUFFER.to_string();
    let mut server = Server::serve("127.0.0.1:0", sink_addr, &["--sink-buffer", &sink_buffer]);

    // 1. The sink is not up: the server says so once per core, however often it retries.
    let bill = frame_lines(BILL_OF_RIGHTS);
    let mut first = server.connect();
    for _ in 0..20 {
        first.write_all(&bill).expect("send the Bill of Rights");
    }
    for core in 0..2 {
        server.expect_stderr(
            &format!("core {core}: cannot connect to sink {sink_addr}"),
            "the sink is down at the start",
        );
    }
    thread::sleep(Duration::from_millis(1500));
    let down = sink_log(&server, sink_addr);
    assert_eq!(
        down.cannot_connect.values().copied().collect::<Vec<_>>(),
        [1, 1],
        "each core says once that it cannot connect, not once per attempt; stderr:\n{}",
        server.stderr()
    );

    // 2. The sink comes up: everything held arrives.
    let sink = TestSink::start(sink_addr, false, true);
    let bill_lines = 20 * 482;
    assert!(
        sink.wait_for_lines(bill_lines, WAIT),
        "{} of {bill_lines} lines held for the late sink arrived; stderr:\n{}",
        sink.lines(),
        server.stderr()
    );

    // 3. The sink goes away in the middle of a stream.
    let stream = Arc::new(stream_input());
    let stream_lines = reference_counts(split_frames(&stream).expect("whole frames"))
        .values()
        .sum::<u64>();
    let flood = Flood::start(vec![server.connect()], vec![stream.clone()], 1, 64 * 1024);
    let mid = bill_lines + stream_lines / 20;
    assert!(
        sink.wait_for_lines(mid, WAIT),
        "the stream's output does not flow; stderr:\n{}",
        server.stderr()
    );
    // It stops reading first, so the server's writes are cut short wherever the socket buffer
    // fills, mostly inside a line: the break then cuts a record in two.
    sink.set_pace(Pace::Stalled);
    thread::sleep(Duration::from_millis(500));
    sink.go_away();
    sink.set_pace(Pace::Full);
    let gone_at = Instant::now();
    for core in 0..2 {
        server.expect_stderr(
            &format!("core {core}: connection "),
            "each core's sink connection breaks",
        );
    }
    // While it is away the server holds at most --sink-buffer per core and stops reading: the
    // sender stalls with much of its 32 MiB unsent.
    thread::sleep(Duration::from_millis(1000));
    let sent_then = flood.sent()[0];
    thread::sleep(Duration::from_millis(500));
    let sent_now = flood.sent()[0];
    assert!(
        sent_now == sent_then && sent_now < STREAM_BYTES as u64 * 3 / 4,
        "with the sink away the sender kept going ({sent_then} then {sent_now} of \
         {STREAM_BYTES} bytes sent): the server did not slow its sources; stderr:\n{}",
        server.stderr()
    );

    // 4. The sink comes back: the held output and the rest of the stream arrive.
    sink.come_back();
    let away_for = gone_at.elapsed();
    flood.join(WAIT, &server);
    // A last message with every word once, so that every word's final count shows.
    let mut words: Vec<String> = reference_counts(
        split_frames(&bill)
            .expect("whole frames")
            .into_iter()
            .chain(split_frames(&stream).expect("whole frames")),
    )
    .into_keys()
    .collect();
    words.sort();
    let last = frame_all(&[words.join(" ")]);
    first.write_all(&last).expect("send the last message");
    let mut payloads: Vec<&[u8]> = Vec::new();
    for _ in 0..20 {
        payloads.extend(split_frames(&bill).expect("whole frames"));
    }
    payloads.extend(split_frames(&stream).expect("whole frames"));
    payloads.extend(split_frames(&last).expect("whole frames"));
    let expected = reference_counts(payloads);
    let mut progress = MaxCounts::default();
    let deadline = Instant::now() + WAIT;
    while !progress.update(&sink.conns(), &expected) {
        assert!(
            Instant::now() < deadline,
            "not every word's final count arrived within {WAIT:?}; stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // 5. Stop: exits 0 with nothing dropped, and the log and metrics account for every byte.
    drop(first);
    server.signal("TERM");
    let status = server.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
    let conns = sink.conns();
    let log = sink_log(&server, sink_addr);
    let stderr = server.stderr();
    let lost = check_across_breaks(&conns, &log, &expected, &stderr);
    let at_risk: u64 = log.conns.values().filter_map(|(_, w)| *w).sum();
    let metrics = final_metrics(&server).expect("the server logs its final metrics");
    assert_eq!(
        metrics["sink_bytes_at_risk"], at_risk,
        "sink_bytes_at_risk is not what the log names"
    );
    assert_eq!(metrics["sink_bytes_dropped"], 0, "nothing held was dropped");
    // Each change once: per core, the log goes `cannot connect` (once per outage, however many
    // attempts), `connected`, `broke`, … : never the same line twice in a row, one `connected`
    // per connection, every connection but the last one broken; while the attempts were many.
    for core in 0..2 {
        let events = log.events.get(&core).cloned().unwrap_or_default();
        let count = |c| events.chars().filter(|&e| e == c).count();
        assert!(
            count('B') >= 1,
            "core {core}'s connection did not break:\n{stderr}"
        );
        assert!(
            events.starts_with('C')
                && !events.contains("CC")
                && !events.contains("UU")
                && !events.contains("BB")
                && !events.contains("CB")
                && count('U') == count('B') + 1
                && events.ends_with('U'),
            "core {core}: its sink events {events:?} (C cannot connect, U connected, B broke) \
             are not one line per change:\n{stderr}"
        );
    }
    let attempts = metrics["sink_connect_failures"];
    let said: usize = log.cannot_connect.values().sum();
    assert!(
        attempts > 2 * said as u64,
        "{attempts} failed attempts for {said} log lines: the retries were not exercised"
    );
    let cut = stderr.lines().filter(|l| l.contains("cut short")).count();
    eprintln!(
        "sink away {away_for:.2?}: {attempts} failed connection attempts, {said} `cannot \
         connect` lines; {} connections broke with {at_risk} bytes written into them ({cut} \
         cutting a line, resent whole), {lost} lines lost (exactly the unread part); sender \
         stalled at {sent_now} of {STREAM_BYTES} bytes; {} sink connections",
        log.broke.values().sum::<usize>(),
        conns.len()
    );
}
