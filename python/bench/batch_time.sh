#!/usr/bin/env bash
# How long a core keeps the GIL per batch (python/src/gil_batch.rs, BATCH_TIME), measured: the
# word count on 2 cores with each bound in turn, interleaved, ROUNDS rounds.
#   python/bench/batch_time.sh CORPUS ROUNDS BETTONG_PYTHON [MS...]
set -euo pipefail
corpus=$1 rounds=$2 bt=$3; shift 3
here="$(cd "$(dirname "$0")" && pwd)"
words=$(python3 -c "import sys; print(sum(int(l.split('\t')[1]) for l in open(sys.argv[1] + '.counts')))" "$corpus")
for r in $(seq "$rounds"); do
  for ms in ${@:-2 20 100}; do
    port=$((20000 + RANDOM % 20000))
    python3 "$here/sink.py" "$port" "$words" >/dev/null &
    sink=$!
    sleep 0.3
    t0=$(date +%s.%N)
    BETTONG_PYTHON_BATCH_MS=$ms "$bt" "$here/../../examples/python/word_count.py" \
      --in "file:$corpus" --out "127.0.0.1:$port" --cores 2 >/dev/null 2>&1
    wait "$sink"
    t1=$(date +%s.%N)
    python3 -c "import sys; print(f'round {sys.argv[1]} {sys.argv[2]} ms: {int(sys.argv[3]) / (float(sys.argv[5]) - float(sys.argv[4])) / 1e6:.3f} M words/s')" "$r" "$ms" "$words" "$t0" "$t1"
  done
done
