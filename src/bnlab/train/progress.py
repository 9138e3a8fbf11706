"""A one-line progress bar on a terminal; silent when output goes to a file, a pipe or CI."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, enabled: bool = True,
                 stream: TextIO | None = None) -> None:
        # sys.stderr as it is now, not as it was at import (a test's capture, since closed).
        stream = sys.stderr if stream is None else stream
        self.total, self.label, self.stream = total, label, stream
        self.enabled = enabled and stream.isatty() and not os.environ.get("CI")
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, **values: float) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        width = 24
        filled = width * done // max(self.total, 1)
        extra = " ".join(f"{k} {v:.3f}" for k, v in values.items())
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done}/{self.total} {extra} {now - self.start:5.1f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
