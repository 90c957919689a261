//! Integration tests of the general engine: typed records with any key and value, several
//! sources merged into one state step, chained state steps that cross cores again at each
//! `key_by`, and checkpoints that restore every step of a chain.
//!
//! Each compares the engine's output, on two cores, with the same computation done
//! sequentially in the test, so a record lost, duplicated, misrouted or applied out of order
//! on the way between cores shows up as a difference.

use std::collections::{BTreeMap, HashMap};

use bettong_engine::{
    online_cpus, Checkpoints, DecodeError, Engine, FileSourceConfig, MemorySource, Pipeline,
    SinkConfig, SourceConfig,
};

fn cores() -> usize {
    online_cpus().len().min(2)
}

/// Frames "KEY VALUE" with integer keys and text values, in a fixed pseudo-random order.
fn keyed_frames(n: usize) -> Vec<String> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{} v{i}", x % 97)
        })
        .collect()
}

fn parse_line(frame: &[u8]) -> Result<(u64, String), DecodeError> {
    let text = std::str::from_utf8(frame)?;
    let (k, v) = text
        .split_once(' ')
        .ok_or(DecodeError::new("expected 'KEY VALUE'"))?;
    let k = k
        .parse()
        .map_err(|_| DecodeError::new("the key is not an integer"))?;
    Ok((k, v.to_string()))
}

#[test]
fn typed_records_with_integer_keys_and_owned_values_keep_per_key_order() {
    let frames = keyed_frames(20_000);
    let pipeline = Pipeline::decode(parse_line)
        .key_by(|(k, v): (u64, String)| (k, v))
        .state(|_k: &u64, seen: &mut Vec<String>, v: String| {
            seen.push(v.clone());
            Some((seen.len(), v))
        })
        .encode(|k, (n, v), out| out.extend_from_slice(format!("{k} {n} {v}\n").as_bytes()));
    let mut src = frames.clone();
    src.push("not a record".into());
    let report = Engine::new()
        .cores(cores())
        .run(
            pipeline,
            SourceConfig::Memory(MemorySource::from_frames(&src)),
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(
        report.total().frames_rejected,
        1,
        "the bad frame is rejected"
    );
    // A memory source feeds each core a contiguous share of the frames (cut at the first frame
    // boundary at or after each equal byte split). Per key, the values read by one core must
    // be applied in the order it read them, wherever the key's owner is.
    let framed_len: usize = src.iter().map(|f| f.len() + 4).sum();
    let n = cores();
    let mut share_of = Vec::with_capacity(frames.len());
    let (mut pos, mut share) = (0usize, 0usize);
    for f in &frames {
        while share + 1 < n && pos >= framed_len * (share + 1) / n {
            share += 1;
        }
        share_of.push(share);
        pos += f.len() + 4;
    }
    let mut want: HashMap<u64, Vec<String>> = HashMap::new();
    let mut share_by_value: HashMap<String, usize> = HashMap::new();
    for (f, s) in frames.iter().zip(&share_of) {
        let (k, v) = parse_line(f.as_bytes()).unwrap();
        share_by_value.insert(v.clone(), *s);
        want.entry(k).or_default().push(v);
    }
    let mut got: HashMap<u64, Vec<String>> = HashMap::new();
    for line in report.output_lines() {
        let mut parts = line.split(' ');
        let k: u64 = parts.next().unwrap().parse().unwrap();
        let count: usize = parts.next().unwrap().parse().unwrap();
        let v = parts.next().unwrap().to_string();
        let list = got.entry(k).or_default();
        assert_eq!(
            list.len() + 1,
            count,
            "key {k}: the state saw its values in output order"
        );
        list.push(v);
    }
    let index = |v: &str| v[1..].parse::<usize>().unwrap();
    for (k, values) in &got {
        for s in 0..n {
            let seq: Vec<usize> = values
                .iter()
                .filter(|v| share_by_value[v.as_str()] == s)
                .map(|v| index(v))
                .collect();
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "key {k}: values read by core {s} were applied out of order: {seq:?}"
            );
        }
    }
    for (k, values) in want.iter_mut() {
        let mut g = got.remove(k).unwrap_or_default();
        g.sort();
        values.sort();
        assert_eq!(&g, values, "key {k}: values lost or duplicated");
    }
    assert!(
        got.is_empty(),
        "outputs for keys never sent: {:?}",
        got.keys()
    );
}

