"""A minimal progress bar for long steps, shown on stderr only when enabled (the CLI) and only after
about two seconds, so short runs stay silent. The library is silent unless :func:`enable` was called."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("featharm_progress", default=False)
DELAY = 2.0
LOG_EVERY = 10.0  # seconds between lines when stderr is not a terminal (a log file, a pipe)


@contextlib.contextmanager
def enable(flag: bool = True):
    """Show progress bars for the steps run inside this block."""
    token = _enabled.set(flag)
    try:
        yield
    finally:
        _enabled.reset(token)


class Progress:
    """``with Progress(total, "fitting") as bar: ... bar.update(k)``."""

    def __init__(self, total: int, desc: str, stream=None, delay: float = DELAY):
        self.total = max(1, int(total))
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.done = 0
        self.active = _enabled.get()
        self.t0 = time.perf_counter()
        self.shown = False
        # a terminal redraws one line with "\r"; a log file gets a plain line every LOG_EVERY seconds
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last = -LOG_EVERY

    def __enter__(self):
        return self

    def update(self, k: int = 1) -> None:
        self.done += k
        if not self.active:
            return
        elapsed = time.perf_counter() - self.t0
        if elapsed < self.delay and self.done < self.total:
            return
        if elapsed < self.delay and not self.shown:
            return
        if not self.tty and (elapsed - self.last < LOG_EVERY or self.done >= self.total):
            return  # the last line is written by __exit__
        self._draw(elapsed)

    def _draw(self, elapsed: float) -> None:
        frac = min(1.0, self.done / self.total)
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        line = f"{self.desc}: [{bar}] {frac:6.1%} {elapsed:6.1f}s"
        self.stream.write(f"\r{line}" if self.tty else f"{line}\n")
        self.stream.flush()
        self.shown, self.last = True, elapsed

    def __exit__(self, *exc):
        if self.shown:
            self._draw(time.perf_counter() - self.t0)
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()
        return False
