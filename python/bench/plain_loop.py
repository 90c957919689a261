"""The talk's single-machine Python prototype: a plain loop with a dict. Reads a framed corpus,
splits every message with the spec's rules, counts each word and writes ``word => count`` for
every occurrence (to /dev/null). Prints words/s. ``python3 plain_loop.py CORPUS``"""

from __future__ import annotations

import re
import sys
import time

from frames import read_frames

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
SEPARATORS = re.compile(r"[ \t\n\x0b\x0c\r]+")


def main() -> None:
    frames = read_frames(sys.argv[1])
    t0 = time.perf_counter()
    counts: dict[str, int] = {}
    words = 0
    with open("/dev/null", "w") as out:
        for text in frames:
            lines = []
            for w in SEPARATORS.split(text):
                w = w.lower().strip(PUNCTUATION)
                if w:
                    c = counts.get(w, 0) + 1
                    counts[w] = c
                    lines.append(f"{w} => {c}\n")
            words += len(lines)
            out.write("".join(lines))
    dt = time.perf_counter() - t0
    print(f"plain loop: {words} words in {dt:.2f} s: {words / dt / 1e6:.3f} M words/s")


if __name__ == "__main__":
    main()
