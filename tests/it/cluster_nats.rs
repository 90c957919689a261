//! The cluster on NATS JetStream (`spec/cluster.md`) against a real `nats-server` and the real
//! binary: exact counts and gap-free output through joins, SIGTERM leaves, kill -9, a member
//! paused past its lease (fencing), a nats-server restart, and bad input messages; and NATS as
//! a plain source and sink of the engine, in one process without `--job`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::nats::{
    member, run_bettong, send_file, serve, settled, spawn_ready, validate, wait_status, NatsServer,
};
use crate::support::{frame_all, random_message, reference_counts, Rng, WAIT};

/// Key and input partitions of the test jobs: small, so every member owns several of each.
const P: &str = "16";
const I: u32 = 4;

/// How long a job may take to settle (rebalance, catch up) after an event.
const SETTLE: Duration = Duration::from_secs(30);

/// The member flags every test uses: short leases and checkpoints, to keep the tests short.
/// The tests of crashes and pauses use 2 s leases; the others keep the default 5 s, so that a
/// member starved of CPU by the tests beside it does not lose its lease (and repeat output).
fn flags(lease_ttl: &'static str) -> Vec<&'static str> {
    vec![
        "--partitions",
        P,
        "--in-partitions",
        "4",
        "--lease-ttl",
        lease_ttl,
        "--checkpoint-interval",
        "300ms",
    ]
}

/// A corpus in `parts` framed files, and the reference counts of all of them in a JSON file.
struct Corpus {
    parts: Vec<PathBuf>,
    counts: PathBuf,
}

impl Corpus {
    /// `parts` files of `per_part` random messages; `extra` (already framed, possibly bad)
    /// becomes one more part, its valid frames counted in the reference.
    fn new(
        dir: &Path,
        seed: u64,
        parts: usize,
        per_part: usize,
        extra: Option<(Vec<u8>, Vec<&[u8]>)>,
    ) -> Corpus {
        let mut rng = Rng::new(seed);
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut add = |payloads: &[&[u8]]| {
            for (w, n) in reference_counts(payloads.iter().copied()) {
                *counts.entry(w).or_insert(0) += n;
            }
        };
        let mut files = Vec::new();
        for k in 0..parts {
            let msgs: Vec<String> = (0..per_part)
                .map(|_| random_message(&mut rng, 1, 12))
                .collect();
            let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_bytes()).collect();
            add(&refs);
            let path = dir.join(format!("part{k}.bin"));
            std::fs::write(&path, frame_all(&msgs)).expect("write a corpus part");
            files.push(path);
        }
        if let Some((framed, valid)) = extra {
            add(&valid);
            let path = dir.join("extra.bin");
            std::fs::write(&path, framed).expect("write the extra part");
            files.push(path);
        }
        let path = dir.join("counts.json");
        std::fs::write(&path, serde_json::to_vec(&counts).expect("counts")).expect("write counts");
        Corpus {
            parts: files,
            counts: path,
        }
    }
}

