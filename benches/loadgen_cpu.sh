#!/usr/bin/env bash
# Throughput over TCP under ../shared/peers/loadgen with the server's CPU per message: loadgen
# starts the server, and this script samples the server process's CPU time from /proc/PID/stat
# every 50 ms while it runs (the last sample before loadgen kills it is the total). Issue 11's
# "over TCP on 2 cores" and "server CPU per message from /proc" goals, for Bettong and tokio-wc
# side by side, alternating, ROUNDS runs each.
#
#   benches/loadgen_cpu.sh target/release/bettong /path/to/tokio-wc /path/to/loadgen /tmp/corpus.bin 3
#
# Bettong gets 5 passes over each of 4 connections and tokio-wc 1 (it is ~10x slower), both on 2
# cores, loadgen sharing them as in README's Performance section. Prints per run:
# `server msgs/s cpu_s msgs cpu_us_per_msg`. (A server's CPU includes its start and the idle
# moments between connections: a few ms, under 1 % of a run.)
set -eu
B=$1; TOKIO=$2; LOADGEN=$3; CORPUS=$4; ROUNDS=${5:-3}
MSGS=$(python3 -c 'import sys,struct
d=open(sys.argv[1],"rb").read(); n=i=0
while i < len(d): (l,)=struct.unpack(">I", d[i:i+4]); i += 4 + l; n += 1
print(n)' "$CORPUS")
WORDS=$(python3 -c 'import sys,struct
d=open(sys.argv[1],"rb").read(); n=i=0
while i < len(d):
    (l,)=struct.unpack(">I", d[i:i+4]); n += len(d[i+4:i+4+l].split()); i += 4 + l
print(n)' "$CORPUS")
TICK=$(getconf CLK_TCK)

run() { # name reps -- cmd...
  local name=$1 reps=$2; shift 3
  local out; out=$(mktemp)
  "$LOADGEN" "$CORPUS" "$reps" 4 $((WORDS * reps * 4)) -- "$@" >"$out" 2>&1 &
  local L=$! pid="" ticks=0
  while kill -0 $L 2>/dev/null; do
    [ -z "$pid" ] && pid=$(pgrep -P $L | head -1 || true)
    if [ -n "$pid" ] && [ -r /proc/$pid/stat ]; then
      local t; t=$(awk '{print $14+$15}' /proc/$pid/stat 2>/dev/null || echo "")
      [ -n "$t" ] && ticks=$t
    fi
    sleep 0.05
  done
  wait $L || { echo "$name: loadgen failed:"; cat "$out"; rm -f "$out"; return; }
  python3 -c 'import sys
name, ticks, tick, msgs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cpu = ticks / tick
print(f"{name} [{sys.argv[5]}] cpu_s {cpu:.2f} msgs {msgs} cpu_us_per_msg {cpu * 1e6 / msgs:.2f}")' \
    "$name" "$ticks" "$TICK" $((MSGS * reps * 4)) "$(tr '\n' ' ' <"$out")"
  rm -f "$out"
}

for i in $(seq 1 "$ROUNDS"); do
  run bettong 5 -- "$B" serve --in {IN} --out {OUT} --cores 2 --progress-interval 0
  run tokio-wc 1 -- "$TOKIO" {IN} {OUT} 2
done
