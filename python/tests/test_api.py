"""The Python API, in both modes where it matters: the spec's splitting rules through the example, per-key order,
merged sources, build-time errors, exceptions in user code, decoders, native steps, batching."""

from __future__ import annotations

import re
from collections import Counter

import pytest

import bettong as bt
import word_count as wc

PUNCT = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def reference(text: str) -> list[str]:
    """The spec's reference splitter."""
    return [w for w in (x.lower().strip(PUNCT) for x in re.split(r"[ \t\n\x0b\x0c\r]+", text)) if w]


def run_memory(frames: list, cores: int = 2, **kw) -> bt.Report:
    app = wc.application(bt.MemorySource(frames), bt.MemorySink(), kw.pop("native", False))
    kw.setdefault("mode", "in-process")
    return bt.run(app, cores=cores, handle_signals=False, **kw)


SPEC_CASES = [
    "Hello, World!  hello\tworld\nHELLO",
    "it's a...b (quoted) 'single' \"double\" -dash- _under_",
    "vt\x0bff\x0ccr\rend",
    "nbsp\u00a0stays one word",
    "ΟΔΟΣ Σ ΣΑΣ final sigma",
    "!!! ... ,,, only punctuation then word.",
    "",
    "Straße İstanbul ǅ",
]


@pytest.mark.parametrize("native", [False, True])
def test_splitting_rules_match_the_spec(native: bool, mode: str) -> None:
    report = run_memory(SPEC_CASES, native=native, mode=mode)
    got = Counter(line.rsplit(" => ", 1)[0] for line in report.lines())
    want = Counter(w for text in SPEC_CASES for w in reference(text))
    assert got == want
    assert "nbsp\u00a0stays" in got and "οδος" in got and "it's" in got and "a...b" in got


def test_each_word_counts_up_in_order_on_one_core(mode: str) -> None:
    frames = ["a b c a", "b a", "c c c a"] * 50
    report = run_memory(frames, mode=mode)
    seen: dict[str, int] = {}
    owner: dict[str, int] = {}
    for core, out in enumerate(report.outputs):
        for line in out.decode().splitlines():
            word, n = line.split(" => ")
            assert owner.setdefault(word, core) == core, f"{word} left through two cores"
            assert int(n) == seen.get(word, 0) + 1, f"{word}: {n} after {seen.get(word)}"
            seen[word] = int(n)
    assert seen == dict(Counter(w for f in frames for w in f.split()))


def test_invalid_utf8_rejects_the_frame_and_the_rest_goes_on(mode: str) -> None:
    report = run_memory([b"good words", b"bad \xff words", b"more good"], mode=mode)
    assert sorted(report.lines()) == ["good => 1", "good => 2", "more => 1", "words => 1"]
    assert report.metrics["frames_rejected"] == 1


def test_sources_merge_into_one_state_step(tmp_path, mode: str) -> None:
    framed = tmp_path / "in.bin"
    from conftest import frame

    framed.write_bytes(frame("x y") + frame("x"))
    streams = [
        bt.source(bt.MemorySource(["x", "z"])).to_multi(wc.Split).key_by(),
        bt.source(bt.FileSource(framed)).to_multi(wc.Split).key_by(),
        bt.source(bt.MemorySource([b"X"], decoder=lambda b: b.decode())).to(str.lower).key_by(),
    ]
    app = (streams[0].merge(*streams[1:]).to_state(wc.CountWord, wc.WordTotals)
           .to_sink(bt.MemorySink(), wc.Encoder))
    report = bt.run(app, cores=2, handle_signals=False, mode=mode)
    last = {}
    for line in report.lines():
        w, n = line.split(" => ")
        last[w] = max(last.get(w, 0), int(n))
    assert last == {"x": 4, "y": 1, "z": 1}


def test_exceptions_in_user_code_reject_only_their_record(mode: str) -> None:
    class Picky:
        def compute(self, word: str, totals: wc.WordTotals) -> wc.WordCount:
            if word == "boom":
                raise ValueError("no boom allowed")
            return wc.WordCount(word, totals.update())

    app = (bt.source(bt.MemorySource(["a boom b", "boom a"])).to_multi(wc.Split).key_by()
           .to_state(Picky, wc.WordTotals).to_sink(bt.MemorySink(), wc.Encoder))
    report = bt.run(app, cores=2, handle_signals=False, mode=mode)
    assert sorted(report.lines()) == ["a => 1", "a => 2", "b => 1"]
    assert report.rejected == 2


