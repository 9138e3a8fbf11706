"""CIFAR-10's python batches, read without running any code from them.

The official ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with ``data_batch_1`` to
``data_batch_5`` (10 000 images each), ``test_batch`` and ``batches.meta``. Each batch is a
pickled dict (Python 2, cPickle)::

    {"data": uint8 ndarray (N, 3072),   # per row: 1024 red, 1024 green, 1024 blue, row-major
     "labels": [N ints in 0..9], "batch_label": str, "filenames": [N str]}

and ``batches.meta`` holds ``{"label_names": [10 str], ...}``.

Unpickling is running a small program: a pickle may name any importable callable and call it.
``_BatchUnpickler`` answers ``find_class`` for exactly the three names a numpy array is pickled
with (``numpy.core.multiarray._reconstruct`` or its numpy-2 home ``numpy._core...``,
``numpy.ndarray``, ``numpy.dtype``) and refuses every other one, so a file can only build dicts,
lists, strings, bytes, numbers and plain numeric arrays. Even those three are guarded: the
array class is a token only ``_reconstruct`` accepts, and ``dtype`` accepts numeric codes only
(no object arrays). Python 2 strings are decoded as latin-1, which is what numpy expects of the
array bytes inside them. The archive is read in memory, member by exact name: nothing is
extracted, so no member's path can lead anywhere.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnlab.errors import UserError

__all__ = ["ARCHIVE", "FOLDER", "META", "SPLIT_BATCHES", "CifarError", "parse_batch",
           "parse_meta", "read_split"]

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"  # inside the archive, and torchvision's <root>/ layout
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                 "test": ("test_batch",)}
META = "batches.meta"
SIDE = 32
MAX_MEMBER = 256 << 20  # a batch is 30 MiB; refuse to inflate anything far bigger


class CifarError(UserError, ValueError):
    """A CIFAR file that is not what it should be; the message names it and the fix."""


FIX = "replace the files with a verified copy (`bnlab data fetch --dataset cifar10 --force`)"


class _ArrayClass:
    """Stands for numpy.ndarray: accepted by _reconstruct, not callable by the pickle."""


_NUMERIC = frozenset("?bBhHiIlLqQefdg") | {f"{k}{n}" for k in "uif" for n in (1, 2, 4, 8)}


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    code = spec.lstrip("<>|=") if isinstance(spec, str) else None
    if code not in _NUMERIC:
        raise pickle.UnpicklingError(f"refused dtype {spec!r}: only plain numeric arrays")
    return np.dtype(spec, bool(align), bool(copy))


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") + ndarray.__setstate__.
    # The shape and dtype here are placeholders (the state sets both): numpy writes (0,), and
    # anything else is refused rather than allocated.
    if cls is not _ArrayClass or shape != (0,):
        raise pickle.UnpicklingError(f"refused to reconstruct {cls!r} of shape {shape!r}: "
                                     f"only numpy arrays, as numpy pickles them")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayClass,
    ("numpy", "dtype"): _dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Builds plain data and numeric numpy arrays; refuses every other global (see above)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR batch holds plain "
                                         f"data and arrays only, and loading anything else "
                                         f"could run code") from None


def _unpickle(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CifarError(f"{where}: {e}; {FIX}") from None
    except Exception as e:  # any other failure of the parser means a damaged file
        raise CifarError(f"{where}: not a readable CIFAR batch ({type(e).__name__}: "
                         f"{str(e)[:120]}); {FIX}") from None
    if not isinstance(value, dict):
        raise CifarError(f"{where}: holds a {type(value).__name__}, not a dict; {FIX}")
    # Python 2 str keys arrive as str (latin-1); bytes keys if it was pickled from bytes.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in value.items()}


def parse_batch(data: bytes, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file's bytes -> (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    batch = _unpickle(data, where)
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or \
            images.shape[1] != 3 * SIDE * SIDE:
        got = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
               else type(images).__name__)
        raise CifarError(f"{where}: 'data' must be a uint8 array (N, 3072), got {got}; {FIX}")
    if not isinstance(labels, list) or not all(type(y) is int for y in labels):
        raise CifarError(f"{where}: 'labels' must be a list of ints; {FIX}")
    if len(labels) != images.shape[0]:
        raise CifarError(f"{where}: {images.shape[0]} images but {len(labels)} labels; {FIX}")
    if labels and not 0 <= min(labels) <= max(labels) <= 9:
        raise CifarError(f"{where}: label {max(labels)} out of range for 10 classes; {FIX}")
    # (N, 3072) -> (N, 3, 32, 32): the planes are stored red, green, blue, each row-major.
    x = torch.from_numpy(images.copy()).reshape(-1, 3, SIDE, SIDE)  # a writable copy
    return x, torch.tensor(labels, dtype=torch.int64)


def parse_meta(data: bytes, where: str) -> tuple[str, ...]:
    """``batches.meta``'s class names."""
    names = _unpickle(data, where).get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(
            isinstance(n, (str, bytes)) for n in names):
        raise CifarError(f"{where}: 'label_names' must list 10 names; {FIX}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def _read_members(tar: tarfile.TarFile, archive: Path, names: tuple[str, ...]) -> dict[
        str, bytes]:
    """The members `FOLDER/name`, in one pass over the stream (a .tar.gz cannot seek back
    cheaply); a link or an oversized member is refused, never followed."""
    wanted = {f"{FOLDER}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    for member in tar:
        name = wanted.get(member.name)
        if name is None or name in out:
            continue
        if not member.isfile() or member.size > MAX_MEMBER:
            raise CifarError(f"{archive}:{member.name}: not a regular file of at most "
                             f"{MAX_MEMBER} bytes; {FIX}")
        f = tar.extractfile(member)
        assert f is not None  # a regular file
        out[name] = f.read()
        if len(out) == len(names):
            break
    missing = [f"{FOLDER}/{n}" for n in names if n not in out]
    if missing:
        raise CifarError(f"{archive}: has no {', '.join(missing)}; {FIX}")
    return out


def _open_archive(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CifarError(f"{path}: not a readable tar archive ({e}); {FIX}") from None


def read_batches(files: dict[str, Path], names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of batch files `names`, from the archive (key "archive") or the folder."""
    if "archive" in files:
        path = files["archive"]
        try:
            with _open_archive(path) as tar:
                return _read_members(tar, path, names)
        except (tarfile.TarError, OSError, EOFError) as e:  # damage found while reading on
            raise CifarError(f"{path}: damaged archive ({e}); {FIX}") from None
    out = {}
    for n in names:
        try:
            out[n] = files[n].read_bytes()
        except OSError as e:
            raise CifarError(f"{files[n]}: cannot be read ({e.strerror}); {FIX}") from None
    return out


def read_split(files: dict[str, Path], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of `split` (its batches in order)."""
    names = SPLIT_BATCHES[split]
    raw = read_batches(files, names)
    where = files.get("archive")
    parts = [parse_batch(raw[n], f"{where}:{FOLDER}/{n}" if where else os.fspath(files[n]))
             for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
