"""Reads a framed corpus (4-byte big-endian length, then the payload; gen_corpus.py's output)
into a list of ``str`` messages: shared by the benchmark scripts beside it."""

from __future__ import annotations

import struct


def read_frames(path: str) -> list[str]:
    """Every frame's payload, decoded as UTF-8, in file order."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    return out
