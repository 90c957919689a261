"""The second example, examples/python/sensor_stats.py: NumPy inside a state step, and a
user codec for checkpointed state."""

from __future__ import annotations

from pathlib import Path

import pytest

import bettong as bt
from conftest import frame

np = pytest.importorskip("numpy")
import sensor_stats  # noqa: E402  (needs numpy)
import word_count as wc  # noqa: E402


def test_numpy_in_a_state_step() -> None:
    frames = [f"s{i % 3} {float(i)}" for i in range(300)] + ["garbage"]
    app = sensor_stats.application(bt.MemorySource(frames, decoder=sensor_stats.decode), bt.MemorySink())
    report = bt.run(app, cores=2, handle_signals=False)
    last = {}
    for line in report.lines():
        last[line.split()[0]] = line
    # s0's last 100 readings are 0, 3, …, 297 minus the first 0..: 0+3k for k in 0..99 -> 0..297.
    window = np.arange(0, 300, 3, dtype=float)
    assert last["s0"] == f"s0 mean={window.mean():.3f} p95={np.percentile(window, 95):.3f} n=100"
    assert report.metrics["frames_rejected"] == 1 and report.rejected == 1


class CountCodec:
    """Writes a WordTotals as its decimal count, and counts its calls."""

    encoded = 0

    def encode(self, state: wc.WordTotals) -> bytes:
        CountCodec.encoded += 1
        return str(state.count).encode()

    def decode(self, data: bytes) -> wc.WordTotals:
        t = wc.WordTotals()
        t.count = int(data)
        return t


def test_a_state_codec_writes_and_restores_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "in.bin"
    path.write_bytes(b"".join(frame("a b a") for _ in range(10)))

    def app(frames_file: Path) -> bt.Application:
        return (bt.source(bt.FileSource(frames_file)).to_multi(wc.Split).key_by()
                .to_state(wc.CountWord, wc.WordTotals, codec=CountCodec())
                .to_sink(bt.MemorySink(), wc.Encoder))

    first = bt.run(app(path), cores=2, resilience_dir=tmp_path / "ck", handle_signals=False)
    assert {"a => 20", "b => 10"} <= set(first.lines()) and len(first.lines()) == 30
    assert CountCodec.encoded >= 2, "the final checkpoint goes through the codec"
    # A second run over a longer file resumes from the checkpoint: counts go on from 20 and 10.
    with open(path, "ab") as f:
        f.write(frame("a b"))
    second = bt.run(app(path), cores=2, resilience_dir=tmp_path / "ck", handle_signals=False)
    assert sorted(second.lines()) == ["a => 21", "b => 11"]
