"""Download a file from a list of mirrors: resumable, checksum-verified, atomically installed.

A download streams into ``<dest>.part``. An interrupted transfer is resumed with an HTTP Range
request (or restarted if the server ignores it); only a file whose MD5 matches is renamed to
``<dest>``, so the cache never holds a half or corrupt file under its real name. A mirror that
answers 404, serves an HTML page, or serves the wrong bytes is skipped for the next one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.client import HTTPException
from pathlib import Path

from bnlab.errors import UnsafePathError, UserError
from bnlab.files import make_dirs, open_in_place, remove, replace

__all__ = ["DownloadError", "fetch", "md5sum"]

CHUNK = 1 << 16


class DownloadError(UserError, RuntimeError):
    """No mirror delivered a verified copy; the message lists what each one did."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_writable(directory: Path) -> None:
    """Create `directory` and prove a file can be made in it (os.access is wrong for root)."""
    hint = "point bnlab at a writable place with --data-dir or BNLAB_CACHE"
    try:
        make_dirs(directory)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DownloadError(f"the download directory {directory} is not writable "
                            f"({e.strerror}); {hint}") from e


class _CutShort(OSError):
    """The server closed the connection before sending Content-Length bytes (retryable)."""


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Stream `url` into `part`, resuming from its current size when the server allows."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "bnlab"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the .part may be complete
            return
        raise
    with response:
        if "html" in (response.headers.get("Content-Type") or "").lower():
            raise ValueError("served an HTML page instead of the data file")
        resumed = bool(offset) and response.status == 206
        length = response.headers.get("Content-Length")
        expected = (offset if resumed else 0) + int(length) if length else None
        # O_NOFOLLOW, a regular file with one link (bnlab.files): never a planted link's target
        fd = open_in_place(part, append=resumed, truncate=not resumed)
        with os.fdopen(fd, "ab") as f:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
    if expected is not None and size < expected:
        raise _CutShort(f"connection closed after {size} of {expected} bytes")


def fetch(
    urls: Sequence[str],
    dest: Path,
    md5: str,
    *,
    timeout: float = 30.0,
    retries: int = 2,
    log: Callable[[str], None] = lambda msg: None,
) -> Path:
    """Make `dest` a verified copy (MD5 `md5`) of the file served at any of `urls`."""
    dest = Path(dest)
    if dest.exists() and md5sum(dest) == md5:
        return dest
    _check_writable(dest.parent)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in urls:
        for attempt in range(retries + 1):
            try:
                log(f"downloading {url}" + (f" (retry {attempt})" if attempt else ""))
                _transfer(url, part, timeout)
            except urllib.error.HTTPError as e:
                failures.append(f"{url}: HTTP {e.code} {e.reason}")
                break  # an HTTP error answer will not change on retry: next mirror
            except UnsafePathError:
                raise  # a planted link is no network failure: never retried, never followed
            except ValueError as e:
                remove(part)
                failures.append(f"{url}: {e}")
                break
            except (urllib.error.URLError, HTTPException, OSError) as e:
                failures.append(f"{url}: {getattr(e, 'reason', e)} (attempt {attempt + 1})")
                time.sleep(min(0.2 * 2**attempt, 2.0))
                continue  # keep the .part: the next attempt resumes it
            got = md5sum(part)
            if got == md5:
                replace(part, dest)
                return dest
            remove(part)  # wrong bytes (or a bad resume): start clean
            failures.append(f"{url}: checksum mismatch (md5 {got}, expected {md5})")
    raise DownloadError(
        f"could not download {dest.name}:\n  " + "\n  ".join(failures)
        + "\nIf this machine is offline, copy the files into a directory and pass --data-dir."
    )
