#!/usr/bin/env bash
# Measures a word-count job on NATS JetStream (README "Running a cluster"), side by side in one
# run: the broker's own ceiling (publish and consume one stream with the same batching, no
# Bettong), end-to-end words/s with 1, 2 and 3 members, one process running the engine with NATS
# as source and sink (no --job, --cores 2), and the time from a join, a SIGTERM leave and a
# kill -9 to balanced ownership. Each measurement gets a fresh nats-server.
#
# Usage: scripts/cluster-bench.sh CORPUS [MEMBERS…]   (CORPUS: gen_corpus.py output, with its
# .counts file beside it; MEMBERS default "1 2 3"; BATCH_BYTES default 6400, ~100 frames;
# REPEAT default 5: the corpus is sent that many times; NATS_PORT: the port of every nats-server
# it starts, one at a time, default a random one in 20000-39999; ONLY=members or ONLY=events:
# only the member runs, or only the join/leave/kill events, for A/B comparisons of two builds;
# PIN_MEMBERS=0: no --cpus for the members, see member() below; MEMBER_ARGS: more flags for
# every member, such as "--cores 2")
set -euo pipefail
B=${BETTONG:-target/release/bettong}
CORPUS=$1; shift
MEMBERS=${*:-1 2 3}
BATCH=${BATCH_BYTES:-6400}
REPEAT=${REPEAT:-5}
WORDS=$(python3 -c "import sys; print(int(sys.argv[2]) * sum(int(l.rsplit('\t',1)[1]) for l in open(sys.argv[1])))" "$CORPUS.counts" "$REPEAT")
FRAMES=$(python3 -c "
import sys, struct
b = open(sys.argv[1], 'rb').read(); n = i = 0
while i + 4 <= len(b): i += 4 + struct.unpack('>I', b[i:i+4])[0]; n += 1
print(n * int(sys.argv[2]))" "$CORPUS" "$REPEAT")
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
now() { date +%s.%N; }

start_nats() {
  PORT=${NATS_PORT:-$((20000 + RANDOM % 20000))}
  rm -rf "$WORK/js"
  nats-server -js -a 127.0.0.1 -p "$PORT" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return; sleep 0.05; done
  echo "nats-server did not start: $(cat "$WORK/nats.log")" >&2; exit 1
}
stop_nats() { kill "$NATS_PID"; wait "$NATS_PID" 2>/dev/null || true; }
# wait_status JOB MEMBERS: waits until the job has MEMBERS members, balanced, no lag.
wait_status() {
  for _ in $(seq 600); do
    "$B" cluster status --nats "nats://127.0.0.1:$PORT" --job "$1" --json 2>/dev/null |
      python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if len(s['members'])==$2 and s['balanced'] and s['input_lag']==0 and s['repartition_lag']==0 else 1)" && return
    sleep 0.1
  done
  echo "job $1 did not settle on $2 members" >&2; exit 1
}
# The members started so far get CPUs round robin: member k runs its one core (--cores 1, the
# default) pinned to CPU k mod nproc, as members sharing a machine should be placed (without
# --cpus each would pin its core to the first CPU it may use, all on one). PIN_MEMBERS=0 leaves
# --cpus out (needed with MEMBER_ARGS="--cores 2": one CPU cannot hold two cores). Builds before
# members had cores ignore --cpus.
NCPU=$(nproc); STARTED=0
member() {
  local cpus=()
  [ "${PIN_MEMBERS:-1}" = 1 ] && cpus=(--cpus $((STARTED % NCPU)))
  STARTED=$((STARTED + 1))
  # MEMBER_ARGS is split on spaces on purpose: more flags for every member
  "$B" serve --in "$1" --out "$1" --job "$2" "${cpus[@]}" ${MEMBER_ARGS:-} >>"$WORK/members.out" 2>>"$WORK/members.log" & PIDS+=("$!"); RUN+=("$!"); LAST=$!
}
# Prints the largest checkpoint pause and size in the stopped lines of the members so far.
checkpoint_costs() {
  python3 - "$WORK/members.out" <<'PY'
import json, sys
ms = [json.loads(l)["metrics"] for l in open(sys.argv[1]) if '"stopped"' in l]
if ms:
    n = sum(m["checkpoints"] for m in ms)
    print(f"  checkpoints: {n}, longest pause of a partition {max(m['checkpoint_pause_us_max'] for m in ms) / 1000:.1f} ms, "
          f"mean {sum(m['checkpoint_pause_us_total'] for m in ms) / max(n, 1) / 1000:.1f} ms, largest {max(m['checkpoint_bytes_max'] for m in ms):,} bytes")
PY
  : >"$WORK/members.out"
}
# settle JOB MEMBERS LAG0: waits until JOB has MEMBERS members and balanced ownership (and no lag
# when LAG0 is 1); prints how long it took and the largest lag seen meanwhile.
settle() {
  python3 - "$B" "nats://127.0.0.1:$PORT" "$@" <<'PY'
import json, subprocess, sys, time
b, url, job, members, lag0 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
t0, most = time.time(), 0
while True:
    out = subprocess.run([b, "cluster", "status", "--nats", url, "--job", job, "--json"], capture_output=True).stdout
    s = json.loads(out)
    lag = s["input_lag"] + s["repartition_lag"]
    most = max(most, lag)
    if len(s["members"]) == members and s["balanced"] and (lag == 0 or not lag0):
        break
    if time.time() - t0 > 120:
        sys.exit(f"job {job} did not settle on {members} members: {s}")
    time.sleep(0.1)
print(f"{time.time() - t0:.2f} s (largest lag seen meanwhile: {most} messages)")
PY
}
# Stops this run's members (SIGTERM: a clean leave while the server is still up).
stop_members() { for p in "${RUN[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${RUN[@]}"; do wait "$p" 2>/dev/null || true; done; RUN=(); }
RUN=()
# end_to_end URL LABEL: sends the corpus to URL's input stream and prints words/s from the first
# input published to the last output line read.
end_to_end() {
  "$B" receive --nats "$1" --expect-lines "$WORDS" --idle-exit 120 >"$WORK/recv.json" 2>/dev/null &
  local recv=$! t0 t1
  t0=$(now)
  "$B" send --nats "$1" --framed-file "$CORPUS" --repeat "$REPEAT" --batch-bytes "$BATCH" >/dev/null 2>&1
  wait "$recv"
  t1=$(now)
  python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'{sys.argv[4]}: {sys.argv[3]} words in {t:.2f} s: {int(sys.argv[3])/t/1e6:.2f} M words/s end to end')" "$t0" "$t1" "$WORDS" "$2"
}

