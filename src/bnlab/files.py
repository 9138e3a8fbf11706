"""Reading back the files bnlab writes, trusting none of them; writing only inside ``--out``.

A run directory's ``config.json``, ``metrics.jsonl``, ``DONE`` and ``checkpoint.pt``, a study's
``study.json``, whatever is handed to ``bnlab inspect``: any of them may be truncated,
hand-edited or hostile. Every reader here returns plain data of the expected kind or raises
``CorruptFileError`` naming the file, what is wrong and the fix (given by the caller, who knows
what the file is for). Nothing read executes code: checkpoints go through
``torch.load(weights_only=True)``, which unpickles tensors, numbers, strings, lists and dicts
only, and refuses any other Python object instead of calling it.

Only regular files are read: a FIFO or a device handed over as a checkpoint would block or
never end.

Names that come from files (a study's name in ``study.json``, say) and become output file names
go through ``inside(out, name)``, which refuses any name that would land outside ``out``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

from bnlab.errors import CorruptFileError

__all__ = ["inside", "load_checkpoint", "read_json", "read_jsonl", "read_text",
           "write_bytes_atomically"]


def _regular(path: Path, fix: str) -> None:
    if not path.exists():
        raise CorruptFileError(path, "missing", fix)
    if not path.is_file():
        raise CorruptFileError(path, "not a regular file", fix)


def read_text(path: str | os.PathLike[str], fix: str) -> str:
    """The UTF-8 text of `path`."""
    path = Path(path)
    _regular(path, fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not UTF-8 text (byte {e.start})", fix) from e
    except OSError as e:
        raise CorruptFileError(path, f"cannot be read ({e.strerror})", fix) from e


def _parse(text: str, path: Path, fix: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CorruptFileError(path, f"not valid JSON{where} ({e})", fix) from e
    except RecursionError as e:
        raise CorruptFileError(path, f"JSON nested too deeply{where}", fix) from e


def read_json(path: str | os.PathLike[str], fix: str) -> dict[str, Any]:
    """A JSON file holding one object."""
    path = Path(path)
    value = _parse(read_text(path, fix), path, fix)
    if not isinstance(value, dict):
        raise CorruptFileError(path, f"holds a JSON {type(value).__name__}, not an object", fix)
    return value


def read_jsonl(path: str | os.PathLike[str], fix: str) -> list[dict[str, Any]]:
    """A JSON-lines file: one object per non-blank line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(read_text(path, fix).splitlines(), 1):
        if not line.strip():
            continue
        row = _parse(line, path, fix, f" on line {number}")
        if not isinstance(row, dict):
            raise CorruptFileError(path, f"line {number} holds a JSON {type(row).__name__}, "
                                   f"not an object", fix)
        rows.append(row)
    return rows


def load_checkpoint(path: str | os.PathLike[str], fix: str,
                    map_location: Any = "cpu") -> Any:
    """What a PyTorch checkpoint holds, loaded as weights only (no code runs)."""
    import torch

    path = Path(path)
    _regular(path, fix)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise, not news
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CorruptFileError(
                path, "refused: it holds Python objects other than tensors and plain data, and "
                "loading those could run code (bnlab loads weights only)", fix) from e
        raise CorruptFileError(path, f"not a PyTorch checkpoint ({_first_line(e)})", fix) from e
    except Exception as e:  # any other failure of the parser means a damaged file
        raise CorruptFileError(path, f"not a readable PyTorch checkpoint ({_first_line(e)})",
                               fix) from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def inside(root: str | os.PathLike[str], name: str, source: str | os.PathLike[str], *,
           flat: bool = False) -> Path:
    """``root / name``, refused unless `name` is a plain relative name that stays in `root`.

    `source` is the file the name came from (named in the error). Refused: anything but a
    non-empty string, absolute paths, empty, ``.`` or ``..`` parts, backslashes, control
    characters, any ``/`` when `flat` (one file name, no folders), and names whose resolved
    path (symbolic links followed) leaves `root`.
    """
    fix = "bnlab reads and writes only inside the directories it is given; correct the name"
    if not isinstance(name, str):
        raise CorruptFileError(source, f"expected a name, found {name!r}", fix)
    parts = name.split("/")
    plain = (bool(name) and not name.startswith("/") and "\\" not in name
             and all(p not in ("", ".", "..") for p in parts) and not (flat and len(parts) > 1)
             and all(ord(c) >= 32 and ord(c) != 127 for c in name))
    if not plain:
        raise CorruptFileError(source, f"the name {name!r} is not a plain relative name", fix)
    base = Path(root).resolve()
    if not (base / name).resolve().is_relative_to(base):
        raise CorruptFileError(source, f"the name {name!r} leads outside {base}", fix)
    return base / name


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` whole or not at all: an unpredictable temporary file beside it
    (created exclusively, never following a link), fsync, rename over `path`, fsync of the
    directory. A crash or a full disk leaves the old file (or none), never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path
