"""Running an application on the engine: :func:`run` (until done or SIGINT/SIGTERM) and
:func:`start` (returns a :class:`Running` to stop and join from code)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from . import _native
from .api import Application
from .connectors import FileSource

OnError = Literal["reject", "stop"]
"""What an exception in user code does: reject its record and go on, or stop the run."""


@dataclass
class Report:
    """What a finished run did."""

    metrics: dict[str, Any]
    """The engine's counters summed over the cores (``bettong serve``'s stopped line)."""
    per_core: list[dict[str, Any]]
    """Each core's counters."""
    outputs: list[bytes]
    """Each core's output, with a :class:`bettong.MemorySink` (else empty)."""
    rejected: int
    """Records rejected because user code raised (decoders included)."""
    stopped_line: str
    """The metrics as one JSON line, as ``bettong serve`` prints it."""

    def lines(self) -> list[str]:
        """Every output line (memory sink), core by core, without newlines."""
        return [line for o in self.outputs for line in o.decode().split("\n") if line]


class Running:
    """A started application."""

    def __init__(self, inner: Any, app: Application) -> None:
        self._inner = inner
        self._app = app

    @property
    def local_addr(self) -> Optional[str]:
        """The address the TCP source listens on (the real port when port 0 was asked)."""
        return self._inner.local_addr  # type: ignore[no-any-return]

    @property
    def metrics_addr(self) -> Optional[str]:
        """Where the metrics are served when ``metrics_addr`` was given (the real port when
        port 0 was asked): Prometheus ``/metrics``, ``/metrics.json`` and the live page ``/``."""
        return self._inner.metrics_addr  # type: ignore[no-any-return]

    @property
    def cores(self) -> int:
        """The number of cores the engine runs on."""
        return self._inner.cores  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Stops gracefully: sources stop, what was read is finished, sinks are flushed.
        Returns at once; :meth:`join` waits."""
        self._inner.stop()

    def join(self) -> Report:
        """Waits until the application has finished and returns its report. Raises the first
        exception of user code under ``on_error="stop"``."""
        line, outputs, rejected = self._inner.join()
        parsed = json.loads(line)
        return Report(parsed["metrics"], parsed["per_core"], list(outputs), rejected, line)

    def ready_line(self) -> str:
        """``bettong serve``'s ready line: where the source listens and on how many cores."""
        addr = self.local_addr
        if addr is None:
            first = self._app.sources[0]
            addr = f"file:{os.fspath(first.path)}" if isinstance(first, FileSource) else "memory"
        return json.dumps({"event": "ready", "in": addr, "cores": self.cores}, separators=(",", ":"))


def default_cores(app: Application) -> Optional[int]:
    """The core count used when ``cores`` is not given: every online core (``None``) for the
    built-in native word count and on a free-threaded CPython, but 1 when user Python code runs
    under the GIL. There the cores' Python serialises on one lock and every handover costs more
    than the Rust work it lets overlap: the talk's word count ran 0.512 / 0.394 M words/s on
    1 core against 0.293 / 0.200 on 2 (README, "Python benchmark")."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return 1 if gil and not app.plan()["native"] else None


def start(
    app: Application,
    cores: Optional[int] = None,
    *,
    on_error: OnError = "reject",
    resilience_dir: Union[str, "os.PathLike[str]", None] = None,
    checkpoint_interval: float = 1.0,
    metrics_addr: Optional[str] = None,
) -> Running:
    """Starts ``app`` on ``cores`` cores and returns once its sources listen. The default is
    :func:`default_cores`: 1 for Python steps under the GIL, else every online core.

    - ``on_error="reject"``: an exception in user code rejects that record (traceback logged,
      rate-limited; counted in :attr:`Report.rejected`) and the pipeline goes on; ``"stop"``
      stops gracefully and :meth:`Running.join` raises it.
    - ``resilience_dir``: checkpoint every state (pickled, or by ``to_state``'s codec) every
      ``checkpoint_interval`` seconds, and restore from the newest checkpoint at start (a file
      source resumes where the checkpoint was cut: exact counts after a kill -9).
    - ``metrics_addr``: ``HOST:PORT`` to serve Prometheus ``/metrics``, ``/metrics.json`` and
      the live monitoring page on, as ``bettong serve --metrics-addr`` does.
    """
    if not isinstance(app, Application):
        raise TypeError(f"start needs an Application (built with to_sink), not {type(app).__name__}")
    if cores is None:
        cores = default_cores(app)
    inner = _native.start(app.plan(), cores, on_error,
                          os.fspath(resilience_dir) if resilience_dir is not None else None,
                          checkpoint_interval, metrics_addr)
    return Running(inner, app)


def run(
    app: Application,
    cores: Optional[int] = None,
    *,
    on_error: OnError = "reject",
    resilience_dir: Union[str, "os.PathLike[str]", None] = None,
    checkpoint_interval: float = 1.0,
    metrics_addr: Optional[str] = None,
    handle_signals: bool = True,
    announce: bool = False,
) -> Report:
    """Runs ``app`` until its sources are done (file and memory sources) or until SIGINT or
    SIGTERM, which stop it gracefully (a second signal exits at once, status 130). With
    ``announce``, prints ``bettong serve``'s ready and stopped JSON lines on stdout. The other
    arguments are :func:`start`'s."""
    running = start(app, cores, on_error=on_error, resilience_dir=resilience_dir,
                    checkpoint_interval=checkpoint_interval, metrics_addr=metrics_addr)
    if handle_signals:
        _native.stop_on_signals(running._inner)
    if announce:
        print(running.ready_line(), flush=True)
    report = running.join()
    if announce:
        print(report.stopped_line, flush=True)
    sys.stdout.flush()
    return report
