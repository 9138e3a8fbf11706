"""The IDX file format of (Fashion-)MNIST: read with full validation, write for tests and tools.

Layout (big-endian)::

    bytes 0-1   0x00 0x00          magic prefix
    byte  2     dtype code         0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                   0x0D float32, 0x0E float64
    byte  3     ndim
    then        ndim x uint32      the dimensions
    then        prod(dims) items   the data, C order

Files may be gzip-compressed (detected by content, not by name). Every failure names the file.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from bnlab.errors import UserError
from bnlab.files import write_bytes

__all__ = ["IdxError", "read_idx", "write_idx"]

# code -> (big-endian numpy dtype, torch dtype)
DTYPES: dict[int, tuple[str, torch.dtype]] = {
    0x08: (">u1", torch.uint8),
    0x09: (">i1", torch.int8),
    0x0B: (">i2", torch.int16),
    0x0C: (">i4", torch.int32),
    0x0D: (">f4", torch.float32),
    0x0E: (">f8", torch.float64),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxError(UserError, ValueError):
    """A file that is not a valid IDX file; the message names the file and the defect."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IdxError(f"{path}: cannot read ({e.strerror})") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise IdxError(
            f"{path}: corrupt or truncated gzip data ({e}); delete it and fetch it again "
            f"(`bnlab data fetch`)"
        ) from e


def parse_idx(data: bytes, name: str | os.PathLike[str] = "<bytes>") -> torch.Tensor:
    """Decode IDX bytes (already decompressed) into a tensor, validating every field."""
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise IdxError(
            f"{name}: bad magic number 0x{data[:4].hex()} (an IDX file starts with two zero "
            f"bytes); this is not an IDX file (an HTML error page saved as data, perhaps)"
        )
    code, ndim = data[2], data[3]
    if code not in DTYPES:
        raise IdxError(f"{name}: unknown IDX dtype code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated header ({len(data)} bytes, {ndim} dims declared)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    np_dtype, _ = DTYPES[code]
    itemsize = np.dtype(np_dtype).itemsize
    expected = header + math.prod(dims) * itemsize
    if len(data) != expected:
        raise IdxError(
            f"{name}: dimensions {tuple(dims)} need {expected} bytes but the file has "
            f"{len(data)} ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    array = np.frombuffer(data, dtype=np_dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read a (possibly gzipped) IDX file into a tensor of its declared dtype."""
    path = Path(path)
    return parse_idx(_read_bytes(path), path)


def encode_idx(tensor: torch.Tensor) -> bytes:
    """The IDX bytes of a tensor (uncompressed)."""
    for code, (np_dtype, t_dtype) in DTYPES.items():
        if tensor.dtype == t_dtype:
            header = bytes([0, 0, code, tensor.dim()]) + struct.pack(
                f">{tensor.dim()}I", *tensor.shape
            )
            return header + tensor.numpy().astype(np_dtype).tobytes()
    raise IdxError(f"IDX has no code for dtype {tensor.dtype}")


def write_idx(path: str | os.PathLike[str], tensor: torch.Tensor) -> Path:
    """Write `tensor` as IDX; gzip-compressed when the name ends in .gz. Atomic."""
    path = Path(path)
    data = encode_idx(tensor.contiguous().cpu())
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    return write_bytes(path, data)  # bnlab.files: atomic, fsynced, no link followed
