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


@dataclass
class NATSSource:
    """A NATS JetStream input stream: ``url`` is ``nats://HOST:PORT/PREFIX``, the stream
    ``PREFIX_in`` (subjects ``PREFIX.in.<i>``; each message holds any number of frames, as
    ``bettong send --nats`` publishes them). It is read from its first message at every start
    (the counts are not checkpointed, so ``resilience_dir`` is refused with it), and created
    with ``in_partitions`` subjects if it does not exist. The application runs until stopped
    (SIGINT/SIGTERM, or :meth:`bettong.Running.stop`). Works in both modes."""

    url: str
    decoder: Optional[Decoder] = None
    max_frame: Optional[int] = None
    """Largest accepted payload in bytes (default 1 MiB); a larger frame is rejected."""
    in_partitions: int = 8
    """Subjects of the input stream, should it have to be created (an existing one is read
    whatever it has)."""

    def __post_init__(self) -> None:
        _check_nats(self.url, "NATSSource")
        _check_positive(self.in_partitions, "NATSSource's in_partitions")


Source = Union[TCPSource, FileSource, MemorySource, NATSSource]
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


@dataclass
class NATSSink:
    """Output published on a NATS JetStream stream: ``url`` is ``nats://HOST:PORT/PREFIX``, the
    stream ``PREFIX_out`` (created if absent), one subject ``PREFIX.out.<q>`` per key partition,
    ``q = fnv1a32(key) % partitions``, as ``bettong serve --out nats://…`` publishes (read it
    with ``bettong receive --nats``). The encoder's output must be ``\n``-ended lines; a line's
    key is what precedes its first ``" => "`` (the word count's ``word => count``), or the whole
    line, so one key's lines stay in order on one subject. In-process mode only: in process mode
    the state workers write the output themselves (:func:`bettong.start` refuses it there, and
    picks in-process mode for it when no ``mode`` is given)."""

    url: str
    partitions: int = 64
    """Key partitions: the output stream's subjects."""

    def __post_init__(self) -> None:
        _check_nats(self.url, "NATSSink")
        _check_positive(self.partitions, "NATSSink's partitions")


def _check_nats(url: Any, what: str) -> None:
    """Refuses, at once, a URL that is not a string of the form ``nats://HOST:PORT/PREFIX``
    (the engine checks the rest when the application starts)."""
    if not isinstance(url, str) or not url.startswith("nats://"):
        raise ValueError(f"{what}'s url must be nats://HOST:PORT/PREFIX, not {url!r}")


def _check_positive(n: Any, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1 << 16:
        raise ValueError(f"{what} must be an integer from 1 to 65536, not {n!r}")


Sink = Union[TCPSink, MemorySink, NATSSink]
"""Any sink."""


def source_plan(src: Source) -> dict[str, Any]:
    """The engine's description of ``src`` (see ``runner.rs``)."""
    plan: dict[str, Any] = {"addr": None, "path": None, "frames": None, "max_frame": None,
                            "url": None, "in_partitions": None}
    if isinstance(src, TCPSource):
        plan.update(kind="tcp", addr=src.addr, max_frame=src.max_frame)
    elif isinstance(src, FileSource):
        plan.update(kind="file", path=os.fspath(src.path), max_frame=src.max_frame)
    elif isinstance(src, MemorySource):
        frames = [f.encode() if isinstance(f, str) else bytes(f) for f in src.frames]
        plan.update(kind="memory", frames=frames)
    elif isinstance(src, NATSSource):
        plan.update(kind="nats", url=src.url, max_frame=src.max_frame,
                    in_partitions=src.in_partitions)
    else:
        raise TypeError(
            "a source must be TCPSource, FileSource, MemorySource or NATSSource, not "
            f"{type(src).__name__}"
        )
    return plan


def sink_plan(sink: Sink) -> dict[str, Any]:
    """The engine's description of ``sink`` (the plan's ``sink_*`` fields, see ``runner.rs``)."""
    if isinstance(sink, TCPSink):
        return {"sink_kind": "tcp", "sink_addr": sink.addr, "sink_partitions": None}
    if isinstance(sink, NATSSink):
        return {"sink_kind": "nats", "sink_addr": sink.url, "sink_partitions": sink.partitions}
    if isinstance(sink, MemorySink):
        return {"sink_kind": "memory", "sink_addr": None, "sink_partitions": None}
    raise TypeError(
        f"a sink must be TCPSink, MemorySink or NATSSink, not {type(sink).__name__}"
    )
