"""Your favourite libraries inside a step: per-sensor rolling statistics with NumPy.

Frames are ``"sensor-id reading"`` (e.g. ``"s3 21.5"``). Each sensor's state keeps its last
``WINDOW`` readings in a NumPy ring buffer, on the sensor's owner core; every reading emits
``sensor-id mean=… p95=… n=…`` computed by NumPy. A frame that is not ``id number`` is rejected
by the decoder (counted, logged, the stream goes on).

    python3 examples/python/sensor_stats.py --in [NAME@]HOST:PORT|file:PATH --out HOST:PORT [--cores N]
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np

import bettong as bt

WINDOW = 100


def decode(payload: bytes) -> tuple[str, float]:
    """``b"s3 21.5"`` -> ``("s3", 21.5)``; anything else raises, which rejects the frame."""
    sensor, reading = payload.decode().split()
    return sensor, float(reading)


class Window:
    """One sensor's last WINDOW readings, in a NumPy ring buffer."""

    def __init__(self) -> None:
        self.values = np.zeros(WINDOW)
        self.n = 0

    def add(self, value: float) -> np.ndarray:
        self.values[self.n % WINDOW] = value
        self.n += 1
        return self.values[: min(self.n, WINDOW)]


class Stats:
    """The state step: adds the reading, returns the window's statistics."""

    def compute(self, record: tuple[str, float], window: Window) -> str:
        sensor, value = record
        seen = window.add(value)
        return f"{sensor} mean={seen.mean():.3f} p95={np.percentile(seen, 95):.3f} n={window.n}\n"


def application(src: bt.TCPSource | bt.FileSource | bt.MemorySource,
                out: bt.TCPSink | bt.MemorySink) -> bt.Application:
    """The rolling statistics application."""
    return (bt.source(src).key_by(lambda r: r[0])
            .to_state(Stats, Window).to_sink(out, lambda line: line))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--in", dest="input", required=True, help="[NAME@]HOST:PORT or file:PATH")
    p.add_argument("--out", required=True, help="HOST:PORT of the receiver")
    p.add_argument("--cores", type=int, default=None)
    args = p.parse_args(argv)
    src: bt.TCPSource | bt.FileSource
    if args.input.startswith("file:"):
        src = bt.FileSource(args.input[len("file:"):], decoder=decode)
    else:
        src = bt.TCPSource(args.input, decoder=decode)
    bt.run(application(src, bt.TCPSink(args.out)), cores=args.cores, announce=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
