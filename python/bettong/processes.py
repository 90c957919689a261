"""Process mode: Python work on every core, one worker process per core and per half.

Under CPython's GIL, engine cores running Python in one process take turns on one lock, so a
second core made the word count slower. In process mode the engine's process runs no Python:

- before the engine's threads start, this module forks, for each engine core, a *front worker*
  (decoder, stateless steps, ``key_by``) and a *state worker* (the state step and the
  encoder). Forked children inherit the application's objects as built: nothing is pickled
  but the records that cross between processes (``str`` and ``bytes`` as they are, other
  objects pickled: ``python/src/wire.rs``);
- each engine core hands each read, as one batch, to its front worker over a socketpair and
  routes the keyed records it gets back to their keys' owner cores (framing, hashing,
  routing, batching stay in Rust: ``python/src/relay.rs``);
- each owner core's sink connection goes to its own state worker, which keeps that core's
  keys' states and writes the outputs to the application's sink on its own connection.

A worker that dies is an error of the run (the engine is stopped and :meth:`Running.join`
raises, naming the worker and how it ended), never a hang. Checkpoints are not supported in
this mode yet (``resilience_dir`` is refused with a clear error).

Free-threaded CPython (3.13t and later) runs every core's Python in one process without a
shared lock: there, the in-process mode needs no workers, and both modes stay available.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import _native


@dataclass
class _Child:
    kind: str
    core: int
    pid: int
    ctrl: int
    result: Optional[dict[str, Any]] = None
    status: Optional[int] = None
    thread: Optional[threading.Thread] = None


def _serve(kind: str, ctrl_w: int, work: Callable[[], tuple[int, Any]]) -> None:
    """The child's body: serve, then report to the parent on the control pipe, then exit."""
    code = 0
    try:
        rejected, extra = work()
        result: dict[str, Any] = {"rejected": rejected, "extra": extra, "error": None}
    except BaseException as e:  # reported to the parent, which raises it
        code = 1
        try:
            pickle.dumps(e)
            err: Any = e
        except Exception:
            err = RuntimeError(f"{type(e).__name__}: {e}")
        result = {"rejected": 0, "extra": None, "error": err}
    try:
        data = pickle.dumps(result)
        _write_all(ctrl_w, data)
        os.close(ctrl_w)
    finally:
        os._exit(code)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class Workers:
    """The worker processes of one run."""

    children: list[_Child] = field(default_factory=list)
    front_fds: list[int] = field(default_factory=list)
    state_addr: str = ""
    _failure: Optional[str] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def fork(cls, plan: dict[str, Any], cores: int, on_error: str) -> "Workers":
        """Forks a front and a state worker for each of ``cores`` engine cores."""
        w = cls()
        listener = socket.create_server(("127.0.0.1", 0), backlog=cores)
        w.state_addr = "127.0.0.1:%d" % listener.getsockname()[1]
        sink_addr = plan["sink_addr"] if plan["sink_kind"] == "tcp" else None
        try:
            for core in range(cores):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fd = theirs.detach()
                w._spawn("front", core, lambda fd=fd: _native.serve_front(fd, plan, on_error),
                         close_in_child=[ours.fileno(), listener.fileno()] + w.front_fds)
                os.close(fd)
                w.front_fds.append(ours.detach())
            for core in range(cores):
                lfd = listener.fileno()
                w._spawn("state", core,
                         lambda: _native.serve_state(lfd, plan, on_error, sink_addr),
                         close_in_child=list(w.front_fds))
        except BaseException:
            w.kill()
            raise
        finally:
            listener.close()
        return w

    def _spawn(self, kind: str, core: int, work: Callable[[], tuple[int, Any]],
               close_in_child: list[int]) -> None:
        r, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            try:
                # The parent handles SIGINT/SIGTERM and stops the engine; the worker then ends
                # when its core hangs up.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                os.close(r)
                for fd in close_in_child:
                    os.close(fd)
                for c in self.children:
                    os.close(c.ctrl)
            except BaseException:
                os._exit(1)
            _serve(kind, wr, work)
        os.close(wr)
        self.children.append(_Child(kind, core, pid, r))

    def watch(self, stop: Callable[[], None]) -> None:
        """Reads every worker's report as it ends; a worker that fails or dies stops the
        engine (``stop``)."""
        for c in self.children:
            c.thread = threading.Thread(target=self._read, args=(c, stop), daemon=True,
                                        name=f"bettong-{c.kind}-worker-{c.core}")
            c.thread.start()

    def _read(self, c: _Child, stop: Callable[[], None]) -> None:
        chunks = []
        while True:
            data = os.read(c.ctrl, 1 << 16)
            if not data:
                break
            chunks.append(data)
        os.close(c.ctrl)
        _, c.status = os.waitpid(c.pid, 0)
        if chunks:
            try:
                c.result = pickle.loads(b"".join(chunks))
            except Exception as e:
                c.result = {"rejected": 0, "extra": None,
                            "error": RuntimeError(f"the {c.kind} worker's report is unreadable: {e}")}
        failed = c.result is None or c.result["error"] is not None
        if failed:
            with self._lock:
                if self._failure is None:
                    self._failure = self.describe(c)
            stop()

    def describe(self, c: _Child) -> str:
        """How worker ``c`` ended, for an error message."""
        how = "still running"
        if c.status is not None:
            if os.WIFSIGNALED(c.status):
                how = f"killed by signal {signal.Signals(os.WTERMSIG(c.status)).name}"
            else:
                how = f"exited with status {os.WEXITSTATUS(c.status)}"
        what = "keyed records" if c.kind == "front" else "states and outputs"
        if c.result is None:
            return (f"the {c.kind} worker process of core {c.core} (pid {c.pid}, which runs its "
                    f"{what}) died without reporting: {how}; the run's output is incomplete")
        return f"the {c.kind} worker process of core {c.core} (pid {c.pid}) failed: {c.result['error']}"

    def join(self) -> tuple[int, tuple[int, int], list[bytes], Optional[BaseException]]:
        """Waits for every worker; returns ``(rejected, (frames_in, frames_rejected), outputs,
        error)``: the frames the front workers were sent and rejected, the outputs each state
        worker kept (memory sink), and the first user exception under ``on_error="stop"`` or
        the error of a worker that failed."""
        for c in self.children:
            if c.thread is not None:
                c.thread.join()
        rejected = frames_in = frames_rejected = 0
        outputs: list[bytes] = []
        error: Optional[BaseException] = None
        for c in self.children:
            res = c.result
            if res is None:
                error = error or RuntimeError(self.describe(c))
                continue
            if res["error"] is not None:
                e = res["error"]
                user = isinstance(e, Exception) and not isinstance(e, OSError)
                error = error or (e if user else RuntimeError(self.describe(c)))
                continue
            rejected += res["rejected"]
            if c.kind == "front":
                frames_in += res["extra"][0]
                frames_rejected += res["extra"][1]
            else:
                outputs.append(bytes(res["extra"]))
        return rejected, (frames_in, frames_rejected), outputs, error

    def kill(self) -> None:
        """Ends every worker at once (a start that failed)."""
        for c in self.children:
            try:
                os.kill(c.pid, signal.SIGKILL)
                os.waitpid(c.pid, 0)
            except OSError:
                pass
        for fd in self.front_fds:
            try:
                os.close(fd)
            except OSError:
                pass
