"""Progress bars with an ETA (tqdm): training epochs, evaluation, the runs of a study.

``tqdm.auto`` draws a widget in Jupyter and a text bar on a terminal. Bars are drawn only where
someone watches: on a terminal or in a notebook, never into a file, a pipe or CI logs, where
carriage returns become noise. ``BNLAB_PROGRESS=1`` asks for bars anyway (e.g. a log tailed
live), ``BNLAB_PROGRESS=0`` turns them off everywhere.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

__all__ = ["Progress", "wanted"]


def _in_notebook() -> bool:
    # A Jupyter kernel's stderr is no terminal, yet a widget there is what the user expects.
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return type(ip).__name__ == "ZMQInteractiveShell"


def wanted(enabled: bool = True, stream: TextIO | None = None) -> bool:
    """Whether to draw a bar: `enabled` by the caller, then BNLAB_PROGRESS, then where the
    output goes (a terminal or a notebook, and not CI)."""
    if not enabled:
        return False
    forced = os.environ.get("BNLAB_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "always"):
        return True
    if forced in ("0", "false", "no", "never") or os.environ.get("CI"):
        return False
    stream = stream if stream is not None else sys.stderr
    return _in_notebook() or bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """``Progress(total, label)``; ``update(done, loss=...)`` per step; ``close()`` at the end.

    A thin shell over tqdm (elapsed time, rate and ETA come from it); when not `wanted` it
    creates no bar at all, so a quiet run pays nothing per step.
    """

    def __init__(self, total: int, label: str, enabled: bool = True,
                 stream: TextIO | None = None, unit: str = "batch",
                 bar_format: str | None = None) -> None:
        self.bar: Any = None
        if wanted(enabled, stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True,
                            file=stream if stream is not None else sys.stderr,
                            bar_format=bar_format, mininterval=0.1)

    @property
    def enabled(self) -> bool:
        return self.bar is not None

    def update(self, done: int, **values: float) -> None:
        """`done` steps of `total` so far; `values` (loss, accuracy) shown beside the bar."""
        if self.bar is None:
            return
        if values:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()}, refresh=False)
        self.bar.update(done - self.bar.n)

    def status(self, text: str) -> None:
        """A short note after the count ("2 running"); shown at the next refresh."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, message: str) -> None:
        """Print a line above the bar (or plainly without one) without breaking the bar."""
        if self.bar is None:
            print(message)
        else:
            self.bar.write(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # the final count, which tqdm's rate limit may have skipped
            self.bar.close()
            self.bar = None
