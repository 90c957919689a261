"""The word count in Bytewax 0.21 (flat_map, key_on, stateful_map), on a framed corpus, for
the benchmark beside Bettong's. Every worker reads every Nth frame; the output lines are made
and dropped by the sink. Not part of CI (Bytewax is installed in its own venv):

    python -m bytewax.run "bytewax_wc:flow('/tmp/corpus.bin')" -w 2
"""

from __future__ import annotations

import re
from typing import Any, List, Optional

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from frames import read_frames

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
SEPARATORS = re.compile(r"[ \t\n\x0b\x0c\r]+")


class _Part(StatelessSourcePartition[str]):
    def __init__(self, frames: List[str]) -> None:
        self._frames, self._pos = frames, 0

    def next_batch(self) -> List[str]:
        if self._pos >= len(self._frames):
            raise StopIteration()
        batch = self._frames[self._pos : self._pos + 1000]
        self._pos += 1000
        return batch


class FramedFile(DynamicSource[str]):
    """Worker i of n reads frames i, i+n, i+2n, …"""

    def __init__(self, path: str) -> None:
        self._path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(read_frames(self._path)[worker_index::worker_count])


class _Drop(StatelessSinkPartition[Any]):
    def write_batch(self, items: List[Any]) -> None:
        pass


class Drop(DynamicSink[Any]):
    """Drops every item (the lines were made by the step before)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop()


def split(text: str) -> List[str]:
    return [w for w in (x.lower().strip(PUNCTUATION) for x in SEPARATORS.split(text)) if w]


def count(total: Optional[int], word: str) -> tuple[int, int]:
    total = (total or 0) + 1
    return total, total


def flow(path: str) -> Dataflow:
    f = Dataflow("word_count")
    s = op.input("in", f, FramedFile(path))
    s = op.flat_map("split", s, split)
    s = op.key_on("key", s, lambda w: w)
    s = op.stateful_map("count", s, count)
    s = op.map("encode", s, lambda kv: f"{kv[0]} => {kv[1]}\n")
    op.output("out", s, Drop())
    return f
