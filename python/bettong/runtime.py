"""Running an application on the engine: :func:`run` (until done or SIGINT/SIGTERM) and
:func:`start` (returns a :class:`Running` to stop and join from code)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypedDict, Union, Unpack

from . import _native
from .api import Application
from .connectors import FileSource, NATSSource
from .processes import Workers

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

    def __init__(self, inner: Any, app: Application, workers: Optional[Workers] = None) -> None:
        self._inner = inner
        self._app = app
        self._workers = workers

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
        if self._workers is None:
            line, outputs, rejected = self._inner.join()
            parsed = json.loads(line)
            return Report(parsed["metrics"], parsed["per_core"], list(outputs), rejected, line)
        try:
            line, _, _ = self._inner.join()
        finally:
            # The engine has closed every worker's connection: each finishes and reports.
            rejected, (frames_in, frames_rejected), outputs, error = self._workers.join()
        if error is not None:
            raise error
        parsed = json.loads(line)
        # The front workers decode the source's frames: their counts are the run's (the
        # engine's own per-core counts are of the keyed records the workers sent back).
        parsed["metrics"]["frames_in"] = frames_in
        parsed["metrics"]["frames_rejected"] = parsed["metrics"].get("frames_rejected", 0) + frames_rejected
        line = json.dumps(parsed, separators=(",", ":"))
        return Report(parsed["metrics"], parsed["per_core"], outputs, rejected, line)

    def ready_line(self) -> str:
        """``bettong serve``'s ready line: where the source listens and on how many cores."""
        addr = self.local_addr
        if addr is None:
            first = self._app.sources[0]
            if isinstance(first, FileSource):
                addr = f"file:{os.fspath(first.path)}"
            elif isinstance(first, NATSSource):
                addr = first.url
            else:
                addr = "memory"
        return json.dumps({"event": "ready", "in": addr, "cores": self.cores}, separators=(",", ":"))


Mode = Literal["process", "in-process"]
"""Where Python steps run: ``"process"``, in one front and one state worker process per engine
core (no lock shared between cores; see :mod:`bettong.processes`), or ``"in-process"``, on
the engine's cores in this interpreter (under the GIL, one batch at a time)."""


class Options(TypedDict, total=False):
    """The options :func:`start` and :func:`run` share.

    - ``on_error``: ``"reject"`` (default): an exception in user code rejects that record
      (traceback logged, rate-limited; counted in :attr:`Report.rejected`) and the pipeline goes
      on; ``"stop"`` stops gracefully and :meth:`Running.join` raises it.
    - ``resilience_dir``: checkpoint every state (pickled, or by ``to_state``'s codec) every
      ``checkpoint_interval`` seconds (default 1), and restore from the newest checkpoint at
      start (a file source resumes where the checkpoint was cut: exact counts after a kill -9).
      In-process mode only.
    - ``metrics_addr``: ``HOST:PORT`` to serve Prometheus ``/metrics``, ``/metrics.json`` and
      the live monitoring page on, as ``bettong serve --metrics-addr`` does.
    - ``mode``: see :data:`Mode` and :func:`default_mode`.
    """

    on_error: OnError
    resilience_dir: Union[str, "os.PathLike[str]", None]
    checkpoint_interval: float
    metrics_addr: Optional[str]
    mode: Optional[Mode]


def _check_options(options: dict[str, Any], where: str) -> None:
    unknown = set(options) - set(Options.__annotations__)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {sorted(unknown)}; "
                        f"it takes {sorted(Options.__annotations__)}")


def default_mode(app: Application, resilience_dir: Any = None) -> Mode:
    """The mode used when ``mode`` is not given: ``"process"`` for Python steps under the GIL
    (the fastest on the machine measured, README "Python benchmark"), ``"in-process"`` on a
    free-threaded CPython, for the built-in native word count, with ``resilience_dir``
    (process mode does not checkpoint yet) and with a :class:`bettong.NATSSink` (in process
    mode the state workers write the output themselves, over TCP)."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    plan = app.plan()
    if not gil or plan["native"] or resilience_dir is not None or plan["sink_kind"] == "nats":
        return "in-process"
    return "process"


def default_cores(app: Application, mode: Optional[Mode] = None) -> Optional[int]:
    """The core count used when ``cores`` is not given: every online core (``None``), except
    for Python steps run in-process under the GIL, where it is 1: there the cores' Python
    serialises on one lock and every handover costs more than the Rust work it lets overlap
    (README, "Python benchmark")."""
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    mode = mode or default_mode(app)
    return 1 if gil and mode == "in-process" and not app.plan()["native"] else None


def start(app: Application, cores: Optional[int] = None, **options: Unpack[Options]) -> Running:
    """Starts ``app`` on ``cores`` cores and returns once its sources listen. The default is
    :func:`default_cores`. The options are :class:`Options`'."""
    if not isinstance(app, Application):
        raise TypeError(f"start needs an Application (built with to_sink), not {type(app).__name__}")
    _check_options(dict(options), "start")
    on_error = options.get("on_error", "reject")
    resilience_dir = options.get("resilience_dir")
    mode = options.get("mode") or default_mode(app, resilience_dir)
    if mode not in ("process", "in-process"):
        raise ValueError(f'mode must be "process" or "in-process", not {mode!r}')
    if cores is None:
        cores = default_cores(app, mode)
    args = (on_error, os.fspath(resilience_dir) if resilience_dir is not None else None,
            options.get("checkpoint_interval", 1.0), options.get("metrics_addr"))
    if mode == "in-process" or app.plan()["native"]:
        return Running(_native.start(app.plan(), cores, *args), app)
    if app.plan()["sink_kind"] == "nats":
        raise ValueError('NATSSink is not supported in process mode (the state workers write the '
                         'output themselves, over TCP): use mode="in-process"')
    if resilience_dir is not None:
        raise ValueError('resilience_dir is not supported in process mode yet (the states live '
                         'in the worker processes, which do not take part in checkpoints): use '
                         'mode="in-process" to checkpoint')
    if on_error not in ("reject", "stop"):
        raise ValueError(f'on_error must be "reject" or "stop", not {on_error!r}')
    n = cores or len(os.sched_getaffinity(0))
    plan = app.plan()
    workers = Workers.fork(plan, n, on_error)
    fds, workers.front_fds = workers.front_fds, []  # the engine owns them from the call on
    try:
        inner = _native.start(plan, n, *args, (fds, workers.state_addr))
    except BaseException:
        workers.kill()
        raise
    workers.watch(inner.stop)
    return Running(inner, app, workers)


def run(
    app: Application,
    cores: Optional[int] = None,
    *,
    handle_signals: bool = True,
    announce: bool = False,
    **options: Unpack[Options],
) -> Report:
    """Runs ``app`` until its sources are done (file and memory sources) or until SIGINT or
    SIGTERM, which stop it gracefully (a second signal exits at once, status 130). With
    ``announce``, prints ``bettong serve``'s ready and stopped JSON lines on stdout. The other
    arguments are :func:`start`'s."""
    _check_options(dict(options), "run")
    running = start(app, cores, **options)
    if handle_signals:
        _native.stop_on_signals(running._inner)
    if announce:
        print(running.ready_line(), flush=True)
    report = running.join()
    if announce:
        print(report.stopped_line, flush=True)
    sys.stdout.flush()
    return report
