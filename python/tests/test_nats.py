"""NATS JetStream as a source and sink of the Python API (one process, no cluster job).

Each test starts a real ``nats-server -js`` on a free port with its store in a temporary
directory, publishes a small framed corpus with ``bettong send --nats`` and checks the output
with ``bettong receive --nats --validate`` (exact final counts, every word's values 1..N with no
gap or repeat). The ``bettong`` binary is ``$BETTONG_BIN``, else ``<repo>/target/debug/bettong``
(built by ``cargo test --workspace``, which CI runs first); ``nats-server`` is looked up on PATH,
then in /usr/sbin. A missing one fails the tests, saying what to do: they are not skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

import bettong as bt
import word_count as wc
from conftest import REPO, Example, Receiver, frame

WORDS = ["rose", "Is", "a", "ROSE,", "is", "a", "rose.", "bettong", "hops", "(quickly)",
         "over", "the", "log", "and", "the", "dog", "naps", "--", "under", "it"]


def bettong_bin() -> str:
    """The bettong binary, or a failed test saying how to get one."""
    path = Path(os.environ.get("BETTONG_BIN") or REPO / "target" / "debug" / "bettong")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no bettong binary at {path}: run `cargo build` at the repo root first, "
                    f"or set BETTONG_BIN to one")
    return str(path)


def nats_server_bin() -> str:
    """nats-server, or a failed test saying how to install it."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)
    if found is None:
        pytest.fail("nats-server is not installed: the NATS tests need it (Debian: apt-get "
                    "install nats-server; .ci/run installs it)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """``nats-server -js`` on a free port of 127.0.0.1, its store under ``store``."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.log = store / "nats-server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [nats_server_bin(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                 "-sd", str(store / "js")],
                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"nats-server did not listen on port {self.port}: "
                                f"{self.log.read_text()}")
                time.sleep(0.02)

    def url(self, prefix: str) -> str:
        return f"nats://127.0.0.1:{self.port}/{prefix}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    yield server
    server.stop()


def corpus(n: int) -> list[str]:
    """``n`` messages of 3 to 12 words, mixed case and punctuation (deterministic)."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 10))
            for i in range(n)]


def expected_counts(messages: list[str]) -> Counter[str]:
    split = wc.Split()
    return Counter(w for m in messages for w in split.compute_multi(m))


def bettong(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([bettong_bin(), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, NO_COLOR="1"))


def publish(url: str, messages: list[str], tmp_path: Path) -> None:
    """Publishes ``messages`` as frames on ``url``'s input stream (2 partitions)."""
    path = tmp_path / "corpus.bin"
    path.write_bytes(b"".join(frame(m) for m in messages))
    sent = bettong("send", "--nats", url, "--framed-file", str(path), "--batch-bytes", "2048",
                   "--in-partitions", "2")
    assert sent.returncode == 0, f"bettong send failed: {sent.stderr}"


def check_output(url: str, counts: Counter[str], tmp_path: Path, wait: bool) -> dict:
    """``bettong receive --validate``: the output stream holds every word's values 1..N, in
    order, N its count, and nothing else. With ``wait``, waits (up to 60 s) for every line."""
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(dict(counts)))
    lines = sum(counts.values())
    args = ["receive", "--nats", url, "--validate", "--expect-counts", str(path), "--no-repeats"]
    args += ["--expect-lines", str(lines), "--idle-exit", "60"] if wait else ["--idle-exit", "2"]
    got = bettong(*args)
    try:
        report = json.loads(got.stdout.strip() or "{}")
    except json.JSONDecodeError:
        report = {}
    assert got.returncode == 0, f"the output check failed: {got.stdout}\n{got.stderr}"
    assert report.get("lines") == lines, report
    assert report.get("words") == len(counts), report
    assert (report.get("gaps"), report.get("count_mismatches"), report.get("repeats")) == (0, 0, 0), report
    return report


def test_word_count_example_reads_and_writes_nats(nats: NatsServer, tmp_path: Path) -> None:
    url = nats.url("pywc")
    messages = corpus(400)
    counts = expected_counts(messages)
    publish(url, messages, tmp_path)
    ex = Example("--in", url, "--out", url, "--cores", "2")
    assert ex.ready == {"event": "ready", "in": url, "cores": 2}, ex.ready
    try:
        check_output(url, counts, tmp_path, wait=True)
    finally:
        ex.proc.send_signal(signal.SIGTERM)
        status, stopped, err = ex.finish()
    assert status == 0, err
    assert stopped["metrics"]["frames_in"] == len(messages), stopped
    # Once stopped, the stream holds exactly the counts: nothing repeated or published late.
    check_output(url, counts, tmp_path, wait=False)


def test_nats_source_in_process_mode(nats: NatsServer, tmp_path: Path,
                                     receiver: Receiver) -> None:
    url = nats.url("pyproc")
    messages = corpus(300)
    counts = expected_counts(messages)
    publish(url, messages, tmp_path)
    app = wc.application(bt.NATSSource(url), bt.TCPSink(receiver.addr))
    running = bt.start(app, cores=2, mode="process")
    try:
        lines = receiver.wait_lines(sum(counts.values()), timeout=60)
    finally:
        running.stop()
        report = running.join()
    assert report.metrics["frames_in"] == len(messages), report.metrics
    seen: dict[str, list[int]] = {}
    for line in lines:
        word, count = line.split(" => ")
        seen.setdefault(word, []).append(int(count))
    # Each word's outputs leave in order on its owner core's connection: 1..N, no gap.
    assert seen == {w: list(range(1, n + 1)) for w, n in counts.items()}


def test_nats_sink_needs_in_process_mode(nats: NatsServer) -> None:
    app = wc.application(bt.MemorySource(["a b"]), bt.NATSSink(nats.url("x")))
    with pytest.raises(ValueError, match='mode="in-process"'):
        bt.start(app, mode="process")
    from bettong.runtime import default_mode
    assert default_mode(app) == "in-process"


def test_nats_errors_say_what_failed_and_where(nats: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nats://HOST:PORT/PREFIX"):
        bt.NATSSource("127.0.0.1:4222/x")
    with pytest.raises(ValueError, match="partitions"):
        bt.NATSSink(nats.url("x"), partitions=0)
    no_prefix = wc.application(bt.NATSSource(f"nats://127.0.0.1:{nats.port}"), bt.MemorySink())
    with pytest.raises(ValueError, match="has no stream prefix"):
        bt.start(no_prefix, mode="in-process")
    closed = free_port()
    unreachable = wc.application(bt.NATSSource(f"nats://127.0.0.1:{closed}/x"), bt.MemorySink())
    with pytest.raises(RuntimeError, match=f"cannot connect to NATS at 127.0.0.1:{closed}"):
        bt.start(unreachable, mode="in-process")
    sink_unreachable = wc.application(bt.MemorySource(["a"]),
                                      bt.NATSSink(f"nats://127.0.0.1:{closed}/x"))
    with pytest.raises(RuntimeError, match=f"cannot connect to NATS at 127.0.0.1:{closed}"):
        bt.run(sink_unreachable, handle_signals=False)
    checkpointed = wc.application(bt.NATSSource(nats.url("x")), bt.MemorySink())
    with pytest.raises(ValueError, match="counted twice|count it twice"):
        bt.start(checkpointed, mode="in-process", resilience_dir=tmp_path / "ck")
