#!/usr/bin/env bash
# The Python word-count benchmark (README, "Python"): every contender on the same framed corpus,
# interleaved round by round so that load from elsewhere on the machine falls on all alike.
# Each figure is the corpus's words over the command's wall time (interpreter start included).
# Bettong's Python rows: process mode (worker processes) and in-process mode (the engine's cores,
# under the GIL), on 1 and 2 cores; the default row is what runs without --mode and --cores.
# The receiver listens on a random port in BENCH_PORT_BASE..+999 (default 24000).
#
#   python/bench/run_all.sh CORPUS ROUNDS BETTONG_PYTHON [BYTEWAX_PYTHON]
#
# BETTONG_PYTHON: a python3 with `pip install ./python` done; BYTEWAX_PYTHON: one with
# `pip install bytewax==0.21.1` (kept apart: Bytewax is not a dependency of this project).
set -euo pipefail
corpus=$1 rounds=$2 bt=$3 bw=${4:-}
here="$(cd "$(dirname "$0")" && pwd)"
example="$here/../../examples/python/word_count.py"
words=$(python3 -c "import sys; print(sum(int(l.split('\t')[1]) for l in open(sys.argv[1] + '.counts')))" "$corpus")

timed() {  # NAME CMD... : prints "NAME M-words/s"
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'{sys.argv[1]}\t{int(sys.argv[2]) / (float(sys.argv[4]) - float(sys.argv[3])) / 1e6:.3f}')" \
    "$name" "$words" "$t0" "$t1"
}

bettong() {  # [ARGS...]: the example with a file source into a counting receiver
  local port=$((${BENCH_PORT_BASE:-24000} + RANDOM % 1000))
  python3 "$here/sink.py" "$port" "$words" &
  local sink=$!
  sleep 0.3
  "$bt" "$example" --in "file:$corpus" --out "127.0.0.1:$port" "$@"
  wait "$sink"
}

for r in $(seq "$rounds"); do
  echo "# round $r"
  timed "bettong-python-default" bettong
  timed "bettong-python-process-1-core" bettong --mode process --cores 1
  timed "bettong-python-process-2-cores" bettong --mode process --cores 2
  # The same with every record pickled between the processes (str and bytes too): what the
  # tagged encoding of python/src/wire.rs saves.
  BETTONG_PICKLE_ALL=1 timed "bettong-python-process-2-cores-pickle-all" bettong --mode process --cores 2
  timed "bettong-python-in-process-1-core" bettong --mode in-process --cores 1
  timed "bettong-python-in-process-2-cores" bettong --mode in-process --cores 2
  timed "bettong-native-2-cores" bettong --cores 2 --native
  timed "plain-python-loop" "$bt" "$here/plain_loop.py" "$corpus"
  [ -n "$bw" ] || continue  # no Bytewax python given: the Bettong and plain-loop rows only
  (cd "$here" && timed "bytewax-w1" "$bw" -m bytewax.run "bytewax_wc:flow('$corpus')" -w 1)
  (cd "$here" && timed "bytewax-w2" "$bw" -m bytewax.run "bytewax_wc:flow('$corpus')" -w 2)
  (cd "$here" && timed "bytewax-p2" "$bw" -m bytewax.testing "bytewax_wc:flow('$corpus')" -w 1 -p 2)
done
