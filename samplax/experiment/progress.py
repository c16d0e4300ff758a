"""Progress of long work: a ``tqdm.auto`` bar in notebooks, absl log lines elsewhere.

absl's INFO lines are not shown in a notebook (nor in any program that does not run
under ``absl.app``), so a sweep started from a Colab cell used to be silent for a
minute.  :class:`Progress` therefore picks its output (``mode="auto"``):

* inside IPython (a Jupyter or Colab kernel, or the IPython shell): a progress bar
  from ``tqdm.auto`` (a widget where ipywidgets is installed, text otherwise); when
  tqdm is not installed, plain lines on stderr (``"print"``), rate-limited;
* anywhere else: absl INFO lines, rate-limited (``"log"``).

The ETA leaves compilation out: compiling a program takes seconds to minutes and
running it milliseconds, so a rate measured over the first item (compile included)
predicts nothing.  The caller brackets each compilation with :meth:`Progress.compiling`
and :meth:`Progress.compiled`; the rate is then units per second of *run* time, and
the ETA is ``left / rate`` plus, when the number of programs is known (``programs``),
the mean compile time for each program not compiled yet.  Before the first unit is
done the ETA is shown as ``?``.  Without the hooks it is the plain elapsed-time rate.
"""
from __future__ import annotations

import operator
import sys
import time
from typing import Callable, Optional

from absl import logging

MODES = ("auto", "bar", "log", "print", "off")


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def in_ipython() -> bool:
    """True inside IPython (a notebook kernel or the IPython shell), where absl INFO lines are hidden."""
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        return ip.get_ipython() is not None
    except Exception:  # a half-imported or stub IPython  # noqa: BLE001
        return False


def tqdm_auto() -> Optional[Callable]:
    """``tqdm.auto.tqdm`` (a widget in a notebook with ipywidgets), the text bar
    ``tqdm.std.tqdm`` when ipywidgets is missing (what tqdm.auto falls back to, after a
    warning), or None when tqdm is not installed."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return None
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm as text_bar
        return text_bar
    from tqdm.auto import tqdm as auto_bar
    return auto_bar


def resolve_mode(mode: str = "auto") -> str:
    """The output ``mode`` resolves to here: "bar", "log", "print" or "off"."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not a progress mode; allowed: {', '.join(MODES)}")
    if mode == "bar" and tqdm_auto() is None:
        logging.info("progress: tqdm is not installed (pip install tqdm); showing plain lines instead of a bar")
        return "print"
    if mode != "auto":
        return mode
    if not in_ipython():
        return "log"
    return "bar" if tqdm_auto() is not None else "print"


def _count(name: str, v) -> int:
    """``v`` as an int >= 0 (numpy integers too), else ValueError naming ``name``."""
    if not isinstance(v, bool):
        try:
            n = operator.index(v)
        except TypeError:
            n = None
        if n is not None and n >= 0:
            return n
    raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")


