"""Bettong for Python: stream processing in plain Python classes and functions, run by the
Bettong thread-per-core engine (framing, key hashing, routing between cores, batching and sink
I/O in Rust; your steps in Python).

Word count, as in the talk::

    import bettong as bt

    app = (bt.source(bt.TCPSource("words@127.0.0.1:7000"))
           .to_multi(Split)                    # compute_multi(data) -> words
           .key_by()                           # each word is its own key
           .to_state(CountWord, WordTotals)    # compute(word, totals) -> WordCount
           .to_sink(bt.TCPSink("127.0.0.1:7001"), Encoder))
    bt.run(app, cores=2)
"""

from . import native
from .api import (
    Application,
    Computation,
    ComputationMulti,
    Encoder,
    Keyed,
    StateCodec,
    StateComputation,
    Stateful,
    Stream,
    source,
)
from .checks import BuildError
from .connectors import (
    FileSource,
    MemorySink,
    MemorySource,
    NATSSink,
    NATSSource,
    TCPSink,
    TCPSource,
)
from .runtime import Report, Running, run, start

__all__ = [
    "Application",
    "BuildError",
    "Computation",
    "ComputationMulti",
    "Encoder",
    "FileSource",
    "Keyed",
    "MemorySink",
    "MemorySource",
    "NATSSink",
    "NATSSource",
    "Report",
    "Running",
    "StateCodec",
    "StateComputation",
    "Stateful",
    "Stream",
    "TCPSink",
    "TCPSource",
    "native",
    "run",
    "source",
    "start",
]
