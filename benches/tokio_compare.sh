#!/usr/bin/env bash
# Bettong against tokio-wc at the same placement, measured by the same clients: issue 11's
# "better than tokio-wc at every rate it can sustain" and "both socket paths", as one command.
# Each server runs alone on SERVER_CPU (taskset), `bettong bench --server-cmd` puts its paced
# sender, receiver and probe thread (one probe word a millisecond) on CLIENT_CPU, and the
# three servers (tokio-wc with 1 thread; bettong serve on io_uring, the default; bettong serve
# with BETTONG_IO=glommio) alternate within each round. Rates: 1k and 20k msgs/s, and tokio-wc's
# own maximum (its full-speed rate, measured at the start of each round).
#
#   benches/tokio_compare.sh target/release/bettong /path/to/tokio-wc /tmp/corpus.bin 3
#
# (tokio-wc: `cargo build --release` in ../shared/peers/tokio-wc; the corpus from
# ../shared/tools/gen_corpus.py.) Env: SERVER_CPU (1), CLIENT_CPU (0), DURATION (3 s per
# fixed-rate phase), RATES ("1000 20000 max"). Prints one line per run, then each
# (rate, server)'s range over the rounds; probe latency in µs, CPU/msg is the server process's
# CPU time over the phase (from /proc) per message. msgs/s counts the probes too (1000/s): at
# a rate of 1000 the server takes in about 2000 messages a second.
set -eu
B=$1; TOKIO=$2; CORPUS=$3; ROUNDS=${4:-3}
SERVER_CPU=${SERVER_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}; DURATION=${DURATION:-3}
RATES=${RATES:-"1000 20000 max"}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

server_cmd() {
  case $1 in
    tokio-wc) echo "taskset -c $SERVER_CPU $TOKIO {IN} {OUT} 1" ;;
    bettong-uring) echo "env BETTONG_IO=uring $B serve --in {IN} --out {OUT} --cpus $SERVER_CPU --progress-interval 0" ;;
    bettong-glommio) echo "env BETTONG_IO=glommio $B serve --in {IN} --out {OUT} --cpus $SERVER_CPU --progress-interval 0" ;;
  esac
}

# bench SERVER RATE: one bench run; prints its JSON's phases as `name rate reached p50 p99 p999 cpu`.
bench() {
  local cmd; cmd=$(server_cmd "$1")
  # bettong serve pins its cores itself; its other threads (idle) stay off the client CPU too.
  [ "$1" != tokio-wc ] && cmd="taskset -c $SERVER_CPU $cmd"
  "$B" bench --server-cmd "$cmd" --framed-file "$CORPUS" --repeat 1 --duration "$DURATION" \
    --rate "$2" --cpus "$SERVER_CPU" --client-cpus "$CLIENT_CPU" --json 2>"$OUT/err" \
    | python3 -c '
import json, sys
d = json.load(sys.stdin)
for p in d["phases"]:
    pr = p.get("probe_latency_us") or {}
    print(p["name"].replace(" ", "-"), p.get("target_rate") or 0,
          round(p["msgs_per_sec"] or 0), pr.get("p50", "-"), pr.get("p99", "-"),
          pr.get("p999", "-"), p.get("engine_cpu_us_per_msg") or "-")
' || { echo "bench of $1 at $2 failed:" >&2; tail -5 "$OUT/err" >&2; }
}

echo "round server rate_asked msgs_per_s probe_p50 probe_p99 probe_p999 cpu_us_per_msg"
for round in $(seq 1 "$ROUNDS"); do
  max=$(bench tokio-wc 0 | awk '$1 == "full-speed" {print $3}')
  echo "$round tokio-wc full-speed $max - - - -"
  for label in $RATES; do
    rate=$label
    [ "$label" = max ] && rate=${max:-0}
    [ "$rate" -gt 0 ] || continue
    for server in tokio-wc bettong-uring bettong-glommio; do
      # The rate column is the label (`max` stands for this round's tokio-wc full speed).
      bench "$server" "$rate" | awk -v r="$round" -v s="$server" -v l="$label" \
        '$1 == "fixed-rate" {print r, s, l, $3, $4, $5, $6, $7}'
    done
  done
done | tee "$OUT/runs"

echo
echo "over $ROUNDS rounds: server rate_asked | msgs/s | probe p50 | probe p99 | probe p99.9 | CPU/msg (min-max)"
python3 - "$OUT/runs" <<'EOF'
import sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 8 and f[0].isdigit() and f[2] != "full-speed":
        rows[(int(f[2]) if f[2].isdigit() else 1 << 62, f[2], f[1])].append(f[3:])
def rng(vals):
    v = [float(x) for x in vals if x not in ("-", "None")]
    if not v:
        return "-"
    fmt = (lambda x: f"{x:.2f}") if max(v) < 100 else (lambda x: f"{x:.0f}")
    return fmt(min(v)) if min(v) == max(v) else f"{fmt(min(v))}-{fmt(max(v))}"
for (_, rate, server), runs in sorted(rows.items()):
    cols = " | ".join(rng([r[i] for r in runs]) for i in range(5))
    print(f"{server} {rate} | {cols}")
EOF