/// What the merged sources route: two record types into one state.
#[derive(Debug, Clone)]
enum Event {
    Deposit(i64),
    Rate(i64),
}

#[test]
fn merged_sources_with_their_own_decoders_feed_one_state_step() {
    // Source 0: text "account amount"; source 1: binary [account u32 BE][percent i8].
    let deposits: Vec<String> = (0..3_000)
        .map(|i| format!("{} {}", i % 50, i % 7))
        .collect();
    let rates: Vec<[u8; 5]> = (0..50u32)
        .map(|a| {
            let b = a.to_be_bytes();
            [b[0], b[1], b[2], b[3], (a % 5) as u8]
        })
        .collect();
    let text = Pipeline::decode(|f: &[u8]| {
        let (a, x) = std::str::from_utf8(f)?
            .split_once(' ')
            .ok_or(DecodeError::new("expected 'account amount'"))?;
        Ok((a.parse::<u32>().unwrap_or(0), x.parse::<i64>().unwrap_or(0)))
    })
    .key_by(|(a, x): (u32, i64)| (a, Event::Deposit(x)));
    let binary = Pipeline::decode(|f: &[u8]| match f {
        [a, b, c, d, p] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), *p as i64)),
        _ => Err(DecodeError::new("a rate frame is 5 bytes").with_value(f.len() as u64)),
    })
    .key_by(|(a, p): (u32, i64)| (a, Event::Rate(p)));
    let pipeline = text
        .merge(binary)
        .state(|_a: &u32, s: &mut (i64, i64), e: Event| {
            match e {
                Event::Deposit(x) => s.0 += x,
                Event::Rate(p) => s.1 = p,
            }
            Some(*s)
        })
        .encode(|a, (sum, rate), out| {
            out.extend_from_slice(format!("{a} {sum} {rate}\n").as_bytes())
        });
    let report = Engine::new()
        .cores(cores())
        .run(
            pipeline,
            [
                SourceConfig::Memory(MemorySource::from_frames(&deposits)),
                SourceConfig::Memory(MemorySource::from_frames(&rates)),
            ],
            SinkConfig::Memory,
        )
        .unwrap();
    assert_eq!(report.total().frames_in, 3_050);
    assert_eq!(
        report.output_lines().count(),
        3_050,
        "one output per record"
    );
    // The last output per account has the full sum and its rate.
    let mut last: BTreeMap<u32, (i64, i64, usize)> = BTreeMap::new();
    for line in report.output_lines() {
        let v: Vec<i64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let e = last.entry(v[0] as u32).or_insert((0, 0, 0));
        assert!(v[1] >= e.0, "account {}: sum went down", v[0]);
        *e = (v[1], v[2], e.2 + 1);
    }
    for a in 0..50u32 {
        let want: i64 = (0..3_000)
            .filter(|i| i % 50 == a as i64)
            .map(|i| i % 7)
            .sum();
        let (sum, rate, n) = last[&a];
        assert_eq!(sum, want, "account {a}");
        assert_eq!(rate, (a % 5) as i64, "account {a}");
        assert_eq!(n, 61, "account {a}: 60 deposits and 1 rate");
    }
    // A wrong number of sources is refused before anything runs.
    let err = Engine::new()
        .cores(1)
        .run(
            Pipeline::decode(|f: &[u8]| Ok(f.len()))
                .key_by(|n: usize| (n, ()))
                .merge(Pipeline::decode(|f: &[u8]| Ok(f.len())).key_by(|n: usize| (n, ())))
                .state(|_: &usize, c: &mut u64, ()| Some(*c))
                .encode(|_, _, _| {}),
            SourceConfig::Memory(MemorySource::from_frames(["x"])),
            SinkConfig::Memory,
        )
        .unwrap_err();
    assert!(err.to_string().contains("2 source(s) but 1"), "{err}");
}

/// Word count, then a second state step keyed by the count: how many words reached it.
fn two_step_pipeline() -> impl bettong_engine::PersistApp {
    two_step_pipeline_padded(0)
}

/// [`two_step_pipeline`] whose output lines end with `pad` spaces.
fn two_step_pipeline_padded(pad: usize) -> impl bettong_engine::PersistApp {
    Pipeline::text()
        .flat_map(|t, emit| {
            t.split(' ')
                .filter(|w| !w.is_empty())
                .for_each(|w| emit(w.into()))
        })
        .key_by(|w| (w, ()))
        .state(|_w: &str, n: &mut u64, ()| {
            *n += 1;
            Some(*n)
        })
        .key_by(|n: u64| (n, ()))
        .state(|_n: &u64, reached: &mut u64, ()| {
            *reached += 1;
            Some(*reached)
        })
        .encode(move |n, reached, out| {
            out.extend_from_slice(format!("{n} {reached}{:pad$}\n", "").as_bytes())
        })
}

