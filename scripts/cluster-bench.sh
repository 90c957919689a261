#!/usr/bin/env bash
# Measures a word-count job on NATS JetStream (README "Running a cluster"), side by side in one
# run: the broker's own ceiling (publish and consume one stream with the same batching, no
# Bettong), end-to-end words/s with 1, 2 and 3 members, and the time from a join, a SIGTERM
# leave and a kill -9 to balanced ownership. Each measurement gets a fresh nats-server.
#
# Usage: scripts/cluster-bench.sh CORPUS [MEMBERS…]   (CORPUS: gen_corpus.py output, with its
# .counts file beside it; MEMBERS default "1 2 3"; BATCH_BYTES default 6400, ~100 frames;
# REPEAT default 5: the corpus is sent that many times)
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
  PORT=$((20000 + RANDOM % 20000))
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
member() { "$B" serve --in "$1" --out "$1" --job "$2" >/dev/null 2>>"$WORK/members.log" & PIDS+=("$!"); RUN+=("$!"); LAST=$!; }
# Stops this run's members (SIGTERM: a clean leave while the server is still up).
stop_members() { for p in "${RUN[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${RUN[@]}"; do wait "$p" 2>/dev/null || true; done; RUN=(); }
RUN=()

echo "corpus $CORPUS x $REPEAT: $FRAMES frames, $WORDS words, messages of at most $BATCH bytes"

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

for M in $MEMBERS; do
  start_nats
  URL="nats://127.0.0.1:$PORT/m$M"
  "$B" cluster create --nats "$URL" --job "m$M" 2>/dev/null
  for _ in $(seq "$M"); do member "$URL" "m$M"; done
  wait_status "m$M" "$M"
  "$B" receive --nats "$URL" --expect-lines "$WORDS" --idle-exit 120 >"$WORK/recv.json" 2>/dev/null &
  RECV=$!
  T0=$(now)
  "$B" send --nats "$URL" --framed-file "$CORPUS" --repeat "$REPEAT" --batch-bytes "$BATCH" >/dev/null 2>&1
  wait "$RECV"
  T1=$(now)
  python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); print(f'$M member(s): $WORDS words in {t:.2f} s: {int(sys.argv[3])/t/1e6:.2f} M words/s end to end')" "$T0" "$T1" "$WORDS"
  stop_members
  stop_nats
done

start_nats
URL="nats://127.0.0.1:$PORT/ev"
"$B" cluster create --nats "$URL" --job ev 2>/dev/null
"$B" send --nats "$URL" --framed-file "$CORPUS" --repeat "$REPEAT" --batch-bytes "$BATCH" >/dev/null 2>&1
member "$URL" ev; A=$LAST
member "$URL" ev; BB=$LAST
wait_status ev 2
T0=$(now); member "$URL" ev; C=$LAST; wait_status ev 3; T1=$(now)
echo "join (2 -> 3 members): balanced, no lag after $(python3 -c "print(f'{$T1-$T0:.2f}')") s"
T0=$(now); kill -TERM "$BB"; wait "$BB"; wait_status ev 2; T1=$(now)
echo "SIGTERM leave (3 -> 2): balanced, no lag after $(python3 -c "print(f'{$T1-$T0:.2f}')") s"
T0=$(now); kill -9 "$C"; wait_status ev 1; T1=$(now)
echo "kill -9 (2 -> 1, lease 5 s): balanced, no lag after $(python3 -c "print(f'{$T1-$T0:.2f}')") s"
stop_members
stop_nats

# The single-process figure beside it: the same corpus over loopback TCP, no NATS.
"$B" bench --framed-file "$CORPUS" --repeat 5 --rate 0 --json 2>/dev/null | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f\"single process over loopback TCP (bettong bench --framed-file CORPUS --repeat 5 --rate 0): \"
      f\"{r['msgs_per_sec']:,.0f} msgs/s, {r['msgs_per_sec'] * $WORDS / $FRAMES / 1e6:.2f} M words/s\")"
