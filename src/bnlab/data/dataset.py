"""Load a split of a registered dataset into memory, validated: uint8 images, int64 labels.

Images are (N, H, W) for the grey IDX datasets and (N, C, H, W) for colour ones (CIFAR-10).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bnlab.data import cifar, synthetic
from bnlab.data.download import DownloadError
from bnlab.data.idx import IdxError, read_idx
from bnlab.data.registry import SPLITS, get_spec
from bnlab.data.sources import Source, fetch_to_cache, find_source
from bnlab.errors import UserError

__all__ = ["SYNTHETIC_DIR", "Split", "load_split", "locate"]

# What a synthetic dataset's Source names as its directory: no directory holds it.
SYNTHETIC_DIR = Path("<generated in memory>")


@dataclass
class Split:
    images: torch.Tensor  # (N, H, W) or (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    source: Source

    def __len__(self) -> int:
        return self.labels.shape[0]


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _read_pair(img_path: Path, lbl_path: Path, img_stamp: tuple[int, int],
               lbl_stamp: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded files, cached per process (studies train many runs on the same data); a file
    that changes on disk (other mtime or size) is read again. Callers must not modify them."""
    return read_idx(img_path), read_idx(lbl_path)


@functools.lru_cache(maxsize=4)
def _read_cifar(files: tuple[tuple[str, Path], ...], split: str,
                stamps: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """As `_read_pair`, for CIFAR-10 (the archive or the batch files)."""
    return cifar.read_split(dict(files), split)


def locate(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
           log: Callable[[str], None] = print) -> Source:
    """The source the dataset will be read from, downloading into the cache if need be."""
    spec = get_spec(name)
    if spec.layout == "synthetic":  # generated, never read: a --data-dir has nothing to add
        if data_dir is not None:
            raise UserError(f"{name} is generated in memory (bnlab.data.synthetic), not read "
                            f"from files: drop --data-dir, or name a real dataset")
        return Source("synthetic", SYNTHETIC_DIR, {})
    source = find_source(spec, data_dir)
    if source is not None:
        return source
    if data_dir is not None:  # never a silent fall-back to another copy
        raise UserError(f"--data-dir {data_dir} holds no complete copy of {spec.title} "
                        f"(needs {spec.describe_files()}, in it, in {spec.name}/ or in "
                        f"{spec.torchvision_subdir}/); copy the files there, run `bnlab "
                        f"data fetch --dataset {name} --data-dir {data_dir}`, or drop "
                        f"--data-dir")
    if not download:
        raise FileNotFoundError(
            f"{spec.title} not found (looked in --data-dir, BNLAB_DATA, "
            f"{', '.join(spec.system_dirs)}, torchvision layouts and the cache); run "
            f"`bnlab data fetch --dataset {name}` or pass --data-dir"
        )
    log(f"{spec.title} not found locally; downloading into the cache")
    try:
        return fetch_to_cache(spec, log=log)
    except DownloadError as e:
        hint = (" (Debian: `apt-get install dataset-fashion-mnist`)"
                if name == "fashion-mnist" else "")
        raise DownloadError(f"{e}{hint}") from e


def load_split(name: str = "fashion-mnist", split: str = "train",
               data_dir: str | os.PathLike[str] | None = None, download: bool = True,
               log: Callable[[str], None] = print) -> Split:
    """Read and validate one split; errors name the offending file."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    spec = get_spec(name)
    source = locate(name, data_dir, download, log)
    if spec.layout == "synthetic":
        images, labels = synthetic.generate(spec, split)
        return Split(images, labels, spec.classes, source)
    if spec.layout == "cifar":  # parse_batch checked dtypes, shapes and labels
        files = tuple(sorted(source.files.items()))
        images, labels = _read_cifar(files, split, tuple(_stamp(p) for _, p in files))
        if images.shape[0] == 0:
            raise cifar.CifarError(f"{source.directory}: the {split} split holds no examples; "
                                   f"{cifar.FIX}")
        return Split(images, labels, spec.classes, source)
    img_path, lbl_path = source.files[f"{split}-images"], source.files[f"{split}-labels"]
    images, labels = _read_pair(img_path, lbl_path, _stamp(img_path), _stamp(lbl_path))
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise IdxError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} "
                       f"{tuple(images.shape)}")
    if labels.dim() != 1 or labels.dtype != torch.uint8:
        raise IdxError(f"{lbl_path}: expected uint8 labels (N,), got {labels.dtype} "
                       f"{tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise IdxError(f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
                       f"{labels.shape[0]} labels: the files do not belong together")
    if labels.numel() and int(labels.max()) >= len(spec.classes):
        raise IdxError(f"{lbl_path}: label {int(labels.max())} out of range for "
                       f"{len(spec.classes)} classes")
    if images.shape[0] == 0:
        raise IdxError(f"{img_path}: the {split} split holds no examples; replace the files "
                       f"with a complete copy (`bnlab data fetch --force`)")
    if tuple(images.shape[1:]) != spec.image_size:
        h, w = spec.image_size
        raise IdxError(f"{img_path}: images of {images.shape[1]}x{images.shape[2]} pixels, but "
                       f"{spec.title} images are {h}x{w}; these files belong to another "
                       f"dataset: replace them (`bnlab data fetch --force`)")
    return Split(images, labels.long(), spec.classes, source)