class Progress:
    """Progress of ``total`` units of work.

    ``update(k, what)`` after each unit(s) of work; ``compiling(what)`` and
    ``compiled()`` around each compilation (optional, see the module docstring);
    ``close()`` at the end (or use it as a context manager).  Log and print modes
    write at most every ``every_s`` seconds (and always at the end) a line like
    ``rows 48/192 (25%) 3.10 rows/s, elapsed 15s (compile 12s), ETA 46s: <what>``;
    bar mode shows the same numbers after a tqdm bar.

    Args:
      total: units of work.
      unit: their name, plural ("rows", "steps").
      every_s: least seconds between two lines (log/print modes).
      clock: seconds, monotonic (tests pass a fake one).
      mode: "auto" (bar in IPython, log lines elsewhere), "bar", "log", "print" (plain
        lines on stderr) or "off".
      programs: how many programs will be compiled in all, when known: the ETA then
        includes the mean compile time of each one still to compile.
      desc: a title for the bar and the lines (e.g. "sweep").
    """

    def __init__(self, total: int, unit: str = "rows", every_s: float = 5.0, clock=time.monotonic,
                 mode: str = "auto", programs: Optional[int] = None, desc: str = ""):
        total = _count("total", total)
        programs = None if programs is None else _count("programs", programs)
        self.total, self.unit, self.every_s, self.clock = total, unit, every_s, clock
        self.programs, self.desc = programs, desc
        self.mode = resolve_mode(mode)
        self.done = 0
        self.t0 = clock()
        self.last = -float("inf")
        self.compile_s = 0.0          # finished compilations, summed
        self.n_compiled = 0
        self._compile_t0: Optional[float] = None
        self._compiling_what = ""
        self._closed = False
        self.bar = None
        if self.mode == "bar":
            tqdm = tqdm_auto()
            self.bar = tqdm(total=total, desc=desc or None, unit=unit, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} " + unit + " [{elapsed}{postfix}]")

    # ------------------------------------------------------------------ timing
    def start(self) -> None:
        """Restart the clock (when the object was made before the work begins)."""
        self.t0 = self.clock()
        self.last = -float("inf")

    def _compiling_now(self) -> float:
        return self.clock() - self._compile_t0 if self._compile_t0 is not None else 0.0

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def run_seconds(self) -> float:
        """Elapsed time outside compilation."""
        return max(self.elapsed() - self.compile_s - self._compiling_now(), 0.0)

    def rate(self) -> float:
        """Units per second of run time (compilation left out); 0 before the first unit."""
        t = self.run_seconds()
        return self.done / t if t > 0 and self.done else 0.0

    def eta(self) -> Optional[float]:
        """Seconds left (None while unknown: nothing done yet), compilation estimated
        as described in the module docstring."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate()
        if rate <= 0:
            return None
        eta = left / rate
        if self.programs is not None and self.n_compiled:
            mean = self.compile_s / self.n_compiled
            now = self._compiling_now()
            started = self.n_compiled + (1 if self._compile_t0 is not None else 0)
            eta += max(self.programs - started, 0) * mean + (max(mean - now, 0.0) if now else 0.0)
        return eta

    # ------------------------------------------------------------------ hooks
    def compiling(self, what: str = "") -> None:
        """A compilation starts (its time is kept out of the rate)."""
        if self._compile_t0 is not None:  # two starts in a row: close the first
            self.compiled()
        self._compile_t0 = self.clock()
        self._compiling_what = what
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(f"compiling {what}".strip()), refresh=True)

    def compiled(self, what: str = "") -> float:
        """The compilation started by :meth:`compiling` is done; returns its seconds
        (0 when none was started).  Log/print modes write one line for it."""
        if self._compile_t0 is None:
            return 0.0
        dt = self.clock() - self._compile_t0
        self._compile_t0 = None
        self.compile_s += dt
        self.n_compiled += 1
        what = what or self._compiling_what
        of = f" ({self.n_compiled}/{self.programs})" if self.programs else ""
        self._emit(f"compiled{of}{' ' + what if what else ''} in {dt:.1f}s", force=True, rate_limited=False)
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=True)
        return dt

    # ------------------------------------------------------------------ output
    def _eta_text(self) -> str:
        eta = self.eta()
        return "ETA ?" if eta is None else f"ETA {_fmt_s(eta)}"

    def _postfix(self, what: str = "") -> str:
        parts = []
        if self.done < self.total:
            parts.append(self._eta_text())
        if self.compile_s or self._compile_t0 is not None:
            parts.append(f"compile {_fmt_s(self.compile_s + self._compiling_now())}")
        if what:
            parts.append(what)
        return ", ".join(parts)

    def line(self, what: str = "") -> str:
        el = self.elapsed()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        s = (f"{self.desc + ': ' if self.desc else ''}{self.unit} {self.done}/{self.total} ({pct:.0f}%) "
             f"{self.rate():.2f} {self.unit}/s, elapsed {_fmt_s(el)}")
        comp = self.compile_s + self._compiling_now()
        if comp:
            s += f" (compile {_fmt_s(comp)})"
        if self.done < self.total:
            s += f", {self._eta_text()}"
        return s + (f": {what}" if what else "")

    def _emit(self, text: str, force: bool = False, rate_limited: bool = True) -> None:
        """Write ``text`` (log/print modes); a ``rate_limited`` line resets the every_s clock."""
        now = self.clock()
        if not force and now - self.last < self.every_s:
            return
        if self.mode == "log":
            logging.info("%s", text)
        elif self.mode == "print":
            print(text, file=sys.stderr, flush=True)
        if rate_limited:
            self.last = now

    def update(self, k: int = 1, what: str = "") -> None:
        self.done += k
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(what), refresh=False)  # shown by the update's refresh
            self.bar.update(k)
            return
        self._emit(self.line(what), force=self.done >= self.total)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._compile_t0 is not None:
            self.compiled()
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
            self.bar.close()
        elif self.total == 0:
            self._emit(f"{self.desc + ': ' if self.desc else ''}{self.unit}: nothing to do", force=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress", "MODES", "in_ipython", "resolve_mode", "tqdm_auto"]
