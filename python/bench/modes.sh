#!/usr/bin/env bash
# The Python word count in each mode and core count, alternating round by round: wall seconds
# and CPU seconds (user+sys of the whole process tree: process mode's workers are waited for
# and so counted). CPU seconds say what each mode costs per word whatever the machine's load.
#
#   python/bench/modes.sh CORPUS ROUNDS BETTONG_PYTHON
#
# The receiver listens on a random port in BENCH_PORT_BASE..+999 (default 24000).
set -euo pipefail
corpus=$1 rounds=$2 bt=$3
here="$(cd "$(dirname "$0")" && pwd)"
example="$here/../../examples/python/word_count.py"
words=$(python3 -c "import sys; print(sum(int(l.split('\t')[1]) for l in open(sys.argv[1] + '.counts')))" "$corpus")
for r in $(seq "$rounds"); do
  for cfg in "process 2" "in-process 1" "process 1" "in-process 2"; do
    set -- $cfg
    port=$((${BENCH_PORT_BASE:-24000} + RANDOM % 1000))
    "$bt" "$here/sink.py" "$port" "$words" >/dev/null &
    sink=$!
    sleep 0.3
    /usr/bin/time -f "round $r	$1 --cores $2	wall %e s	cpu %U+%S s" \
      "$bt" "$example" --in "file:$corpus" --out "127.0.0.1:$port" --mode "$1" --cores "$2" 2>&1 >/dev/null | grep wall
    wait "$sink"
  done
done
