"""Where a dataset's files are found, in order; the first complete copy wins.

Given ``--data-dir`` (``data_dir=``), only that directory is searched (itself, its
``<name>`` subfolder and torchvision's layout under it): a directory that does not exist or
holds no complete copy is an error, never a silent fall-back to another copy. Otherwise:

1. the ``BNLAB_DATA`` environment variable;
2. the distribution package's location (Debian ``dataset-fashion-mnist``);
3. torchvision's ``<root>/FashionMNIST/raw``, ``<root>/MNIST/raw`` and
   ``<root>/cifar-10-batches-py`` layouts under the roots above and ``./data`` and ``~/data``,
   so existing torchvision downloads are reused;
4. bnlab's cache (``BNLAB_CACHE``, else ``$XDG_CACHE_HOME/bnlab``, else ``~/.cache/bnlab``),
   filled by a verified download from the official mirrors.

A directory is *complete* when it holds all four IDX files, gzipped or not (CIFAR-10: the seven
batch files, or the official archive). A complete copy whose files fail validation is an error
naming the file, never silently skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from bnlab.data.download import fetch, md5sum
from bnlab.data.registry import DatasetSpec
from bnlab.errors import UserError

__all__ = ["Source", "cache_dir", "candidate_dirs", "fetch_to_cache", "find_source",
           "verify_checksum"]


@dataclass(frozen=True)
class Source:
    kind: str  # "data-dir", "BNLAB_DATA", "system", "torchvision", "cache"
    directory: Path
    files: dict[str, Path]  # file key ("train-images", ...) -> path found


def cache_dir() -> Path:
    if os.environ.get("BNLAB_CACHE"):
        return Path(os.environ["BNLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnlab"


def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None) -> list[
        tuple[str, Path]]:
    """Every directory that may hold the dataset, in the order they are tried."""
    if data_dir is not None:  # the user's choice: that directory and nothing else
        root = Path(data_dir)
        return [("data-dir", root), ("data-dir", root / spec.name),
                ("data-dir", root / spec.torchvision_subdir)]
    roots: list[tuple[str, Path]] = []
    if os.environ.get("BNLAB_DATA"):
        roots.append(("BNLAB_DATA", Path(os.environ["BNLAB_DATA"])))
    dirs: list[tuple[str, Path]] = []
    for kind, root in roots:
        dirs += [(kind, root), (kind, root / spec.name)]
    dirs += [("system", Path(d)) for d in spec.system_dirs]
    tv_roots = [root for _, root in roots] + [Path.cwd() / "data", Path.home() / "data"]
    dirs += [("torchvision", r / spec.torchvision_subdir) for r in tv_roots]
    dirs.append(("cache", cache_dir() / spec.name))
    return dirs


def _files_in(spec: DatasetSpec, directory: Path) -> dict[str, Path] | None:
    if spec.layout == "cifar":  # the extracted batches, else the archive
        batches = {k: directory / fs.name for k, fs in spec.files.items() if k != "archive"}
        if all(p.is_file() for p in batches.values()):
            return batches
        archive = directory / spec.files["archive"].name
        return {"archive": archive} if archive.is_file() else None
    found = {}
    for key, fs in spec.files.items():
        for name in (fs.name + ".gz", fs.name):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def find_source(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None) -> (
        Source | None):
    """The first complete copy of `spec`'s files, or None (given `data_dir`: there, or an error).

    With `data_dir`, a directory that is absent or not a directory is a ``UserError``.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is not a directory" if Path(data_dir).exists() else "does not exist"
        raise UserError(f"--data-dir {data_dir} {what}; pass the directory that holds the "
                        f"{spec.name} files (or drop --data-dir to use the usual places)")
    for kind, directory in candidate_dirs(spec, data_dir):
        files = _files_in(spec, directory)
        if files is not None:
            return Source(kind, directory, files)
    return None


def fetch_to_cache(spec: DatasetSpec, log=print, directory: Path | None = None) -> Source:
    """Download every file of `spec` into the cache (verified), skipping ones already there."""
    directory = directory or cache_dir() / spec.name
    if spec.layout == "cifar":  # one archive, read in place (bnlab.data.cifar)
        fs = spec.files["archive"]
        urls = [m + fs.name for m in spec.mirrors]
        return Source("cache", directory, {"archive": fetch(urls, directory / fs.name,
                                                            fs.gz_md5, log=log)})
    files = {}
    for key, fs in spec.files.items():
        dest = directory / (fs.name + ".gz")
        urls = [m + fs.name + ".gz" for m in spec.mirrors]
        files[key] = fetch(urls, dest, fs.gz_md5, log=log)
    return Source("cache", directory, files)


def verify_checksum(spec: DatasetSpec, key: str, path: Path) -> str:
    """'ok', 'unknown' (no checksum on record) or a description of the mismatch."""
    fs = spec.files[key]
    if spec.layout == "cifar" and key == "archive":  # served as is: only one right answer
        got = md5sum(path)
        return "ok" if got == fs.gz_md5 else f"md5 {got} != {fs.gz_md5}"
    if path.suffix == ".gz" and md5sum(path) == fs.gz_md5:
        return "ok"
    if fs.raw_md5 is None:
        return "unknown"
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    got = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return "ok" if got == fs.raw_md5 else f"content md5 {got} != {fs.raw_md5}"
