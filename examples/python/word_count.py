"""Wallaroo's word count from the talk ("Stream Processing with Python in Wallaroo"), in plain
Python on Bettong: Split, CountWord, WordTotals and an encoder. It holds the contract of
``../shared/spec/word-count.md``.

    python3 examples/python/word_count.py --in [NAME@]HOST:PORT|file:PATH|nats://HOST:PORT/PREFIX
        --out HOST:PORT|nats://HOST:PORT/PREFIX [--cores N] [--mode process|in-process]

With ``--in file:PATH`` (a framed file) it reads the file once, flushes all output and exits 0;
over TCP or NATS it runs until SIGINT or SIGTERM, then stops gracefully and exits 0. NATS
JetStream is read and written as ``bettong serve`` does without ``--job`` (stream
``PREFIX_in``, output lines on ``PREFIX.out.<q>``); ``--out nats://…`` runs in-process. Like ``bettong
serve``, it prints a ready and a stopped JSON line on stdout; its log goes to stderr.
``--native`` runs the same application with the built-in Rust steps instead, for comparison.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

import bettong as bt

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
SEPARATORS = re.compile(r"[ \t\n\x0b\x0c\r]+")


class Split:
    """A message into its words: split on ASCII whitespace, lowercase, strip punctuation."""

    def compute_multi(self, data: str) -> list[str]:
        words = (w.lower().strip(PUNCTUATION) for w in SEPARATORS.split(data))
        return [w for w in words if w]


class WordTotals:
    """One word's running total (the state of one key)."""

    def __init__(self) -> None:
        self.count = 0

    def update(self) -> int:
        self.count += 1
        return self.count


class WordCount:
    """An output: a word and its count so far."""

    __slots__ = ("word", "count")

    def __init__(self, word: str, count: int) -> None:
        self.word = word
        self.count = count


class CountWord:
    """The state computation: counts the word in its WordTotals."""

    def compute(self, word: str, totals: WordTotals) -> WordCount:
        return WordCount(word, totals.update())


class Encoder:
    """``word => count``, one line per output."""

    def encode(self, data: WordCount) -> str:
        return f"{data.word} => {data.count}\n"


def source_of(spec: str) -> bt.TCPSource | bt.FileSource | bt.NATSSource:
    """``--in``: ``file:PATH``, ``nats://HOST:PORT/PREFIX``, or ``[NAME@]HOST:PORT``."""
    if spec.startswith("file:"):
        return bt.FileSource(spec[len("file:"):])
    if spec.startswith("nats://"):
        return bt.NATSSource(spec)
    return bt.TCPSource(spec)


def sink_of(spec: str) -> bt.TCPSink | bt.NATSSink:
    """``--out``: ``nats://HOST:PORT/PREFIX``, or ``HOST:PORT``."""
    if spec.startswith("nats://"):
        return bt.NATSSink(spec)
    return bt.TCPSink(spec)


def application(src: bt.TCPSource | bt.FileSource | bt.NATSSource,
                out: bt.TCPSink | bt.MemorySink | bt.NATSSink,
                native: bool = False) -> bt.Application:
    """The word count, in Python (or with the built-in native steps)."""
    if native:
        return (bt.source(src).to_multi(bt.native.SplitWords()).key_by()
                .to_state(bt.native.Count()).to_sink(out, bt.native.WordCountEncoder()))
    return (bt.source(src).to_multi(Split).key_by()
            .to_state(CountWord, WordTotals).to_sink(out, Encoder))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="input", required=True,
                   help="[NAME@]HOST:PORT to listen on, file:PATH of a framed file, or "
                        "nats://HOST:PORT/PREFIX (the JetStream stream PREFIX_in)")
    p.add_argument("--out", required=True,
                   help="HOST:PORT of the receiver, or nats://HOST:PORT/PREFIX (in-process mode)")
    p.add_argument("--cores", type=int, default=None,
                   help="cores (default: every online core; 1 with --mode in-process under the GIL)")
    p.add_argument("--mode", choices=["process", "in-process"], default=None,
                   help="where the Python steps run: worker processes, one front and one state "
                        "worker per core (the default, except with --resilience-dir or "
                        "--out nats://…), or the "
                        "engine's own cores under the GIL")
    p.add_argument("--max-frame", type=int, default=None, help="largest payload (default 1 MiB)")
    p.add_argument("--resilience-dir", default=None,
                   help="checkpoint the counts here, and restore from it at start")
    p.add_argument("--checkpoint-interval", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument("--metrics-addr", default=None, help="HOST:PORT: serve Prometheus /metrics and the monitoring page")
    p.add_argument("--native", action="store_true", help="the built-in Rust steps instead")
    args = p.parse_args(argv)
    try:
        src = source_of(args.input)
        src.max_frame = args.max_frame
        app = application(src, sink_of(args.out), args.native)
        bt.run(app, cores=args.cores, resilience_dir=args.resilience_dir,
               checkpoint_interval=args.checkpoint_interval, metrics_addr=args.metrics_addr,
               mode=args.mode, announce=True)
    except (RuntimeError, ValueError) as e:
        print(f"word_count: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
