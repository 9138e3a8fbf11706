"""IDX reading: every field validated, every failure names the file."""

import gzip

import pytest
import torch

from bnlab.data.idx import IdxError, encode_idx, read_idx, write_idx


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                   torch.float32, torch.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    t = (torch.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).to(dtype)
    path = write_idx(tmp_path / f"x-idx3{suffix}", t)
    back = read_idx(path)
    assert back.dtype == dtype and torch.equal(back, t)


def test_gzip_detected_by_content_not_name(tmp_path):
    t = torch.arange(10, dtype=torch.uint8)
    (tmp_path / "labels").write_bytes(gzip.compress(encode_idx(t)))
    assert torch.equal(read_idx(tmp_path / "labels"), t)


def corrupt(tmp_path, data: bytes, name="f-idx1-ubyte"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_bad_magic(tmp_path):
    p = corrupt(tmp_path, b"<htm" + b"l>...")
    with pytest.raises(IdxError, match=r"f-idx1-ubyte: bad magic number.*not an IDX file"):
        read_idx(p)


def test_unknown_dtype(tmp_path):
    with pytest.raises(IdxError, match="unknown IDX dtype code 0x07"):
        read_idx(corrupt(tmp_path, bytes([0, 0, 7, 1, 0, 0, 0, 1, 5])))


def test_truncated_header(tmp_path):
    with pytest.raises(IdxError, match="truncated header"):
        read_idx(corrupt(tmp_path, bytes([0, 0, 8, 3, 0, 0])))


@pytest.mark.parametrize("delta,word", [(-1, "truncated"), (3, "trailing data")])
def test_dimensions_against_size(tmp_path, delta, word):
    data = encode_idx(torch.zeros(4, 5, dtype=torch.uint8))
    data = data[:delta] if delta < 0 else data + b"\0" * delta
    with pytest.raises(IdxError, match=rf"dimensions \(4, 5\) need 32 bytes .*{word}"):
        read_idx(corrupt(tmp_path, data))


def test_truncated_gzip(tmp_path):
    data = gzip.compress(encode_idx(torch.zeros(100, 28, 28, dtype=torch.uint8)))
    p = corrupt(tmp_path, data[: len(data) // 2], "train-images-idx3-ubyte.gz")
    with pytest.raises(IdxError, match=r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(p)


def test_corrupt_gzip_body(tmp_path):
    data = bytearray(gzip.compress(encode_idx(torch.arange(200, dtype=torch.uint8))))
    data[20:30] = b"\xff" * 10
    with pytest.raises(IdxError, match="corrupt or truncated gzip"):
        read_idx(corrupt(tmp_path, bytes(data), "x.gz"))


def test_missing_file(tmp_path):
    with pytest.raises(IdxError, match="nope: cannot read"):
        read_idx(tmp_path / "nope")