/// Bad input, framed, and its valid frames: one message with a good frame, a frame that is not
/// UTF-8, another good frame, then a truncated frame (sent as a message of its own by `send`);
/// then a frame above a --max-frame of 4096 (sent alone: larger than --batch-bytes), and a good
/// frame after it (in the next message). Three frames are rejected.
fn bad_input() -> (Vec<u8>, Vec<&'static [u8]>) {
    let good: [&'static [u8]; 3] = [b"Bad input, good words", b"more GOOD words", b"after big"];
    let big = vec![b'x'; 5000];
    let mut bad = frame_all(&[good[0], &[0xff, 0xfe, 0x20][..], good[1], &big, good[2]]);
    bad.extend_from_slice(&[0, 0, 0, 40, b'x', b'y']);
    (bad, good.to_vec())
}

/// Stops `server` (which read [`bad_input`]) with SIGTERM; checks it exits 0 having rejected
/// the three bad frames and logged the large one; returns its stopped line.
#[track_caller]
fn stop_after_bad_input(server: &mut crate::support::Server) -> serde_json::Value {
    server.signal("TERM");
    assert!(
        server.wait_exit(WAIT).success(),
        "SIGTERM must exit 0: {}",
        server.stderr()
    );
    let stopped = server.event("stopped").expect("a stopped line");
    // The frame that is not UTF-8, the one above --max-frame, the truncated tail.
    assert_eq!(stopped["metrics"]["frames_rejected"], 3, "{stopped}");
    assert!(
        server.stderr().contains("announces 5000 bytes"),
        "{}",
        server.stderr()
    );
    stopped
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    eprintln!("seed {s}");
    s
}

#[track_caller]
fn assert_valid(url: &str, corpus: &Corpus, no_repeats: bool) -> serde_json::Value {
    let (ok, report, err) = validate(url, &corpus.counts, no_repeats);
    assert!(ok, "the output check failed: {report}\n{err}");
    assert_eq!(report["gaps"], 0, "{report}");
    assert_eq!(report["count_mismatches"], 0, "{report}");
    assert_eq!(report["stale_epoch_messages"], 0, "{report}");
    report
}

#[test]
fn cluster_one_member_counts_exactly_rejects_bad_input_and_checks_settings() {
    let nats = NatsServer::start();
    let url = nats.url("wc1");
    let create = |partitions: &str| {
        let args = [
            "cluster",
            "create",
            "--nats",
            &url,
            "--job",
            "one",
            "--partitions",
            partitions,
        ];
        run_bettong(&[&args[..], &["--in-partitions", "4"]].concat(), true)
    };
    assert!(create(P).0, "cluster create failed");
    let (ok, _, err) = create("9");
    assert!(
        !ok && err.contains("--partitions 16"),
        "other settings must be refused: {err}"
    );
    let (ok, _, err) = run_bettong(
        &["serve", "--in", &url, "--out", &url, "--job", "one"],
        true,
    );
    assert!(
        !ok && err.contains("--partitions 64"),
        "a member with other settings must refuse to run: {err}"
    );

    let corpus = Corpus::new(&nats.dir, seed(), 2, 1500, Some(bad_input()));
    let file = corpus.parts[0].to_str().expect("utf-8 path");
    let send = [
        "send",
        "--nats",
        &url,
        "--framed-file",
        file,
        "--in-partitions",
        "3",
    ];
    let (ok, _, err) = run_bettong(&send, true);
    assert!(
        !ok && err.contains("in_partitions=4"),
        "send must refuse other --in-partitions: {err}"
    );
    for part in &corpus.parts {
        send_file(&url, part, I);
    }
    let mut m = member(
        &url,
        "one",
        &[&flags("5s")[..], &["--max-frame", "4096"]].concat(),
    );
    let (s, took) = wait_status(&nats, "one", SETTLE, |s| settled(s, 1));
    assert!(
        took.is_some(),
        "one member did not own everything and catch up: {s}"
    );
    let report = assert_valid(&url, &corpus, true);
    assert_eq!(report["repeats"], 0, "{report}");
    let stopped = stop_after_bad_input(&mut m);
    assert_eq!(stopped["metrics"]["fenced"], 0, "{stopped}");
    assert!(
        m.stderr().contains("is not UTF-8"),
        "the bad frame is logged: {}",
        m.stderr()
    );
    let (s, _) = wait_status(&nats, "one", WAIT, |s| {
        s["members"].as_array().is_some_and(|m| m.is_empty())
    });
    assert_eq!(
        s["unowned_partitions"],
        16 + I,
        "a clean leave releases everything: {s}"
    );
}

#[test]
fn cluster_clean_join_and_leave_repeat_no_output() {
    let nats = NatsServer::start();
    let url = nats.url("wc2");
    let corpus = Corpus::new(&nats.dir, seed(), 3, 1500, None);
    let mut a = member(&url, "clean", &flags("5s"));
    send_file(&url, &corpus.parts[0], I);
    let b = member(&url, "clean", &flags("5s"));
    let t0 = Instant::now();
    let (s, took) = wait_status(&nats, "clean", SETTLE, |s| settled(s, 2));
    assert!(
        took.is_some(),
        "the job did not rebalance onto 2 members: {s}"
    );
    eprintln!("join: balanced and caught up after {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(11),
        "a join must balance within 10 s + a checkpoint interval; the members' logs:\n{}\n---\n{}",
        a.stderr(),
        b.stderr()
    );
    send_file(&url, &corpus.parts[1], I);
    a.signal("TERM");
    let t0 = Instant::now();
    assert!(
        a.wait_exit(WAIT).success(),
        "SIGTERM must exit 0 after the hand-over: {}",
        a.stderr()
    );
    let (s, took) = wait_status(&nats, "clean", SETTLE, |s| settled(s, 1));
    assert!(
        took.is_some(),
        "the leave's partitions were not taken over: {s}"
    );
    eprintln!("leave: taken over and caught up after {:?}", t0.elapsed());
    send_file(&url, &corpus.parts[2], I);
    let (s, took) = wait_status(&nats, "clean", SETTLE, |s| settled(s, 1));
    assert!(took.is_some(), "the last part was not consumed: {s}");
    let report = assert_valid(&url, &corpus, true);
    assert_eq!(
        report["repeats"], 0,
        "clean joins and leaves repeat nothing: {report}"
    );
    drop(b);
}

/// Checks that in status `s` every owned partition names one core in `0..cores` of its owner,
/// and that each member's cores run even shares of its input and of its key partitions (within
/// one); `Err` says what is wrong.
fn cores_even(s: &serde_json::Value, cores: u64) -> Result<(), String> {
    let mut per: HashMap<(String, bool, u64), usize> = HashMap::new();
    for p in s["partition_details"]
        .as_array()
        .ok_or("no partition details")?
    {
        let owner = p["owner"].as_str().ok_or(format!("unowned: {p}"))?;
        let core = p["core"].as_u64().ok_or(format!("no core: {p}"))?;
        if core >= cores {
            return Err(format!("core {core} is not one of 0..{cores}: {p}"));
        }
        let input = p["partition"]
            .as_str()
            .is_some_and(|k| k.starts_with("in."));
        *per.entry((owner.to_string(), input, core)).or_default() += 1;
    }
    for m in s["members"].as_array().ok_or("no members")? {
        let id = m["id"].as_str().unwrap_or_default().to_string();
        for input in [true, false] {
            let n: Vec<usize> = (0..cores)
                .map(|c| per.get(&(id.clone(), input, c)).copied().unwrap_or(0))
                .collect();
            let (lo, hi) = (n.iter().min(), n.iter().max());
            if hi.unwrap_or(&0) - lo.unwrap_or(&0) > 1 || n.iter().sum::<usize>() == 0 {
                return Err(format!(
                    "member {id}'s cores run {n:?} {} partitions",
                    if input { "input" } else { "key" }
                ));
            }
        }
    }
    Ok(())
}

/// The CPUs each `bettong-core-C` thread of process `pid` may run on, by C.
fn core_threads(pid: u32) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the member's threads") {
        let dir = task.expect("a thread").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        if name.starts_with("bettong-core-") {
            found.push((name.trim().to_string(), cpus.trim().to_string()));
        }
    }
    found.sort();
    found
}

