"""Progress lines: rate and ETA from a fake clock; rate-limited logging."""
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
