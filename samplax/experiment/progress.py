"""Progress of long work through absl logging: done/total, rate and ETA."""
from __future__ import annotations

import time

from absl import logging


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class Progress:
    """``update(k)`` after each unit of work; logs at most every ``every_s`` seconds
    (and at the end) a line like ``rows 48/192 (25%) 3.1 rows/s, ETA 46s: <what>``."""

    def __init__(self, total: int, unit: str = "rows", every_s: float = 5.0, clock=time.monotonic):
        self.total, self.unit, self.every_s, self.clock = total, unit, every_s, clock
        self.done = 0
        self.t0 = clock()
        self.last = -float("inf")

    def line(self, what: str = "") -> str:
        el = self.clock() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        s = f"{self.unit} {self.done}/{self.total} ({pct:.0f}%) {rate:.2f} {self.unit}/s, elapsed {_fmt_s(el)}"
        if self.done < self.total:
            s += f", ETA {_fmt_s(eta) if eta != float('inf') else '?'}"
        return s + (f": {what}" if what else "")

    def update(self, k: int = 1, what: str = "") -> None:
        self.done += k
        now = self.clock()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            logging.info(self.line(what))

    def close(self) -> None:
        if self.total == 0:
            logging.info("%s: nothing to do", self.unit)
