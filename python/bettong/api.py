"""The application builder: plain Python classes and functions in the spirit of Wallaroo 0.6.

An application is: one or more sources, each with its stateless steps (``to``, ``to_multi``)
and ``key_by``; the keyed streams merged into one state step (``to_state``: a state object per
key, made by the user's state class, on the core that owns the key); then an encoder and a
sink. Every user class and function is checked when the application is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol, Tuple, Union

from . import native
from .checks import BuildError, function, method, name_of, state_class
from .connectors import MemorySink, NATSSink, Sink, Source, TCPSink, sink_plan, source_plan


class Computation(Protocol):
    """A ``to`` step as an object: ``compute(data)`` returns the output, or ``None`` to drop."""

    def compute(self, data: Any) -> Any:
        """One output for ``data``, or ``None`` to drop it."""


class ComputationMulti(Protocol):
    """A ``to_multi`` step as an object: ``compute_multi(data)`` returns an iterable."""

    def compute_multi(self, data: Any) -> Iterable[Any]:
        """Every output for ``data``."""


class StateComputation(Protocol):
    """A state step as an object: ``compute(data, state)`` updates the key's state and returns
    the output, or ``None`` for no output."""

    def compute(self, data: Any, state: Any) -> Any:
        """Updates ``state`` (the key's own object) with ``data``; the output or ``None``."""


class Encoder(Protocol):
    """An encoder as an object: ``encode(data)`` returns the ``bytes`` (or ``str``) to send."""

    def encode(self, data: Any) -> Union[bytes, str]:
        """The bytes for the sink (a ``str`` is sent as UTF-8)."""


class StateCodec(Protocol):
    """How states are written into checkpoints, instead of pickle."""

    def encode(self, state: Any) -> bytes:
        """A key's state as bytes."""

    def decode(self, data: bytes) -> Any:
        """The state ``encode`` wrote."""


Step = Union[Callable[[Any], Any], Computation, type]
"""What ``to`` takes: a function, or a :class:`Computation` (object or class)."""
StepMulti = Union[Callable[[Any], Iterable[Any]], ComputationMulti, native.SplitWords, type]
"""What ``to_multi`` takes: a function, a :class:`ComputationMulti`, or a native splitter."""
StateStep = Union[Callable[[Any, Any], Any], StateComputation, native.Count, type]
"""What ``to_state`` takes: a function ``f(data, state)``, or a :class:`StateComputation`."""
EncoderLike = Union[Callable[[Any], Union[bytes, str]], Encoder, native.WordCountEncoder, type]
"""What ``to_sink`` takes as encoder: a function, or an :class:`Encoder`."""


@dataclass
class _Source:
    config: Source
    steps: list[Tuple[str, Any, str]] = field(default_factory=list)
    key: Optional[Tuple[Callable[[Any], Any], str]] = None


class Stream:
    """Records of one source, before ``key_by``: stateless steps run on the core that read
    the frame."""

    def __init__(self, config: Source) -> None:
        self._src = _Source(config)

    def to(self, step: Step) -> "Stream":
        """Adds a step with one output per record: a function ``f(data)``, or an object (or
        class) with ``compute(data)``. ``None`` drops the record."""
        self._src.steps.append(("to", method(step, "compute", 1, "to"), name_of(step)))
        return self

    def to_multi(self, step: StepMulti) -> "Stream":
        """Adds a step with any number of outputs per record: a function ``f(data)`` returning
        an iterable, an object (or class) with ``compute_multi(data)``, or
        :class:`bettong.native.SplitWords`."""
        if isinstance(step, native.SplitWords):
            self._src.steps.append(("native_split", None, repr(step)))
        else:
            fn = method(step, "compute_multi", 1, "to_multi")
            self._src.steps.append(("to_multi", fn, name_of(step)))
        return self

    def key_by(self, key: Optional[Callable[[Any], Union[str, bytes]]] = None) -> "Keyed":
        """Keys each record by ``key(data)`` (a ``str`` or ``bytes``), or by the record itself
        when no function is given. Records cross to the core that owns their key here."""
        if key is not None:
            key = function(key, 1, "key_by")
            self._src.key = (key, name_of(key))
        return Keyed([self._src])


class Keyed:
    """Keyed records of one or more sources; next comes the state step."""

    def __init__(self, sources: list[_Source]) -> None:
        self._sources = sources

    def merge(self, *others: "Keyed") -> "Keyed":
        """Feeds every other keyed stream into the same state step (Wallaroo's ``merge``)."""
        return Keyed(self._sources + [s for o in others for s in o._sources])

    def to_state(
        self,
        computation: StateStep,
        state_class_: Optional[Callable[[], Any]] = None,
        *,
        codec: Optional[StateCodec] = None,
    ) -> "Stateful":
        """The state step: each key's state is made by ``state_class_()`` on its first record,
        on the key's owner core; ``computation(data, state)`` (a function, or an object with
        ``compute(data, state)``) returns the output or ``None``. States are pickled into
        checkpoints, or written by ``codec`` (``encode(state) -> bytes``, ``decode(bytes)``)."""
        if isinstance(computation, native.Count):
            return Stateful(self._sources, None, None, None, native=True)
        if state_class_ is None:
            raise BuildError("to_state needs a state class (or function) making a key's first state")
        cls = state_class(state_class_)
        fn = method(computation, "compute", 2, "to_state")
        pair = None
        if codec is not None:
            pair = (method(codec, "encode", 1, "the state codec"),
                    method(codec, "decode", 1, "the state codec"))
        return Stateful(self._sources, (cls, name_of(cls)), (fn, name_of(computation)), pair)


class Stateful:
    """A state step's outputs; next comes the sink and its encoder."""

    def __init__(self, sources: list[_Source], cls: Any, compute: Any, codec: Any,
                 native: bool = False) -> None:
        self._sources, self._cls, self._compute, self._codec = sources, cls, compute, codec
        self._native = native

    def to_sink(self, sink: Sink, encoder: EncoderLike) -> "Application":
        """The encoder (a function, or an object with ``encode(data)``, returning ``bytes`` or
        ``str``) and where its bytes go. This completes the application."""
        if not isinstance(sink, (TCPSink, MemorySink, NATSSink)):
            raise BuildError(
                f"a sink must be TCPSink, MemorySink or NATSSink, not {type(sink).__name__}"
            )
        if self._native or isinstance(encoder, native.WordCountEncoder):
            return self._native_app(sink, encoder)
        fn = method(encoder, "encode", 1, "to_sink's encoder")
        return Application(self._sources, self._cls, self._compute, self._codec,
                           (fn, name_of(encoder)), sink)

    def _native_app(self, sink: Sink, encoder: EncoderLike) -> "Application":
        ok = (self._native and isinstance(encoder, native.WordCountEncoder)
              and len(self._sources) == 1 and self._sources[0].key is None
              and [s[0] for s in self._sources[0].steps] == ["native_split"]
              and getattr(self._sources[0].config, "decoder", None) is None)
        if not ok:
            raise BuildError(
                "bettong.native.Count and WordCountEncoder run only as the native word count: "
                "one source without decoder, to_multi(native.SplitWords()), key_by(), "
                "to_state(native.Count()), to_sink(sink, native.WordCountEncoder())"
            )
        return Application(self._sources, None, None, None, None, sink, native=True)


def _missing(_: Any = None, *__: Any) -> None:
    raise AssertionError("a native application has no Python step")  # never called by the engine


class Application:
    """A complete application, ready for :func:`bettong.run` or :func:`bettong.start`."""

    def __init__(self, sources: list[_Source], cls: Any, compute: Any, codec: Any,
                 encoder: Any, sink: Sink, native: bool = False) -> None:
        self._sources, self._cls, self._compute = sources, cls, compute
        self._codec, self._encoder, self._sink, self._native = codec, encoder, sink, native

    @property
    def sources(self) -> list[Source]:
        """The sources, in merge order."""
        return [s.config for s in self._sources]

    def plan(self) -> dict[str, Any]:
        """The description the engine runs (see ``python/src/runner.rs``)."""
        sources = []
        for s in self._sources:
            p = source_plan(s.config)
            dec = getattr(s.config, "decoder", None)
            p.update(decoder=(dec, name_of(dec)) if dec is not None else None,
                     steps=s.steps, key=s.key)
            sources.append(p)
        none = (_missing, "-")
        return {
            "sources": sources,
            "state_class": self._cls or none,
            "compute": self._compute or none,
            "codec": self._codec,
            "encoder": self._encoder or none,
            **sink_plan(self._sink),
            "native": self._native,
        }


def source(config: Source) -> Stream:
    """Starts a stream at ``config`` (Wallaroo's ``new_pipeline``)."""
    return Stream(config)
