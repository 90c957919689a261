"""Build-time checks of the user's classes and functions.

A missing or misspelled method must fail when the application is built, naming the class,
the method it lacks and the near names it has, not at the first record inside the engine.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable


class BuildError(TypeError):
    """An application cannot be built as written: the message says which step and why."""


def name_of(obj: Any) -> str:
    """A readable name for a user's class, function or object."""
    for attr in ("__qualname__", "__name__"):
        name = getattr(obj, attr, None)
        if isinstance(name, str):
            return name
    return type(obj).__qualname__


def _check_arity(fn: Callable[..., Any], nargs: int, what: str) -> None:
    """Raises BuildError when ``fn`` cannot take ``nargs`` positional arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins without a signature: trust them
    try:
        sig.bind(*([None] * nargs))
    except TypeError as e:
        raise BuildError(f"{what} must take {nargs} argument(s), but {name_of(fn)}{sig}: {e}") from None


def instance(obj: Any) -> Any:
    """A class passed where an object is expected is instantiated with no arguments, as
    Wallaroo's ``to_parallel(Split)`` did."""
    if inspect.isclass(obj):
        try:
            return obj()
        except TypeError as e:
            raise BuildError(f"{obj.__qualname__}() could not be made with no arguments: {e}") from None
    return obj


def method(obj: Any, method_name: str, nargs: int, step: str) -> Callable[..., Any]:
    """The callable a step runs: ``obj``'s method ``method_name`` (a class is instantiated
    first), checked to exist and to take ``nargs`` arguments; or ``obj`` itself when it is a
    plain callable (a function, a builtin, a callable object) without that method."""
    if not inspect.isclass(obj) and not hasattr(obj, method_name) and callable(obj):
        _check_arity(obj, nargs, f"{step}'s function")
        return obj  # type: ignore[no-any-return]
    obj = instance(obj)
    fn = getattr(obj, method_name, None)
    if not callable(fn):
        have = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
        near = difflib.get_close_matches(method_name, have, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(near)}?" if near else (
            f"; it has {', '.join(have)}" if have else "")
        raise BuildError(
            f"{step}: {type(obj).__qualname__} has no method {method_name}(){hint} "
            f"({step} takes a function, or an object with a {method_name} method)"
        )
    _check_arity(fn, nargs, f"{type(obj).__qualname__}.{method_name}")
    return fn  # type: ignore[no-any-return]


def function(fn: Any, nargs: int, step: str) -> Callable[..., Any]:
    """A plain callable (``key_by``'s key function), checked to take ``nargs`` arguments."""
    if not callable(fn):
        raise BuildError(f"{step} takes a function, not {type(fn).__name__}")
    _check_arity(fn, nargs, f"{step}'s function")
    return fn  # type: ignore[no-any-return]


def state_class(cls: Any) -> Callable[[], Any]:
    """The state class (or factory) of a state step: callable with no arguments."""
    if not callable(cls):
        raise BuildError(
            f"to_state: the state class must be a class or function making a key's first state, "
            f"not {type(cls).__name__}"
        )
    _check_arity(cls, 0, "to_state's state class")
    return cls  # type: ignore[no-any-return]