/// For each count c: how many distinct words occur at least c times.
fn reached(words: &[&str]) -> BTreeMap<u64, u64> {
    let mut freq: HashMap<&str, u64> = HashMap::new();
    for w in words {
        *freq.entry(w).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for f in freq.values() {
        for c in 1..=*f {
            *out.entry(c).or_default() += 1;
        }
    }
    out
}

fn last_per_key(lines: impl Iterator<Item = String>) -> BTreeMap<u64, u64> {
    let mut last = BTreeMap::new();
    for line in lines {
        let (k, v) = line.split_once(' ').unwrap();
        let (k, v): (u64, u64) = (k.parse().unwrap(), v.parse().unwrap());
        let prev = last.insert(k, v).unwrap_or(0);
        assert_eq!(
            v,
            prev + 1,
            "count {k}: outputs must go up by one, in order"
        );
    }
    last
}

fn text_frames(n: usize) -> Vec<String> {
    let vocab = [
        "a", "b", "c", "d", "e", "f", "g", "h", "quokka", "potoroo", "x", "y",
    ];
    (0..n)
        .map(|i| {
            (0..(i % 9))
                .map(|j| vocab[(i * 7 + j * 3 + i / 5) % vocab.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn a_chained_pipeline_routes_again_at_each_key_by() {
    let frames = text_frames(5_000);
    let words: Vec<&str> = frames
        .iter()
        .flat_map(|f| f.split(' '))
        .filter(|w| !w.is_empty())
        .collect();
    let report = Engine::new()
        .cores(cores())
        .run(
            two_step_pipeline(),
            SourceConfig::Memory(MemorySource::from_frames(&frames)),
            SinkConfig::Memory,
        )
        .unwrap();
    let t = report.total();
    assert_eq!(t.records_in, words.len() as u64);
    assert_eq!(
        t.records_applied,
        2 * words.len() as u64,
        "every word is applied at both steps"
    );
    assert_eq!(last_per_key(report.output_lines()), reached(&words));
}

#[test]
fn checkpoints_restore_every_step_of_a_chain() {
    let dir = std::env::temp_dir().join(format!("bettong-chain-ck-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let first = text_frames(3_000);
    let mut framed = Vec::new();
    for f in &first {
        bettong_engine::codec::encode_frame(f.as_bytes(), &mut framed);
    }
    let file = dir.join("in.bin");
    std::fs::write(&file, &framed).unwrap();
    let ck = || Checkpoints::new(dir.join("ck"));
    let run1 = Engine::new()
        .cores(cores())
        .run_with_checkpoints(
            two_step_pipeline(),
            SourceConfig::File(FileSourceConfig::new(&file)),
            SinkConfig::Memory,
            ck(),
        )
        .unwrap();
    let w1: Vec<&str> = first
        .iter()
        .flat_map(|f| f.split(' '))
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(last_per_key(run1.output_lines()), reached(&w1));
    // A second run on another core count restores both steps' state, then takes more words.
    let more = text_frames(700);
    let run2 = Engine::new()
        .cores(1)
        .run_with_checkpoints(
            two_step_pipeline(),
            SourceConfig::Memory(MemorySource::from_frames(&more)),
            SinkConfig::Memory,
            ck(),
        )
        .unwrap();
    let w2: Vec<&str> = more
        .iter()
        .flat_map(|f| f.split(' '))
        .filter(|w| !w.is_empty())
        .collect();
    let all: Vec<&str> = w1.iter().chain(&w2).copied().collect();
    // Only counts reached again in run 2 are output there; each must be its total so far.
    let want = reached(&all);
    let got: BTreeMap<u64, u64> = run2
        .output_lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert!(!got.is_empty());
    for (c, v) in &got {
        assert_eq!(Some(v), want.get(c), "count {c} after the restore");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A receiver that accepts `conns` connections and reads nothing until told to, then reads
/// everything: a stalled, then recovered, sink.
fn stalled_receiver(
    conns: usize,
) -> (
    std::net::SocketAddr,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(8).unwrap();
    let listener: std::net::TcpListener = sock.into();
    let addr = listener.local_addr().unwrap();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let streams: Vec<_> = (0..conns).map(|_| listener.accept().unwrap().0).collect();
        wait.recv().unwrap();
        let readers: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    std::io::Read::read_to_end(&mut s, &mut all).unwrap();
                    all
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect()
    });
    (addr, go, reader)
}

#[test]
fn a_chain_stops_reading_while_its_sink_is_stalled_and_loses_nothing() {
    use bettong_engine::TcpSinkConfig;
    let n = cores();
    let frames: Vec<String> = text_frames(120_000);
    let words: Vec<&str> = frames
        .iter()
        .flat_map(|f| f.split(' '))
        .filter(|w| !w.is_empty())
        .collect();
    // Long output lines, so the stalled sink fills long before the input is read.
    let pipeline = two_step_pipeline_padded(90);
    let (addr, go, reader) = stalled_receiver(n);
    let mut sink = TcpSinkConfig::new(addr);
    sink.max_held_bytes = 64 * 1024;
    let running = Engine::new()
        .cores(n)
        .ring_capacity(2)
        .start(
            pipeline,
            SourceConfig::Memory(MemorySource::from_frames(&frames).slice_bytes(1024)),
            SinkConfig::Tcp(sink),
        )
        .unwrap();
    // While the receiver reads nothing, the sources must stop: input stops being taken.
    let taken = || running.metrics().total().records_in;
    let mut last = u64::MAX;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = taken();
        if now == last {
            break;
        }
        last = now;
        assert!(std::time::Instant::now() < deadline, "input never stopped");
    }
    assert!(
        last < words.len() as u64 / 2,
        "the engine took {last} of {} words while its sink read nothing",
        words.len()
    );
    go.send(()).unwrap();
    let report = running.join().unwrap();
    let out = reader.join().unwrap();
    let lines = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut p = std::str::from_utf8(l).unwrap().split_whitespace();
            format!("{} {}", p.next().unwrap(), p.next().unwrap())
        });
    assert_eq!(report.total().records_in, words.len() as u64);
    assert_eq!(last_per_key(lines), reached(&words));
}

#[test]
fn merged_sources_may_be_of_different_kinds() {
    // Source 0 reads a framed file, source 1 a memory buffer: one count per word over both.
    let dir = std::env::temp_dir().join(format!("bettong-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file_frames = text_frames(2_000);
    let memory_frames = text_frames(1_500);
    let mut framed = Vec::new();
    for f in &file_frames {
        bettong_engine::codec::encode_frame(f.as_bytes(), &mut framed);
    }
    let file = dir.join("in.bin");
    std::fs::write(&file, &framed).unwrap();
    let words_of = |t: &str| {
        t.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let side = |tag: u8| {
        Pipeline::decode(move |f: &[u8]| Ok(std::str::from_utf8(f)?.to_string()))
            .flat_map(move |t: String, emit: &mut dyn FnMut(String)| {
                words_of(&t).into_iter().for_each(&mut *emit)
            })
            .key_by(move |w: String| (w, tag))
    };
    let pipeline = side(0)
        .merge(side(1))
        .state(|_w: &String, n: &mut [u64; 2], tag: u8| {
            n[tag as usize] += 1;
            Some(*n)
        })
        .encode(|w, n, out| out.extend_from_slice(format!("{w} {} {}\n", n[0], n[1]).as_bytes()));
    let report = Engine::new()
        .cores(cores())
        .run(
            pipeline,
            vec![
                SourceConfig::File(FileSourceConfig::new(&file)),
                SourceConfig::Memory(MemorySource::from_frames(&memory_frames)),
            ],
            SinkConfig::Memory,
        )
        .unwrap();
    let mut want: HashMap<String, [u64; 2]> = HashMap::new();
    for (tag, frames) in [(0, &file_frames), (1, &memory_frames)] {
        for f in frames.iter() {
            for w in words_of(f) {
                want.entry(w).or_default()[tag] += 1;
            }
        }
    }
    let mut got: HashMap<String, [u64; 2]> = HashMap::new();
    for line in report.output_lines() {
        let p: Vec<&str> = line.split(' ').collect();
        got.insert(
            p[0].to_string(),
            [p[1].parse().unwrap(), p[2].parse().unwrap()],
        );
    }
    assert_eq!(
        got, want,
        "the last output per word holds both sources' counts"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