def test_a_failing_step_encoder_or_key_rejects_its_record(mode: str) -> None:
    app = (bt.source(bt.MemorySource(["1", "x", "2", "0"]))
           .to(lambda s: 10 // int(s))          # ValueError on "x", ZeroDivisionError on "0"
           .key_by(lambda n: n if n != 5 else str(n))  # an int key is a TypeError: 10 and 10//1
           .to_state(lambda n, st: n, dict)
           .to_sink(bt.MemorySink(), lambda n: f"{n}\n"))
    report = bt.run(app, cores=1, handle_signals=False, mode=mode)
    assert report.lines() == ["5"]
    assert report.rejected == 3


def test_on_error_stop_raises_the_first_exception(mode: str) -> None:
    def explode(word: str) -> str:
        raise KeyError(word)

    app = (bt.source(bt.MemorySource(["a"] * 100)).to(explode).key_by()
           .to_state(wc.CountWord, wc.WordTotals).to_sink(bt.MemorySink(), wc.Encoder))
    with pytest.raises(KeyError):
        bt.run(app, cores=1, on_error="stop", handle_signals=False, mode=mode)


def test_a_decoder_exception_rejects_the_frame(mode: str) -> None:
    def decode(b: bytes) -> str:
        if b.startswith(b"!"):
            raise ValueError("bang")
        return b.decode()

    app = (bt.source(bt.MemorySource(["a", "!b", "c"], decoder=decode)).to_multi(wc.Split).key_by()
           .to_state(wc.CountWord, wc.WordTotals).to_sink(bt.MemorySink(), wc.Encoder))
    report = bt.run(app, cores=1, handle_signals=False, mode=mode)
    assert sorted(report.lines()) == ["a => 1", "c => 1"]
    assert report.metrics["frames_rejected"] == 1 and report.rejected == 1


def test_misspelled_and_missing_methods_fail_at_build_time() -> None:
    class Splitt:
        def compute_mult(self, data: str) -> list[str]:
            return [data]

    with pytest.raises(bt.BuildError, match=r"Splitt has no method compute_multi\(\); did you mean compute_mult"):
        bt.source(bt.MemorySource([])).to_multi(Splitt)

    class NoEncode:
        pass

    keyed = bt.source(bt.MemorySource([])).to_multi(wc.Split).key_by()
    with pytest.raises(bt.BuildError, match="NoEncode has no method encode"):
        keyed.to_state(wc.CountWord, wc.WordTotals).to_sink(bt.MemorySink(), NoEncode)

    class OneArg:
        def compute(self, word: str) -> str:
            return word

    with pytest.raises(bt.BuildError, match="must take 2 argument"):
        keyed.to_state(OneArg, wc.WordTotals)
    with pytest.raises(bt.BuildError, match="state class"):
        keyed.to_state(wc.CountWord, None)
    with pytest.raises(bt.BuildError, match="key_by's function must take 1 argument"):
        bt.source(bt.MemorySource([])).key_by(lambda a, b: a)
    with pytest.raises(bt.BuildError, match="native word count"):
        keyed.to_state(bt.native.Count()).to_sink(bt.MemorySink(), bt.native.WordCountEncoder())


def test_native_split_mixes_with_python_steps(mode: str) -> None:
    app = (bt.source(bt.MemorySource(["Hello, hello WORLD"])).to_multi(bt.native.SplitWords())
           .key_by().to_state(wc.CountWord, wc.WordTotals).to_sink(bt.MemorySink(), wc.Encoder))
    report = bt.run(app, cores=2, handle_signals=False, mode=mode)
    assert sorted(report.lines()) == ["hello => 1", "hello => 2", "world => 1"]


def test_python_is_called_in_batches() -> None:
    before = bt._native.gil_acquisitions()
    frames = ["w%d x y" % (i % 97) for i in range(20000)]
    report = run_memory(frames, cores=2)
    acquisitions = bt._native.gil_acquisitions() - before
    assert len(report.lines()) == 60000
    # One acquisition per batch (a read or a cross-core batch), not per record.
    assert acquisitions < len(frames) / 20, acquisitions


def test_metrics_addr_serves_prometheus_metrics(receiver) -> None:
    import urllib.request

    app = wc.application(bt.TCPSource("127.0.0.1:0"), bt.TCPSink(receiver.addr))
    # In-process: there frames_in counts the source's frames (in process mode, the keyed
    # records the front workers send back).
    running = bt.start(app, cores=2, metrics_addr="127.0.0.1:0", mode="in-process")
    from conftest import frame, send

    assert running.metrics_addr is not None and not running.metrics_addr.endswith(":0")
    send(running.local_addr, [frame("watch me count")])
    receiver.wait_lines(3)
    with urllib.request.urlopen(f"http://{running.metrics_addr}/metrics", timeout=10) as r:
        body = r.read().decode()
    running.stop()
    running.join()
    frames = [l for l in body.splitlines() if l.startswith("bettong_frames_in_total{")]
    assert len(frames) == 2, body
    assert sum(float(l.split()[-1]) for l in frames) == 1, body


def test_start_and_stop_from_code(receiver, mode: str) -> None:
    app = wc.application(bt.TCPSource("127.0.0.1:0"), bt.TCPSink(receiver.addr))
    running = bt.start(app, cores=2, mode=mode)
    from conftest import frame, send

    send(running.local_addr, [frame("stop me gently")])
    receiver.wait_lines(3)
    running.stop()
    report = running.join()
    assert report.metrics["frames_in"] == 1
    assert sorted(receiver.lines()) == ["gently => 1", "me => 1", "stop => 1"]


def test_python_steps_default_to_process_mode_on_every_core_under_the_gil() -> None:
    """Without ``mode`` and ``cores``, Python steps run in process mode on every online core
    (the fastest here, README "Python benchmark"); in-process, on 1 core; the native word
    count on every online core."""
    import os

    frames = ["a b a", "b c"]
    want = ["a => 1", "a => 2", "b => 1", "b => 2", "c => 1"]
    python_app = wc.application(bt.MemorySource(frames), bt.MemorySink())
    assert bt.runtime.default_mode(python_app) == "process"
    report = bt.run(python_app, handle_signals=False)
    assert len(report.per_core) == len(os.sched_getaffinity(0))
    assert sorted(report.lines()) == want
    in_process = bt.run(python_app, handle_signals=False, mode="in-process")
    assert len(in_process.per_core) == 1 and sorted(in_process.lines()) == want
    native_app = wc.application(bt.MemorySource(frames), bt.MemorySink(), native=True)
    native = bt.run(native_app, handle_signals=False)
    assert sorted(native.lines()) == want


def test_unknown_options_and_modes_are_refused() -> None:
    app = wc.application(bt.MemorySource(["a"]), bt.MemorySink())
    with pytest.raises(TypeError, match="unexpected keyword argument.*on_eror"):
        bt.run(app, on_eror="stop")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="mode must be"):
        bt.run(app, mode="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resilience_dir is not supported in process mode"):
        bt.run(app, mode="process", resilience_dir="/tmp/nowhere")


def test_a_killed_worker_process_is_a_clear_error() -> None:
    """A front worker killed mid-run stops the run with an error naming it, not a hang."""
    import os
    import signal
    import threading

    def slow(data: str) -> list[str]:
        import time

        time.sleep(0.01)
        return data.split()

    app = (bt.source(bt.MemorySource(["x y"] * 2000)).to_multi(slow).key_by()
           .to_state(wc.CountWord, wc.WordTotals).to_sink(bt.MemorySink(), wc.Encoder))
    running = bt.start(app, cores=2, mode="process")
    front = [c for c in running._workers.children if c.kind == "front"][0]
    threading.Timer(0.3, os.kill, (front.pid, signal.SIGKILL)).start()
    with pytest.raises(RuntimeError, match=r"front worker process of core 0 .*died.*SIGKILL"):
        running.join()