/// Waits until job `cores` has settled on `members` members with even cores ([`cores_even`]);
/// returns its status.
#[track_caller]
fn settle_on_2_cores(nats: &NatsServer, members: usize, what: &str) -> serde_json::Value {
    let (s, took) = wait_status(nats, "cores", SETTLE, |s| {
        settled(s, members) && cores_even(s, 2).is_ok()
    });
    assert!(took.is_some(), "{what}: {:?}: {s}", cores_even(&s, 2));
    s
}

#[test]
fn cluster_members_run_each_partition_on_one_pinned_core() {
    let nats = NatsServer::start();
    let url = nats.url("wc6");
    let corpus = Corpus::new(&nats.dir, seed(), 3, 1500, None);
    let f = [&flags("5s")[..], &["--cores", "2", "--cpus", "0-1"]].concat();
    let mut a = member(&url, "cores", &f);
    let ready = a.event("ready").expect("a ready line");
    let cpus: Vec<u64> = ready["cores"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c.as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(cpus.len(), 2, "two cores, on CPUs: {ready}");
    assert_ne!(cpus[0], cpus[1], "each core on its own CPU: {ready}");
    let pinned: Vec<(String, String)> = (0..2)
        .map(|c| (format!("bettong-core-{c}"), cpus[c].to_string()))
        .collect();
    assert_eq!(
        core_threads(a.pid()),
        pinned,
        "one thread per core, pinned to its CPU"
    );
    send_file(&url, &corpus.parts[0], I);
    let s = settle_on_2_cores(&nats, 1, "one member with 2 cores");
    let mine = &s["members"][0];
    let by_core: Vec<usize> = mine["cores"]
        .as_array()
        .expect("the member's cores")
        .iter()
        .map(|c| c["key_partitions"].as_array().map_or(0, |k| k.len()))
        .collect();
    assert_eq!(by_core, [8, 8], "16 key partitions over 2 cores: {mine}");
    // A second member with 2 cores: the first releases half its partitions, whatever cores
    // they ran on, then evens its own cores out again.
    let b = member(&url, "cores", &f);
    send_file(&url, &corpus.parts[1], I);
    settle_on_2_cores(&nats, 2, "2 members with 2 cores each");
    a.signal("TERM");
    assert!(
        a.wait_exit(WAIT).success(),
        "SIGTERM must exit 0: {}",
        a.stderr()
    );
    send_file(&url, &corpus.parts[2], I);
    settle_on_2_cores(
        &nats,
        1,
        "the leave's partitions over the other member's cores",
    );
    let report = assert_valid(&url, &corpus, true);
    assert_eq!(
        report["repeats"], 0,
        "moves between cores are clean hand-overs: {report}"
    );
    drop(b);
}

/// Sends `parts` one after another from a thread, `pause` apart, so that the test's events
/// happen while input flows.
fn feed(url: &str, parts: &[PathBuf], pause: Duration) -> std::thread::JoinHandle<()> {
    let (url, parts) = (url.to_string(), parts.to_vec());
    std::thread::spawn(move || {
        for part in &parts {
            send_file(&url, part, I);
            std::thread::sleep(pause);
        }
    })
}

#[test]
fn cluster_grows_shrinks_and_survives_kill_9_twice() {
    let nats = NatsServer::start();
    let url = nats.url("wc3");
    let mut rng = Rng::new(seed());
    let corpus = Corpus::new(&nats.dir, rng.next_u64(), 16, 1000, None);
    let f = flags("2s");
    let a = member(&url, "big", &f);
    let mut b = member(&url, "big", &f);
    let c = member(&url, "big", &f);
    let feeder = feed(&url, &corpus.parts, Duration::from_millis(400));
    let mut at = |lo, hi| std::thread::sleep(Duration::from_millis(rng.range(lo, hi) as u64));
    at(500, 1500);
    let d = member(&url, "big", &f); // joins mid-stream
    at(500, 1500);
    b.signal("TERM");
    assert!(
        b.wait_exit(WAIT).success(),
        "SIGTERM must exit 0: {}",
        b.stderr()
    );
    at(0, 1500);
    c.signal("KILL");
    at(0, 1000);
    let c2 = member(&url, "big", &f); // the same member restarted, killed again
    at(1000, 3000);
    c2.signal("KILL");
    let t0 = Instant::now();
    feeder.join().expect("the feeder failed");
    let (s, took) = wait_status(&nats, "big", SETTLE, |s| settled(s, 2));
    assert!(
        took.is_some(),
        "the survivors did not take everything over and catch up: {s}"
    );
    eprintln!(
        "kill -9: taken over and caught up {:?} after the kill",
        t0.elapsed()
    );
    let report = assert_valid(&url, &corpus, false);
    eprintln!("output after two kills: {report}");
    // State came back from checkpoints, not from replaying everything: every key partition has
    // a committed object, and the survivors took over partitions at non-zero positions.
    for p in s["partition_details"]
        .as_array()
        .expect("partition details")
    {
        let c = &p["checkpoint"];
        assert!(c["pos"].as_u64() > Some(0), "no committed checkpoint: {p}");
        if p["partition"]
            .as_str()
            .is_some_and(|k| k.starts_with("kp."))
        {
            assert!(
                c["object"].is_string() && c["keys"].as_u64() > Some(0),
                "{p}"
            );
        }
    }
    let restored = [&a, &d]
        .iter()
        .flat_map(|m| m.stderr_lines())
        .filter(|l| l.contains("took partition kp.") && !l.contains("checkpoint at 0)"))
        .count();
    assert!(
        restored > 0,
        "no take-over restored a checkpoint:\n{}\n{}",
        a.stderr(),
        d.stderr()
    );
    drop((a, c, d));
}

#[test]
fn cluster_fences_a_member_paused_past_its_lease() {
    let nats = NatsServer::start();
    let url = nats.url("wc4");
    let corpus = Corpus::new(&nats.dir, seed(), 12, 1000, None);
    let a = member(&url, "fence", &flags("2s"));
    let b = member(&url, "fence", &flags("2s"));
    let (s, took) = wait_status(&nats, "fence", SETTLE, |s| settled(s, 2));
    assert!(took.is_some(), "2 members did not settle: {s}");
    let feeder = feed(&url, &corpus.parts[..11], Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(700));
    b.signal("STOP");
    // The lease is 2 s: A takes everything over once B's leases run out.
    let (s, took) = wait_status(&nats, "fence", SETTLE, |s| settled(s, 1));
    assert!(
        took.is_some(),
        "A did not take the paused member's partitions: {s}"
    );
    let resumed = Instant::now();
    b.signal("CONT");
    let line = b.wait_for_stderr_line(|l| l.contains("fenced:"), Duration::from_secs(5));
    let line = line
        .unwrap_or_else(|| panic!("the resumed member logged no fencing error: {}", b.stderr()));
    assert!(
        resumed.elapsed() < Duration::from_secs(3),
        "noticed {:?} after resuming",
        resumed.elapsed()
    );
    assert!(
        line.contains("partition"),
        "the error names the partition: {line}"
    );
    feeder.join().expect("the feeder failed");
    send_file(&url, &corpus.parts[11], I);
    let (s, took) = wait_status(&nats, "fence", SETTLE, |s| settled(s, 2));
    assert!(took.is_some(), "the fenced member did not rejoin: {s}");
    // No message of an older epoch after a newer one on any output subject: the stale owner
    // published nothing after the take-over.
    assert_valid(&url, &corpus, false);
    drop(a);
}

#[test]
fn cluster_survives_a_nats_server_restart() {
    let mut nats = NatsServer::start();
    let url = nats.url("wc5");
    let corpus = Corpus::new(&nats.dir, seed(), 3, 1500, None);
    let a = member(&url, "restart", &flags("2s"));
    let b = member(&url, "restart", &flags("2s"));
    send_file(&url, &corpus.parts[0], I);
    let (s, took) = wait_status(&nats, "restart", SETTLE, |s| settled(s, 2));
    assert!(took.is_some(), "2 members did not settle: {s}");
    send_file(&url, &corpus.parts[1], I);
    nats.restart(Duration::from_millis(500));
    send_file(&url, &corpus.parts[2], I);
    let (s, took) = wait_status(&nats, "restart", SETTLE, |s| settled(s, 2));
    assert!(
        took.is_some(),
        "the members did not recover after the restart: {s}\n{}\n{}",
        a.stderr(),
        b.stderr()
    );
    assert_valid(&url, &corpus, false);
}

/// Without `--job`, `serve --in nats://… --out nats://…` runs the engine's word count on its
/// cores with NATS as source and sink: exact counts, no gap, no repeat, bad messages rejected
/// and counted, many lines per output message; and a framed file into the NATS sink.
#[test]
fn engine_reads_and_writes_nats_without_a_job() {
    let nats = NatsServer::start();
    let url = nats.url("eng");
    let corpus = Corpus::new(&nats.dir, seed(), 2, 1500, Some(bad_input()));
    for part in &corpus.parts {
        send_file(&url, part, I);
    }
    let mut s = serve(
        &url,
        &url,
        &["--cores", "2", "--partitions", P, "--max-frame", "4096"],
    );
    let report = assert_valid(&url, &corpus, true);
    assert_eq!(report["repeats"], 0, "{report}");
    let (lines, messages) = (
        report["lines"].as_u64().expect("lines"),
        report["messages"].as_u64().expect("messages"),
    );
    assert!(
        lines >= 10 * messages,
        "output lines must be batched into messages: {report}"
    );
    stop_after_bad_input(&mut s);

    // Another source with the NATS sink: a framed file, read once (the server then exits 0).
    let dir = nats.dir.join("file");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let from_file = Corpus::new(&dir, seed(), 1, 800, None);
    let url2 = nats.url("fromfile");
    let input = format!("file:{}", from_file.parts[0].display());
    let mut s = serve(&input, &url2, &["--cores", "2", "--partitions", P]);
    assert!(
        s.wait_exit(WAIT).success(),
        "a file source must end the run with exit 0: {}",
        s.stderr()
    );
    let report = assert_valid(&url2, &from_file, true);
    assert_eq!(report["repeats"], 0, "{report}");
}

/// Market Spread with both sources on NATS input streams and its results published on a NATS
/// output stream: every quote applied first (the metrics say so; one input partition, so in
/// order), then every order (four partitions); the results are exactly the reference's, each on
/// its symbol's key partition subject.
#[test]
fn market_spread_reads_and_writes_nats() {
    use bettong::market_spread::gen::{generate, GenOptions};
    use bettong::market_spread::reference::expected_results;
    use bettong::market_spread::OrderResult;
    use bettong::nats::partition::fnv1a32;

    let nats = NatsServer::start();
    let opts = GenOptions {
        symbols: 40,
        orders: 3000,
        quotes: 600,
        seed: seed(),
    };
    let (orders, nbbo) = generate(&opts).expect("generate a market");
    let (orders_file, nbbo_file) = (nats.dir.join("orders.bin"), nats.dir.join("nbbo.bin"));
    std::fs::write(&orders_file, &orders).expect("write orders");
    std::fs::write(&nbbo_file, &nbbo).expect("write quotes");
    let payloads = |b: &[u8]| -> Vec<Vec<u8>> {
        bettong_engine::codec::frames(b)
            .map(|f| f.expect("whole frames").payload.to_vec())
            .collect()
    };
    let (order_payloads, quote_payloads) = (payloads(&orders), payloads(&nbbo));
    let quote_refs: Vec<&[u8]> = quote_payloads.iter().map(|p| &p[..]).collect();
    let order_refs: Vec<&[u8]> = order_payloads.iter().map(|p| &p[..]).collect();
    let mut want = expected_results(&quote_refs, &order_refs);
    assert!(!want.is_empty(), "the market must reject some orders");

    // One input partition for the quotes: a partition's order is kept (last quote wins), as
    // one connection's is over TCP.
    send_file(&nats.url("quotes"), &nbbo_file, 1);
    let input = format!("Orders@{},Nbbo@{}", nats.url("orders"), nats.url("quotes"));
    let out = nats.url("results");
    let mut ms = spawn_ready(&[
        "market-spread",
        "--in",
        &input,
        "--out",
        &out,
        "--cores",
        "2",
        "--partitions",
        "8",
        "--in-partitions",
        "4",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let ready = ms.event("ready").expect("a ready line");
    let metrics: std::net::SocketAddr = ready["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the ready line names no metrics address: {ready}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let v = crate::support::monitor::metrics_json(metrics, "/metrics.json");
        if v["total"]["now"]["frames_in"].as_u64() == Some(quote_payloads.len() as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quotes were not all read within {WAIT:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    send_file(&nats.url("orders"), &orders_file, I);

    // Read the results back from the output stream until as many as expected have come.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let got: Vec<(String, OrderResult)> = rt.block_on(async {
        use futures_util::StreamExt;
        let client = async_nats::connect(format!("127.0.0.1:{}", nats.port))
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + WAIT;
        let stream = loop {
            match js.get_stream("results_out").await {
                Ok(s) => break s,
                Err(e) => assert!(Instant::now() < deadline, "no results_out stream: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await
            .expect("a consumer of results_out");
        let mut messages = consumer.messages().await.expect("read results_out");
        let mut got = Vec::new();
        while got.len() < want.len() {
            let m = tokio::time::timeout(WAIT, messages.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {} results within {WAIT:?}",
                        got.len(),
                        want.len()
                    )
                })
                .expect("the consumer goes on")
                .expect("a message");
            for f in bettong_engine::codec::frames(&m.payload) {
                let r = OrderResult::parse(f.expect("whole frames").payload).expect("a result");
                got.push((m.subject.to_string(), r));
            }
        }
        got
    });
    ms.signal("TERM");
    assert!(
        ms.wait_exit(WAIT).success(),
        "SIGTERM must exit 0: {}",
        ms.stderr()
    );
    for (subject, r) in &got {
        let q = fnv1a32(&r.symbol) % 8;
        assert_eq!(
            subject,
            &format!("results.out.{q}"),
            "the result of order {:?} is on its symbol's subject",
            r.order_id
        );
    }
    let mut have: Vec<([u8; 4], [u8; 6])> =
        got.iter().map(|(_, r)| (r.symbol, r.order_id)).collect();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want, "the results must be exactly the reference's");
}

/// The engine on NATS without `--job` through a nats-server restart: the ordered consumer goes
/// on from the last message it delivered, unacknowledged output is published again, before
/// anything later on its subject; the final counts are exact and no value skips ahead (a
/// value may repeat: at-least-once output).
#[test]
fn engine_on_nats_survives_a_server_restart() {
    let mut nats = NatsServer::start();
    let url = nats.url("engr");
    let corpus = Corpus::new(&nats.dir, seed(), 3, 1500, None);
    send_file(&url, &corpus.parts[0], I);
    let mut s = serve(&url, &url, &["--cores", "2", "--partitions", P]);
    send_file(&url, &corpus.parts[1], I);
    nats.restart(Duration::from_millis(500));
    send_file(&url, &corpus.parts[2], I);
    // The server catches up at its own pace after the restart: check until the counts match.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (ok, report, err) = validate(&url, &corpus.counts, false);
        if ok {
            assert_eq!(report["gaps"], 0, "{report}");
            break;
        }
        assert!(
            Instant::now() < deadline && report["gaps"] == 0,
            "the output after the restart is wrong: {report}\n{err}\nthe server's log:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    s.signal("TERM");
    assert!(
        s.wait_exit(WAIT).success(),
        "SIGTERM must exit 0: {}",
        s.stderr()
    );
}
