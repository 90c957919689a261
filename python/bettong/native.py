"""Built-in native steps: the same work as a Python step, done in Rust by the engine.

- :class:`SplitWords`, for ``to_multi``: word count's splitter with the spec's rules (split
  on ASCII whitespace including VT and FF, full Unicode lowercasing, Wallaroo's punctuation
  stripped from both ends, empty words dropped). Usable with Python steps around it.
- :class:`Count` for ``to_state`` and :class:`WordCountEncoder` for ``to_sink``: a running
  count per key, written as ``word => count``. Together with ``SplitWords`` and ``key_by()``
  on one text source, the whole application runs in Rust (the engine's own word count).
"""

from __future__ import annotations


class SplitWords:
    """Splits a ``str`` record into its words, in Rust (a ``to_multi`` step)."""

    def __repr__(self) -> str:
        return "bettong.native.SplitWords()"


class Count:
    """A running count per key, in Rust (a ``to_state`` computation; no state class needed).
    Only with :class:`SplitWords` and :class:`WordCountEncoder`."""

    def __repr__(self) -> str:
        return "bettong.native.Count()"


class WordCountEncoder:
    """Writes ``word => count\\n`` for :class:`Count`'s outputs, in Rust."""

    def __repr__(self) -> str:
        return "bettong.native.WordCountEncoder()"
