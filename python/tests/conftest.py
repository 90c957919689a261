"""Shared helpers of the Python package's tests: a TCP receiver that keeps each connection's
lines apart, framed senders, and the word-count example run as a real process."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "python" / "word_count.py"
CONFORMANCE = REPO / "tests" / "data" / "wallaroo-word-count"
sys.path.insert(0, str(EXAMPLE.parent))


def frame(payload: bytes | str) -> bytes:
    """One frame: 4-byte big-endian length, then the payload."""
    data = payload.encode() if isinstance(payload, str) else payload
    return struct.pack(">I", len(data)) + data


@pytest.fixture(params=["in-process", "process"])
def mode(request: pytest.FixtureRequest) -> str:
    """Each mode Python steps run in: on the engine's cores, or in worker processes."""
    return str(request.param)


class Receiver:
    """Listens on a free port; keeps every connection's output lines in arrival order."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.conns: list[list[str]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            lines: list[str] = []
            with self._lock:
                self.conns.append(lines)
            threading.Thread(target=self._read, args=(c, lines), daemon=True).start()

    def _read(self, c: socket.socket, lines: list[str]) -> None:
        rest = b""
        while True:
            data = c.recv(1 << 16)
            if not data:
                return
            rest += data
            *done, rest = rest.split(b"\n")
            with self._lock:
                lines.extend(d.decode() for d in done)

    def lines(self) -> list[str]:
        with self._lock:
            return [line for conn in self.conns for line in conn]

    def wait_lines(self, n: int, timeout: float = 30.0) -> list[str]:
        """Waits until at least ``n`` lines came; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.lines()) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"only {len(self.lines())} of {n} output lines after {timeout} s")
            time.sleep(0.02)
        return self.lines()

    def close(self) -> None:
        self.sock.close()


def send(addr: str, frames: Iterable[bytes], chunk: Optional[int] = None, close: bool = True) -> socket.socket:
    """Sends framed bytes over one connection, cut into ``chunk``-byte writes when given."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    data = b"".join(frames)
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        s.sendall(data[i : i + step])
        if chunk:
            time.sleep(0.0005)
    if close:
        s.close()
    return s


class Example:
    """examples/python/word_count.py as a process; reads its ready line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The log goes to a file: a pipe nobody reads until the end could fill and block it.
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(timeout=30)
            pytest.fail(f"word_count.py did not start: {self.stderr()}")
        self.ready = json.loads(line)
        self.addr: str = self.ready["in"]

    def stderr(self) -> str:
        """Everything the process logged so far."""
        self.log.seek(0)
        return self.log.read()

    def finish(self, timeout: float = 60.0) -> tuple[int, dict, str]:
        """Waits for exit: (status, the stopped line's JSON or {}, stderr)."""
        out, _ = self.proc.communicate(timeout=timeout)
        err = self.stderr()
        stopped = {}
        for line in out.splitlines():
            if line.startswith("{"):
                stopped = json.loads(line)
        return self.proc.returncode, stopped, err


@pytest.fixture
def receiver() -> Iterable[Receiver]:
    r = Receiver()
    yield r
    r.close()
