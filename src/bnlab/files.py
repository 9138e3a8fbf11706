"""The one way bnlab reads its records and writes into an output directory.

**Reading.** A run directory's ``config.json``, ``metrics.jsonl``, ``DONE`` and
``checkpoint.pt``, a study's ``study.json``, ``table.md``, ``verdict`` and ``figure.png``,
whatever is handed to ``bnlab inspect``: any of them may be truncated, hand-edited, huge or
hostile. Every reader here returns plain data of the expected kind or raises
``CorruptFileError`` naming the file, what is wrong and the fix (given by the caller, who knows
what the file is for). Only regular files are read (opened with ``O_NONBLOCK`` and checked
with ``fstat`` before a byte is read: a FIFO or ``/dev/zero`` would block or never end), and
never more than a size limit (``LIMITS``), so a multi-GB file is refused, not loaded. With
``root=``, a file whose real path (links followed) leaves `root` is refused: a study directory
cannot make the report embed a file from elsewhere. Nothing read executes code: checkpoints go
through ``torch.load(weights_only=True)``.

**Writing.** Every file and directory bnlab writes goes through the writers below, which
promise the same four things, so a planted symbolic link can never redirect a write outside
the output directory:

* no name under the output root that a write passes through may be a symbolic link
  (``UnsafePathError`` names it; nothing is written). The root itself, the directory the user
  named (``--out``, ``--data-dir``), may be a link: that is the user's choice, not a plant;
* files appear atomically: the bytes go to a temporary made by ``mkstemp`` (``O_EXCL``, an
  unpredictable name) in the target's own directory, are fsynced, and renamed over the target
  (the rename replaces a name, it never follows one), then the directory is fsynced;
* files opened in place (the run lock, a download's ``.part``) are opened ``O_NOFOLLOW``, and
  refused unless they are regular files with one link (a hard link to a victim is refused too);
* ``write_files`` writes a set of files all or nothing: on failure the files and directories
  it created are removed again (a failed report leaves no partial ``figures/``).

Names that come from files (a study's name in ``study.json``) and become output file names go
through ``inside(out, name)``, which refuses any name that would land outside ``out``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from bnlab.errors import CorruptFileError, UnsafePathError

__all__ = ["LIMITS", "atomic_write", "check_no_links", "inside", "load_checkpoint",
           "make_dirs", "open_in_place", "read_bytes", "read_json", "read_jsonl", "read_text",
           "remove", "remove_stale_temporaries", "remove_tree", "replace", "write_bytes",
           "write_files", "write_text"]

MiB = 1 << 20
# The most bytes each kind of record may hold: far above what bnlab writes, far below memory.
LIMITS = {"record": 16 * MiB, "metrics": 256 * MiB, "figure": 32 * MiB,
          "checkpoint": 4096 * MiB}
TMP_SUFFIX = ".tmp"  # temporaries are ``.NAME.<random>.tmp`` beside their target

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------- reading
def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def _open_regular(path: Path, fix: str, limit: int, root: PathLike | None) -> IO[bytes]:
    """`path` opened for reading, once proven a regular file of at most `limit` bytes."""
    if root is not None and not Path(os.path.realpath(path)).is_relative_to(
            os.path.realpath(root)):
        raise CorruptFileError(path, f"leads to {os.path.realpath(path)}, outside {root}; "
                               f"bnlab reads only files inside the directories given", fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise CorruptFileError(path, "missing", fix) from e
    except OSError as e:
        raise CorruptFileError(path, f"cannot be read ({e.strerror})", fix) from e
    st = os.fstat(fd)
    problem = ("not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"is {_size(st.st_size)}, more than the {_size(limit)} such a file may hold"
               if st.st_size > limit else None)
    if problem:
        os.close(fd)
        raise CorruptFileError(path, problem, fix)
    return os.fdopen(fd, "rb")


def read_bytes(path: PathLike, fix: str, *, limit: int = LIMITS["record"],
               root: PathLike | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (else CorruptFileError).

    With `root`, `path` (links followed) must lie inside `root` (links followed).
    """
    path = Path(path)
    with _open_regular(path, fix, limit, root) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise CorruptFileError(path, f"cannot be read ({e.strerror})", fix) from e
    if len(data) > limit:  # grew while being read
        raise CorruptFileError(path, f"holds more than {_size(limit)}", fix)
    return data


