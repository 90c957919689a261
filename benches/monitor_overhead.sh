#!/usr/bin/env bash
# What serving and scraping the metrics costs the data path, measured side by side: the
# word-count server's throughput under `bettong send`, without the metrics and with
# `--metrics-addr` scraped every second (/metrics and /metrics.json, as Prometheus and the
# monitoring page do), alternating, ROUNDS runs of each. Ports 18400 and up must be free.
#
#   benches/monitor_overhead.sh target/release/bettong /tmp/corpus.bin 30 6
#
# (the corpus from ../shared/tools/gen_corpus.py; REPEAT passes of it per run). Prints one line
# per run: `plain|scraped N msgs/s`, the sender's rate.
set -u
B=$1; CORPUS=$2; REPEAT=$3; ROUNDS=$4
port=18400
run() {
  local mode=$1 in=$((port)) out=$((port+1)) mon=$((port+2)); port=$((port+10))
  $B receive --listen 127.0.0.1:$out --no-write >/dev/null 2>&1 & local R=$!
  sleep 0.3
  local extra=(--progress-interval 0)
  [ "$mode" = scraped ] && extra+=(--metrics-addr 127.0.0.1:$mon)
  $B serve --in 127.0.0.1:$in --out 127.0.0.1:$out --cores 2 "${extra[@]}" >/dev/null 2>&1 & local S=$!
  sleep 0.7
  local C=""
  if [ "$mode" = scraped ]; then
    (while :; do curl -s -o /dev/null http://127.0.0.1:$mon/metrics; curl -s -o /dev/null http://127.0.0.1:$mon/metrics.json; sleep 1; done) & C=$!
  fi
  local line
  line=$($B send --host 127.0.0.1:$in --framed-file $CORPUS --repeat $REPEAT --connections 4 2>&1 | grep -o '[0-9]* msgs/s' | tail -1)
  [ -n "$C" ] && kill $C
  kill -TERM $S; wait $S 2>/dev/null; kill $R; wait $R 2>/dev/null
  echo "$mode $line"
}
for i in $(seq 1 $ROUNDS); do run plain; run scraped; done
