"""Where records come from and where output goes: the sources and sinks of an application.

Every source is framed by the engine, in Rust: a 4-byte big-endian length, then that many
bytes (Wallaroo's ``decoder(header_length=4, length_fmt=">I")``). A frame becomes a ``str``
(a frame that is not UTF-8 is rejected, counted and logged), or whatever the source's
``decoder`` returns for its ``bytes`` (an exception in the decoder rejects the frame).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

Decoder = Callable[[bytes], Any]
"""A decoder: a frame's payload in, the record out (raising rejects the frame)."""


@dataclass
class TCPSource:
    """Framed messages over TCP: every core listens on ``addr`` (``[NAME@]HOST:PORT``; port 0
    picks a free port, see :attr:`bettong.Running.local_addr`)."""

    addr: str
    decoder: Optional[Decoder] = None
    max_frame: Optional[int] = None
    """Largest accepted payload in bytes (default 1 MiB); a larger one closes its connection."""


@dataclass
class FileSource:
    """A framed file (``gen_corpus.py``'s format), read once, split between the cores. An
    application whose sources are all files stops once they are read."""

    path: Union[str, "os.PathLike[str]"]
    decoder: Optional[Decoder] = None
    max_frame: Optional[int] = None
    """Largest accepted payload in bytes (default 1 MiB); a larger frame is rejected."""


@dataclass
class MemorySource:
    """Frames given in memory, for tests: each ``bytes`` (or ``str``, encoded as UTF-8) is one
    frame's payload."""

    frames: Iterable[Union[bytes, str]]
    decoder: Optional[Decoder] = None


Source = Union[TCPSource, FileSource, MemorySource]
"""Any source."""


@dataclass
class TCPSink:
    """Output over TCP: every core opens its own connection to ``addr`` (``HOST:PORT``), so one
    key's outputs leave in order on one connection. A receiver that is not there yet is retried
    with backoff."""

    addr: str


@dataclass
class MemorySink:
    """Output kept in memory, for tests: :attr:`bettong.Report.outputs`."""

    _unused: None = field(default=None, repr=False)


Sink = Union[TCPSink, MemorySink]
"""Any sink."""


def source_plan(src: Source) -> dict[str, Any]:
    """The engine's description of ``src`` (see ``runner.rs``)."""
    plan: dict[str, Any] = {"addr": None, "path": None, "frames": None, "max_frame": None}
    if isinstance(src, TCPSource):
        plan.update(kind="tcp", addr=src.addr, max_frame=src.max_frame)
    elif isinstance(src, FileSource):
        plan.update(kind="file", path=os.fspath(src.path), max_frame=src.max_frame)
    elif isinstance(src, MemorySource):
        frames = [f.encode() if isinstance(f, str) else bytes(f) for f in src.frames]
        plan.update(kind="memory", frames=frames)
    else:
        raise TypeError(
            f"a source must be TCPSource, FileSource or MemorySource, not {type(src).__name__}"
        )
    return plan