def read_text(path: PathLike, fix: str, *, limit: int = LIMITS["record"],
              root: PathLike | None = None) -> str:
    """The UTF-8 text of `path` (see ``read_bytes``)."""
    path = Path(path)
    data = read_bytes(path, fix, limit=limit, root=root)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(path, f"not UTF-8 text (byte {e.start})", fix) from e


def _parse(text: str, path: Path, fix: str, where: str = "") -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise CorruptFileError(path, f"not valid JSON{where} ({e})", fix) from e
    except RecursionError as e:
        raise CorruptFileError(path, f"JSON nested too deeply{where}", fix) from e


def read_json(path: PathLike, fix: str, *, root: PathLike | None = None) -> dict[str, Any]:
    """A JSON file holding one object."""
    path = Path(path)
    value = _parse(read_text(path, fix, root=root), path, fix)
    if not isinstance(value, dict):
        raise CorruptFileError(path, f"holds a JSON {type(value).__name__}, not an object", fix)
    return value


def read_jsonl(path: PathLike, fix: str, *, root: PathLike | None = None
               ) -> list[dict[str, Any]]:
    """A JSON-lines file: one object per non-blank line."""
    path = Path(path)
    rows = []
    text = read_text(path, fix, limit=LIMITS["metrics"], root=root)
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _parse(line, path, fix, f" on line {number}")
        if not isinstance(row, dict):
            raise CorruptFileError(path, f"line {number} holds a JSON {type(row).__name__}, "
                                   f"not an object", fix)
        rows.append(row)
    return rows


def load_checkpoint(path: PathLike, fix: str, map_location: Any = "cpu") -> Any:
    """What a PyTorch checkpoint holds, loaded as weights only (no code runs)."""
    import torch

    path = Path(path)
    f = _open_regular(path, fix, LIMITS["checkpoint"], None)
    try:
        with f, warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise
            warnings.simplefilter("ignore")
            return torch.load(f, map_location=map_location, weights_only=True)
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


# ---------------------------------------------------------------- writing
def check_no_links(path: PathLike, root: PathLike) -> None:
    """Refuse (UnsafePathError) a symbolic link at any existing name below `root` down to
    `path` (`root` itself is the user's to choose)."""
    _no_links(Path(path), Path(root))


def _no_links(path: Path, root: Path) -> None:
    parts = path.relative_to(root).parts
    for i in range(len(parts)):
        name = root.joinpath(*parts[:i + 1])
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            return  # nothing below a missing name exists either
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(name, f"is a symbolic link (to {os.readlink(name)})")


def _root(path: Path, root: PathLike | None) -> Path:
    base = path.parent if root is None else Path(root)
    if not path.is_relative_to(base):
        raise ValueError(f"{path} is not inside its output root {base}")
    return base


def make_dirs(path: PathLike, root: PathLike | None = None) -> list[Path]:
    """Create directory `path` and its missing parents, refusing links below `root` (default:
    `path` itself); returns the directories created, outermost first."""
    path = Path(path)
    base = path if root is None else _root(path, root)
    _no_links(path, base)
    missing = [d for d in (path, *path.parents) if not os.path.lexists(d)][::-1]
    created = []
    for d in missing:
        try:
            os.mkdir(d)
            created.append(d)
        except FileExistsError:
            pass  # made meanwhile by another writer
    _no_links(path, base)
    if not path.is_dir():
        raise UnsafePathError(path, "is not a directory")
    return created