echo "corpus $CORPUS x $REPEAT: $FRAMES frames, $WORDS words, messages of at most $BATCH bytes"

ONLY=${ONLY:-}
if [ -z "$ONLY" ]; then
start_nats
URL="nats://127.0.0.1:$PORT/ceil"
"$B" cluster create --nats "$URL" --job ceil 2>/dev/null   # creates ceil_in before the reader starts
"$B" receive --nats "$URL" --from-input --expect-lines "$FRAMES" --idle-exit 60 >"$WORK/ceil.json" 2>/dev/null &
RECV=$!
sleep 0.5
T0=$(now)
"$B" send --nats "$URL" --framed-file "$CORPUS" --repeat "$REPEAT" --batch-bytes "$BATCH" >"$WORK/send.json" 2>/dev/null
wait "$RECV"
T1=$(now)
python3 - "$T0" "$T1" "$WORDS" "$WORK/send.json" <<'PY'
import json, sys
t0, t1, words = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = json.load(open(sys.argv[4]))
print(f"broker ceiling (publish + consume one stream): {s['messages']} msgs in {t1-t0:.2f} s: "
      f"{s['messages']/(t1-t0):,.0f} msgs/s, {words/(t1-t0)/1e6:.2f} M words/s "
      f"(publish alone {s['messages_per_sec']:,.0f} msgs/s)")
PY
stop_nats
fi

[ -n "$ONLY" ] && [ "$ONLY" != members ] && MEMBERS=""
for M in $MEMBERS; do
  start_nats
  URL="nats://127.0.0.1:$PORT/m$M"
  "$B" cluster create --nats "$URL" --job "m$M" 2>/dev/null
  for _ in $(seq "$M"); do member "$URL" "m$M"; done
  wait_status "m$M" "$M"
  end_to_end "$URL" "$M member(s)"
  stop_members
  checkpoint_costs
  stop_nats
done
[ "$ONLY" = members ] && exit 0

if [ -z "$ONLY" ]; then
# One process, no --job: the engine on its cores with NATS as its source and sink.
start_nats
URL="nats://127.0.0.1:$PORT/eng"
"$B" serve --in "$URL" --out "$URL" --cores 2 >>"$WORK/members.out" 2>>"$WORK/members.log" &
ENG=$!; PIDS+=("$ENG")
for _ in $(seq 100); do grep -q '"ready"' "$WORK/members.out" 2>/dev/null && break; sleep 0.05; done
end_to_end "$URL" "1 process, engine on NATS (serve --in/--out nats:// --cores 2, no --job)"
kill -TERM "$ENG"; wait "$ENG" 2>/dev/null || true
: >"$WORK/members.out"
stop_nats
fi

# Join, leave and kill while input flows: time to balanced ownership, the lag meanwhile.
start_nats
URL="nats://127.0.0.1:$PORT/ev"
"$B" cluster create --nats "$URL" --job ev 2>/dev/null
member "$URL" ev
member "$URL" ev; BB=$LAST
wait_status ev 2
"$B" send --nats "$URL" --framed-file "$CORPUS" --repeat $((REPEAT * 3)) --batch-bytes "$BATCH" >/dev/null 2>&1 &
SEND=$!
sleep 1
member "$URL" ev; C=$LAST
echo "join (2 -> 3 members) under load: balanced after $(settle ev 3 0)"
kill -TERM "$BB"; wait "$BB" || true
echo "SIGTERM leave (3 -> 2) under load: balanced after $(settle ev 2 0)"
kill -9 "$C"
echo "kill -9 (2 -> 1, lease 5 s) under load: balanced after $(settle ev 1 0)"
wait "$SEND"
echo "then caught up (no lag) after $(settle ev 1 1)"
stop_members
checkpoint_costs
stop_nats

[ "$ONLY" = events ] && exit 0

# The single-process figure beside it: the same corpus over loopback TCP, no NATS.
"$B" bench --framed-file "$CORPUS" --repeat 5 --rate 0 --json 2>/dev/null | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f\"single process over loopback TCP (bettong bench --framed-file CORPUS --repeat 5 --rate 0): \"
      f\"{r['msgs_per_sec']:,.0f} msgs/s, {r['msgs_per_sec'] * $WORDS / $FRAMES / 1e6:.2f} M words/s\")"
