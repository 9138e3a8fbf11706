"""Synthetic CIFAR-10 files: batches pickled as Python 2's cPickle wrote the official ones.

The official batches come from Python 2 (protocol 2, ``str`` as SHORT_BINSTRING/BINSTRING,
arrays via ``numpy.core.multiarray._reconstruct``), which Python 3 cannot write; ``py2_pickle``
emits those opcodes itself for the few types a batch holds. ``py3=True`` pickles with Python
3's own pickle instead (protocol 4, numpy 2's module names), the other form a copy may take.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

from bnlab.data.cifar import ARCHIVE, FOLDER, META, SPLIT_BATCHES

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str | bytes) -> bytes:
    data = s.encode("latin1") if isinstance(s, str) else s
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<I", len(data)) + data


def _emit(obj: object) -> bytes:
    if isinstance(obj, (str, bytes)):
        return _str(obj)
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if obj is None:
        return b"N"
    if isinstance(obj, tuple):
        return b"(" + b"".join(_emit(o) for o in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_emit(o) for o in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_emit(k) + _emit(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray):  # as numpy 1.x under Python 2 pickled an array
        dtype = (_global("numpy", "dtype") + _emit((obj.dtype.str[1:], 0, 1)) + b"R"
                 + _emit((3, "|", None, None, None, -1, -1, 0)) + b"b")
        state = b"(" + _emit(1) + _emit(obj.shape) + dtype + _emit(False) + _str(
            obj.tobytes()) + b"t"
        return (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                + _emit((0,)) + _str("b") + b"\x87R" + state + b"b")
    raise TypeError(type(obj))


def py2_pickle(obj: object) -> bytes:
    return b"\x80\x02" + _emit(obj) + b"."


def batch_bytes(images: torch.Tensor, labels: torch.Tensor, py3: bool = False) -> bytes:
    """A batch file of `images` (N, 3, 32, 32) uint8 and `labels` (N,)."""
    batch = {"batch_label": "training batch 1 of 5",
             "labels": [int(y) for y in labels],
             "data": images.reshape(len(images), -1).numpy(),
             "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    return pickle.dumps(batch, protocol=4) if py3 else py2_pickle(batch)


def fake_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def fake_batches(per_batch: int = 6, py3: bool = False) -> tuple[dict[str, bytes], dict[
        str, tuple[torch.Tensor, torch.Tensor]]]:
    """file name -> bytes for the seven files, and split -> the (images, labels) they hold."""
    files, splits = {}, {}
    for split, names in SPLIT_BATCHES.items():
        parts = [fake_split(per_batch, 10 * i + len(split)) for i in range(len(names))]
        for name, (x, y) in zip(names, parts, strict=True):
            files[name] = batch_bytes(x, y, py3)
        splits[split] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    meta = {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}
    files[META] = pickle.dumps(meta, protocol=4) if py3 else py2_pickle(meta)
    return files, splits


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    """torchvision's layout: <root>/cifar-10-batches-py/<files>."""
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def write_archive(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ARCHIVE
    path.write_bytes(tar_bytes(files))
    return path