def _mode(path: Path) -> int:
    """The permissions a new `path` gets: the old file's, else 0666 less the umask."""
    with suppress(OSError):
        return stat.S_IMODE(os.lstat(path).st_mode)
    umask = 0o022
    with suppress(OSError, ValueError), open("/proc/self/status") as f:
        umask = next((int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:")), umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any], *,
                 root: PathLike | None = None) -> Path:
    """Call `write(file)` on a fresh ``mkstemp`` temporary beside `path`, fsync it, rename it
    to `path`; nothing is written if a name below `root` (default: `path`'s directory) down to
    `path` is a link, and the temporary is removed if anything fails."""
    path = Path(path)
    base = _root(path, root)
    make_dirs(path.parent, base)
    _no_links(path, base)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _mode(path))  # mkstemp's 0600 would make every output private
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _no_links(path, base)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: PathLike, data: bytes, *, root: PathLike | None = None) -> Path:
    """`path` atomically holding `data` (see ``atomic_write``)."""
    return atomic_write(path, lambda f: f.write(data), root=root)


def write_text(path: PathLike, text: str, *, root: PathLike | None = None) -> Path:
    """`path` atomically holding `text` as UTF-8 (see ``atomic_write``)."""
    return write_bytes(path, text.encode("utf-8"), root=root)


def write_files(root: PathLike, files: Mapping[str, bytes]) -> list[Path]:
    """Write every ``root / name`` (atomically each), all or nothing: if one fails, the files
    and directories this call created are removed again, and the error is raised."""
    root = Path(root)
    for name in files:
        _no_links(root / name, root)
    created_dirs: list[Path] = []
    created: list[Path] = []
    try:
        for name, data in files.items():
            path = root / name
            created_dirs += make_dirs(path.parent, root)
            new = not os.path.lexists(path)
            write_bytes(path, data, root=root)
            if new:
                created.append(path)
    except BaseException:
        for path in created:
            with suppress(OSError):
                os.unlink(path)
        for d in reversed(created_dirs):
            with suppress(OSError):
                os.rmdir(d)
        raise
    return [root / name for name in files]


def open_in_place(path: PathLike, *, append: bool = False, truncate: bool = False,
                  root: PathLike | None = None) -> int:
    """A read-write fd on `path` (created if missing), opened ``O_NOFOLLOW``, refused unless it
    is a regular file with a single link; for a lock file or a download being resumed."""
    path = Path(path)
    _no_links(path, _root(path, root))
    flags = (os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
             | (os.O_APPEND if append else 0))
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):
            raise UnsafePathError(path, "is a symbolic link or a special file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafePathError(path, "is not a regular file" if not stat.S_ISREG(st.st_mode)
                              else f"has {st.st_nlink} hard links (one may be outside)")
    if truncate:
        os.ftruncate(fd, 0)
    return fd


def replace(source: PathLike, target: PathLike, *, root: PathLike | None = None) -> Path:
    """Rename `source` over `target` (refused if a name down to `target` is a link)."""
    target = Path(target)
    _no_links(target, _root(target, root))
    os.replace(source, target)
    _fsync_dir(target.parent)
    return target


def remove(path: PathLike) -> None:
    """Unlink the name `path` if present (a link is removed, never followed)."""
    with suppress(FileNotFoundError):
        os.unlink(path)


def remove_tree(path: PathLike, *, root: PathLike | None = None) -> None:
    """Remove directory `path` and its contents if present; refused if it is a link."""
    import shutil

    path = Path(path)
    _no_links(path, _root(path, root))
    if os.path.lexists(path):
        shutil.rmtree(path)


def remove_stale_temporaries(directory: PathLike) -> list[Path]:
    """Delete the temporaries a killed writer left in `directory` (``.NAME.*.tmp``, and the
    ``.NAME.tmp-PID`` of older versions); returns them."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return []
    stale = sorted({*directory.glob(f".*{TMP_SUFFIX}"), *directory.glob(".*.tmp-*")})
    for p in stale:
        remove(p)
    return stale
