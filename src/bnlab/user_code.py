"""Errors raised inside the user's own code, reported where they happened.

A user's network, factory or dataset runs inside bnlab's loop, so a plain traceback buries the
user's line under bnlab's and torch's frames. ``user_code(what)`` turns an exception whose
traceback passes through the user's code into a one-line ``UserCodeError``: what was running,
the exception, and the innermost frame that is the user's (not bnlab's, torch's or Python's
own library), e.g.

    your network's forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied
    (4x400 and 256x120) at mynet.py:21, in forward; run with --debug for the full traceback

The original exception is chained (``raise ... from e``): ``bnlab --debug`` prints it whole. An
exception that never passed through user code is bnlab's own and propagates unchanged.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from bnlab.errors import UserError, one_line

__all__ = ["UserCodeError", "user_code", "user_frame"]


def _library_roots() -> tuple[str, ...]:
    import torch

    roots = {Path(__file__).parent, Path(torch.__file__).parent}  # bnlab's and torch's own
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(Path(path))
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def user_frame(tb: TracebackType | None) -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost traceback frame outside the libraries, or None.

    Frames of files that do not exist (``<string>``, ``<frozen ...>``) are not the user's."""
    roots = _library_roots()
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        path = os.path.realpath(code.co_filename)
        if os.path.isfile(path) and not path.startswith(roots):
            found = (code.co_filename, tb.tb_lineno, code.co_name)
        tb = tb.tb_next
    return found


class UserCodeError(UserError, RuntimeError):
    """An exception raised inside the user's network, factory or data (chained to it)."""


@contextmanager
def user_code(what: str, *, always: str | None = None) -> Iterator[None]:
    """Report an exception raised in the user's code inside this block as a UserCodeError.

    With `always` (a description of the input, e.g. "on inputs of shape (64, 1, 28, 28)"),
    every exception of the block is reported so, even one raised by a library layer the
    user's network is made of (an ``nn.Sequential`` has no frame of its own)."""
    try:
        yield
    except (UserError, KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as e:
        where = user_frame(e.__traceback__)
        if where is None and always is None:
            raise
        message = one_line(str(e)) or "(no message)"
        if len(message) > 300:
            message = message[:297] + "..."
        place = ""
        if where is not None:
            file, line, func = where
            shown = os.path.relpath(file)
            shown = file if shown.startswith("..") else shown
            place = f" at {shown}:{line}, in {func}"
        raise UserCodeError(f"{what} raised {type(e).__name__}: {message}{place}"
                            f"{' ' + always if always else ''}; run with --debug for the full "
                            f"traceback") from e
