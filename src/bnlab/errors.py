"""Errors a user can cause and fix, as opposed to bugs.

A damaged or hostile file, data that do not fit, a run directory in use: each is raised as a
``UserError`` whose message names the thing at fault and the fix. The ``bnlab`` command prints
such an error as one line and exits with status 1 (``bnlab.cli``); anything else that escapes
is a bug and keeps its traceback. The subclasses also derive from the built-in exception a
Python caller would expect (``ValueError``, ``RuntimeError``).

This module imports nothing, so every layer can raise these errors.
"""

from __future__ import annotations

import os

__all__ = ["CorruptFileError", "RunDirError", "UnavailableError", "UnsafePathError", "UserError",
           "one_line"]


def one_line(text: str) -> str:
    """`text` with its lines joined by spaces: what the command prints after ``bnlab: error:``."""
    return " ".join(part for part in (ln.strip() for ln in str(text).splitlines()) if part)


class UserError(Exception):
    """A problem in the user's files, data, flags or machine; the message says how to fix it."""


class CorruptFileError(UserError, ValueError):
    """A file bnlab reads is missing, unreadable, malformed or not what it should be."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = os.fspath(path), problem, fix
        super().__init__(f"{self.path}: {one_line(problem)}; {fix}")


class RunDirError(UserError, ValueError):
    """A run directory that cannot be used as asked: in use, or holding another config."""


class UnavailableError(UserError, RuntimeError):
    """Something a run needs is not there: a CUDA device, a peer rank."""


class UnsafePathError(UserError, OSError):
    """A name bnlab would write (or read a record) through is a symbolic link or not a plain file.

    Writing through a planted link would change a file outside the output directory; bnlab
    refuses instead, naming the link, and changes nothing.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path, self.problem = os.fspath(path), problem
        message = (f"{self.path}: {one_line(problem)}; bnlab writes only real files and "
                   f"directories inside its output: remove it or choose another output "
                   f"directory")
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0])
