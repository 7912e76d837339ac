"""The command line's progress display: a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from functools import partial

log = logging.getLogger("capsnet")


class LogProgress:
    """Progress when stderr is not a terminal (``nohup``, a log file, CI): one log line
    every ``interval`` seconds instead of a bar, so long runs show where they are."""

    def __init__(self, total: int, desc: str = "", interval: float = 60.0, **_: object):
        self.total, self.desc, self.interval = total, desc, interval
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            log.info(
                "%s: %d/%d (%.0f%%), %.1f/s%s",
                self.desc,
                self.n,
                self.total,
                100 * self.n / self.total,
                rate,
                self.postfix,
            )

    def set_postfix(self, ordered_dict: dict[str, object] | None = None, **kwargs: object) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = "".join(f", {k} {v}" for k, v in items.items())

    def close(self) -> None: ...


def progress_factory():
    if not sys.stderr.isatty():
        return LogProgress
    # imported here, not at the top: only a terminal shows a progress bar
    from tqdm.auto import tqdm

    return partial(tqdm, unit="img", leave=False, dynamic_ncols=True, mininterval=0.5)


__all__ = ["LogProgress", "progress_factory"]
