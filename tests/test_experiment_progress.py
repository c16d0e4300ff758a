"""Progress lines: rate and ETA from a fake clock; rate-limited logging."""
import sys

import pytest
from absl import logging

from samplax.experiment.progress import Progress


def test_progress_rate_eta_and_rate_limit(monkeypatch):
    now = [100.0]
    lines = []
    monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg % a if a else msg))
    p = Progress(10, "rows", every_s=5.0, clock=lambda: now[0])
    now[0] += 2.0
    p.update(1, "first")          # logged (first update)
    now[0] += 2.0
    p.update(1)                   # 2 s after the last line: not logged
    now[0] += 4.0
    p.update(2, "x")              # 4 rows in 8 s: 0.5 rows/s, 6 left -> ETA 12 s
    assert len(lines) == 2
    assert lines[0].startswith("rows 1/10 (10%) 0.50 rows/s") and lines[0].endswith(": first")
    assert "rows 4/10 (40%) 0.50 rows/s" in lines[1] and "ETA 12s" in lines[1]
    now[0] += 1.0
    p.update(6, "last")           # the end is always logged, without an ETA
    assert lines[-1].startswith("rows 10/10 (100%)") and "ETA" not in lines[-1]


# ------------------------------------------------------------------ compilation kept out of the ETA
def clocked(mode="log", **kw):
    now = [0.0]
    p = Progress(kw.pop("total", 4), "rows", every_s=kw.pop("every_s", 0.0), clock=lambda: now[0], mode=mode, **kw)
    return p, now


def test_eta_leaves_compilation_out(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg % a if a else msg))
    p, now = clocked(total=4, programs=2)
    p.compiling("unipc o3")
    now[0] = 10.0
    assert p.eta() is None and "ETA ?" in p.line()       # nothing run yet: no guess
    assert p.compiled() == 10.0
    assert lines[-1] == "compiled (1/2) unipc o3 in 10.0s"
    now[0] = 12.0
    p.update(2, "a")  # 2 rows in 2 s of run time: 1 row/s; 2 rows + 1 program (10 s) left
    assert p.rate() == 1.0 and p.eta() == 12.0
    assert lines[-1] == "rows 2/4 (50%) 1.00 rows/s, elapsed 12s (compile 10s), ETA 12s: a"
    p.compiling("ddim")
    now[0] = 16.0  # 4 s into the second compilation: its remaining mean (6 s) + 2 rows at 1/s
    assert p.eta() == 8.0
    p.compiled()
    now[0] = 26.0
    p.update(2)
    assert lines[-1].startswith("rows 4/4 (100%)") and "compile 14s" in lines[-1] and "ETA" not in lines[-1]
    p.close()


def test_eta_without_hooks_or_program_count():
    p, now = clocked(total=10)
    now[0] = 5.0
    p.update(5)
    assert p.eta() == 5.0  # the plain elapsed-time rate
    q, now = clocked(total=4)  # programs unknown: compile time is only kept out of the rate
    q.compiling()
    now[0] = 30.0
    q.compiled()
    now[0] = 31.0
    q.update(1)
    assert q.rate() == 1.0 and q.eta() == 3.0


class FakeBar:
    made = []

    def __init__(self, **kw):
        self.kw, self.n, self.postfix, self.closed = kw, 0, [], False
        FakeBar.made.append(self)

    def update(self, k):
        self.n += k

    def set_postfix_str(self, s, refresh=True):
        self.postfix.append(s)

    def close(self):
        self.closed = True


def test_bar_mode_uses_tqdm_auto(monkeypatch):
    from samplax.experiment import progress

    FakeBar.made.clear()
    monkeypatch.setattr(progress, "tqdm_auto", lambda: FakeBar)
    lines = []
    monkeypatch.setattr(logging, "info", lambda msg, *a: lines.append(msg))
    with clocked("bar", total=3, programs=1, desc="sweep")[0] as p:
        (bar,) = FakeBar.made
        assert bar.kw["total"] == 3 and bar.kw["desc"] == "sweep" and bar.kw["unit"] == "rows"
        p.compiling("unipc o3")
        assert bar.postfix[-1] == "ETA ?, compile 0s, compiling unipc o3"
        p.clock = lambda: 20.0
        p.compiled()
        p.clock = lambda: 21.0
        p.update(1, "unipc o3 logsnr nfe=5")
        assert bar.n == 1 and bar.postfix[-1] == "ETA 2s, compile 20s, unipc o3 logsnr nfe=5"
        p.update(2)
    assert bar.n == 3 and bar.closed and lines == []  # no log lines in bar mode


def test_auto_mode(monkeypatch, capsys):
    import types

    from samplax.experiment import progress

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress.resolve_mode("auto") == "log"
    fake_ipython = types.SimpleNamespace(get_ipython=lambda: object())  # a notebook kernel
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setattr(progress, "tqdm_auto", lambda: FakeBar)
    assert progress.resolve_mode("auto") == "bar"
    monkeypatch.setattr(progress, "tqdm_auto", lambda: None)  # tqdm not installed: plain lines on stderr
    assert progress.resolve_mode("auto") == "print" and progress.resolve_mode("bar") == "print"
    p, now = clocked("auto", total=2)
    now[0] = 1.0
    p.update(2)
    assert capsys.readouterr().err == "rows 2/2 (100%) 2.00 rows/s, elapsed 1s\n"
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))  # plain python
    assert progress.resolve_mode("auto") == "log"
    assert progress.resolve_mode("off") == "off"
    with pytest.raises(ValueError, match="^mode: 'loud' is not a progress mode; allowed: auto, bar, log, print, off"):
        Progress(3, mode="loud")
    with pytest.raises(ValueError, match="^total: must be an integer >= 0, got -1"):
        Progress(-1)
    with pytest.raises(ValueError, match="^programs: must be an integer >= 0, got 2.5"):
        Progress(3, programs=2.5)
    import numpy as np

    assert Progress(np.int64(3), mode="off").total == 3


def test_real_tqdm_bar(capsys):
    pytest.importorskip("tqdm")
    p = Progress(4, "rows", mode="bar", desc="sweep")
    p.compiling("x")
    p.compiled()
    p.update(4)
    p.close()
    err = capsys.readouterr().err
    assert "sweep" in err and "4/4 rows" in err
