"""A TCP receiver for the benchmark: accepts any number of connections, counts the output
lines, and exits once ``EXPECTED`` lines came (printing the time from the first byte).
``python3 sink.py PORT EXPECTED``"""

from __future__ import annotations

import selectors
import socket
import sys
import time


def main() -> None:
    port, expected = int(sys.argv[1]), int(sys.argv[2])
    sel = selectors.DefaultSelector()
    lst = socket.create_server(("127.0.0.1", port))
    sel.register(lst, selectors.EVENT_READ)
    lines, first = 0, None
    buf = bytearray(1 << 20)
    while lines < expected:
        for key, _ in sel.select():
            if key.fileobj is lst:
                conn, _ = lst.accept()
                sel.register(conn, selectors.EVENT_READ)
                continue
            n = key.fileobj.recv_into(buf)  # type: ignore[union-attr]
            if n == 0:
                sel.unregister(key.fileobj)
                continue
            first = first or time.perf_counter()
            lines += buf.count(b"\n", 0, n)
    print(f"sink: {lines} lines in {time.perf_counter() - (first or 0):.2f} s", flush=True)


if __name__ == "__main__":
    main()
