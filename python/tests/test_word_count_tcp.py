"""examples/python/word_count.py as a real process over TCP, in both modes: the Wallaroo
conformance case on chunked connections, every bad-input row of the spec, SIGTERM/SIGINT, a
file source, and a
kill -9 with --resilience-dir that still gives exact final counts."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import struct
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import CONFORMANCE, Example, Receiver, frame, send

PUNCT = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def reference(text: str) -> list[str]:
    return [w for w in (x.lower().strip(PUNCT) for x in re.split(r"[ \t\n\x0b\x0c\r]+", text)) if w]


def check_order(receiver: Receiver) -> dict[str, int]:
    """Every word's outputs are 1, 2, 3, … on one connection; returns the final counts."""
    final: dict[str, int] = {}
    owner: dict[str, int] = {}
    for i, conn in enumerate(list(receiver.conns)):
        for line in conn:
            word, n = line.rsplit(" => ", 1)
            assert owner.setdefault(word, i) == i, f"{word!r} on two sink connections"
            assert int(n) == final.get(word, 0) + 1, f"{word!r}: {n} after {final.get(word, 0)}"
            final[word] = int(n)
    return final


def test_conformance_over_chunked_connections(receiver: Receiver, mode: str) -> None:
    ex = Example("--in", "words@127.0.0.1:0", "--out", receiver.addr, "--cores", "2", "--mode", mode)
    lines = [l for l in (CONFORMANCE / "count_this.txt").read_text().splitlines() if l.strip()]
    expected = json.loads((CONFORMANCE / "expected.json").read_text())
    total = sum(expected.values())
    assert (len(expected), total) == (217, 482)
    # Four connections, each with every fourth line, cut into writes of 1, 3, 64 bytes and whole.
    for i, chunk in enumerate([1, 3, 64, None]):
        send(ex.addr, [frame(l) for l in lines[i::4]], chunk=chunk)
    receiver.wait_lines(total)
    ex.proc.send_signal(signal.SIGTERM)
    status, stopped, err = ex.finish()
    assert status == 0, err
    assert check_order(receiver) == expected
    assert stopped["metrics"]["frames_in"] == len(lines)


def test_bad_input_rows(receiver: Receiver, mode: str) -> None:
    ex = Example("--in", "127.0.0.1:0", "--out", receiver.addr, "--cores", "2", "--max-frame", "100",
                 "--mode", mode)
    # Not UTF-8: that frame is rejected whole, the frames after it go on.
    send(ex.addr, [frame("one"), frame(b"two \xff\xfe bad"), frame("three")])
    # A length above --max-frame closes that connection only.
    big = send(ex.addr, [frame("four"), struct.pack(">I", 1000) + b"x" * 50], close=False)
    big.settimeout(10)
    assert big.recv(1) == b"", "the connection with an oversized frame is closed by the server"
    big.close()
    # A connection that ends inside a frame: the partial frame is dropped, what came before counts.
    send(ex.addr, [frame("five"), struct.pack(">I", 20) + b"six seven"])
    # Another connection is untouched.
    send(ex.addr, [frame("one")])
    receiver.wait_lines(5)
    time.sleep(0.3)
    ex.proc.send_signal(signal.SIGTERM)
    status, stopped, err = ex.finish()
    assert status == 0, err
    assert sorted(receiver.lines()) == ["five => 1", "four => 1", "one => 1", "one => 2", "three => 1"]
    assert stopped["metrics"]["frames_rejected"] == 1
    assert "not valid UTF-8" in err, err


def test_a_sink_not_listening_yet_is_retried() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ex = Example("--in", "127.0.0.1:0", "--out", f"127.0.0.1:{port}", "--cores", "2")
    send(ex.addr, [frame("held until the sink comes")])
    time.sleep(0.5)
    late = Receiver(port)
    try:
        late.wait_lines(5, timeout=30)
        ex.proc.send_signal(signal.SIGTERM)
        status, _, err = ex.finish()
        assert status == 0, err
        assert sorted(late.lines()) == sorted(f"{w} => 1" for w in "held until the sink comes".split())
    finally:
        late.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_flushes(receiver: Receiver, sig: int, mode: str) -> None:
    ex = Example("--in", "127.0.0.1:0", "--out", receiver.addr, "--cores", "2", "--mode", mode)
    frames = [frame("alpha beta gamma")] * 2000
    send(ex.addr, frames)
    receiver.wait_lines(1)
    ex.proc.send_signal(sig)
    status, stopped, err = ex.finish()
    assert status == 0, err
    assert stopped["event"] == "stopped"
    # Everything received before the stop is finished and flushed.
    n = stopped["metrics"]["frames_in"]
    receiver.wait_lines(3 * n, timeout=10)
    time.sleep(0.1)
    assert len(receiver.lines()) == 3 * n
    assert check_order(receiver) == {"alpha": n, "beta": n, "gamma": n}


def corpus(path: Path, messages: int, seed: int = 7) -> Counter:
    """A framed corpus of random words and punctuation; returns its reference counts."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)] + ["Hello,", "WORLD!", "it's", "(x)"]
    counts: Counter = Counter()
    with open(path, "wb") as f:
        for _ in range(messages):
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))
            counts.update(reference(text))
            f.write(frame(text))
    return counts


def test_file_input_reads_once_flushes_and_exits_0(tmp_path: Path, receiver: Receiver, mode: str) -> None:
    want = corpus(tmp_path / "in.bin", 3000)
    ex = Example("--in", f"file:{tmp_path / 'in.bin'}", "--out", receiver.addr, "--cores", "2",
                 "--mode", mode)
    status, stopped, err = ex.finish()
    assert status == 0, err
    assert stopped["metrics"]["frames_in"] == 3000
    receiver.wait_lines(sum(want.values()), timeout=10)
    assert check_order(receiver) == dict(want)


def test_kill_9_and_restore_give_exact_counts(tmp_path: Path, receiver: Receiver) -> None:
    # Large enough that a release build is still reading it well after its first checkpoint.
    want = corpus(tmp_path / "in.bin", 150000)
    ck = tmp_path / "ck"
    args = ("--in", f"file:{tmp_path / 'in.bin'}", "--out", receiver.addr, "--cores", "2",
            "--resilience-dir", str(ck), "--checkpoint-interval", "0.05")
    ex = Example(*args)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("ck") or p.is_dir() for p in ck.glob("*")) or not receiver.lines():
        assert ex.proc.poll() is None, "the run ended before a checkpoint: make the corpus larger"
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.02)
    time.sleep(0.1)
    assert ex.proc.poll() is None, "the run ended before the kill: make the corpus larger"
    ex.proc.kill()
    ex.proc.wait()
    first_run = len(receiver.lines())
    assert 0 < first_run < sum(want.values())
    again = Example(*args)
    status, stopped, err = again.finish(timeout=120)
    assert status == 0, err
    # Outputs after the checkpoint may repeat (at-least-once output), but every count is exact:
    # no word ever goes past its true total, and each reaches it (the receiver may still be
    # reading the last lines: wait up to 10 s for them).
    deadline = time.monotonic() + 10
    while True:
        final: defaultdict[str, int] = defaultdict(int)
        for line in receiver.lines():
            word, n = line.rsplit(" => ", 1)
            assert int(n) <= want[word], f"{word!r} counted {n} times, more than {want[word]}"
            final[word] = max(final[word], int(n))
        if dict(final) == dict(want) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert dict(final) == dict(want)
