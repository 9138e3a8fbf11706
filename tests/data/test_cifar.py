"""CIFAR-10: the python batches (archive, extracted folder, torchvision's layout), read without
running code; the verified download from a loopback mirror."""

import hashlib
import io
import pickle
import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from bnlab.data import cifar, get_spec, load_split
from bnlab.data.cifar import ARCHIVE, FOLDER, CifarError, parse_batch, parse_meta
from bnlab.data.commands import data_check
from bnlab.data.registry import FileSpec
from bnlab.data.sources import fetch_to_cache, find_source
from tests.data.cifar_fakes import (
    CLASSES,
    batch_bytes,
    fake_batches,
    fake_split,
    py2_pickle,
    tar_bytes,
    write_archive,
    write_folder,
)
from tests.data.fakes import Mirror, serve

MARKER = "PAYLOAD-RAN"


class Payload:
    """Unpickling this runs code: it creates MARKER in the current directory."""

    def __reduce__(self):
        return exec, (f"open({MARKER!r}, 'w').close()",)


def _equal(split, images, labels):
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    assert torch.equal(split.images, images) and torch.equal(split.labels, labels)


@pytest.mark.parametrize("py3", [False, True], ids=["python2-pickle", "python3-pickle"])
@pytest.mark.parametrize("form", ["archive", "torchvision-folder"])
def test_reads_every_form_of_a_copy(tmp_path, py3, form):
    files, splits = fake_batches(per_batch=4, py3=py3)
    if form == "archive":
        write_archive(tmp_path, files)
    else:
        write_folder(tmp_path, files)  # <root>/cifar-10-batches-py/
    for split in ("train", "test"):
        s = load_split("cifar10", split, tmp_path, download=False)
        _equal(s, *splits[split])
        assert s.classes == tuple(CLASSES)
    assert len(load_split("cifar10", "train", tmp_path).labels) == 5 * 4  # five batches


def test_the_pixel_layout_is_red_green_blue_planes():
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x[0, 1, 0, 5] = 200  # green, row 0, column 5
    raw = pickle.loads(batch_bytes(x, torch.tensor([3]), py3=True))["data"]
    assert raw[0, 1024 + 5] == 200  # the row of 3072 holds the planes one after the other
    images, labels = parse_batch(batch_bytes(x, torch.tensor([3])), "b")
    assert torch.equal(images, x) and labels.tolist() == [3]


def test_meta_names_the_classes():
    files, _ = fake_batches(1)
    assert parse_meta(files["batches.meta"], "m") == tuple(CLASSES)
    assert get_spec("cifar10").classes == tuple(CLASSES)


# ---- nothing in a batch runs ---------------------------------------------------------------


def _reconstruct_call(cls: str, shape: tuple[int, ...]) -> bytes:
    """numpy's _reconstruct(cls, shape, 'b'), as a pickle; only (ndarray, (0,)) is numpy's."""
    module, name = cls.rsplit(".", 1)
    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nc" + module.encode() + b"\n"
            + name.encode() + b"\n" + py2_pickle(shape)[2:-1] + b"U\x01b\x87R.")


def _hostile() -> dict[str, bytes]:
    return {
        "exec": pickle.dumps({"data": Payload(), "labels": [1]}, protocol=2),
        "exec-py2": b"\x80\x02cbuiltins\nexec\n" + py2_pickle(("print(1)",))[2:-1] + b"R.",
        "os-system": b"\x80\x02cos\nsystem\n" + py2_pickle(("true",))[2:-1] + b"R.",
        "numpy-load": b"\x80\x02cnumpy\nload\n" + py2_pickle(("/etc/passwd",))[2:-1] + b"R.",
        "object-array": pickle.dumps({"data": np.array([Payload()], dtype=object)}, protocol=4),
        "masked-array": pickle.dumps({"data": np.ma.zeros(2)}, protocol=2),
        "reconstruct-other-class": _reconstruct_call("numpy.dtype", (0,)),
        "reconstruct-huge": _reconstruct_call("numpy.ndarray", (10**6, 10**6)),
    }


@pytest.mark.parametrize("name", list(_hostile()))
def test_a_hostile_batch_is_refused_and_nothing_runs(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    files, _ = fake_batches(2)
    files["data_batch_3"] = _hostile()[name]
    write_folder(tmp_path / "data", files)
    with pytest.raises(CifarError, match=r"data_batch_3: .*(refused|not a readable)"):
        load_split("cifar10", "train", tmp_path / "data", download=False)
    assert not (tmp_path / MARKER).exists()


def test_the_payload_is_live(tmp_path, monkeypatch):
    """Loaded unsafely, the hostile batch does run code: the test above can fail."""
    monkeypatch.chdir(tmp_path)
    pickle.loads(_hostile()["exec"])
    assert (tmp_path / MARKER).exists()


def test_the_cli_says_which_file_and_exits_1(tmp_path, monkeypatch, capsys):
    from bnlab.cli import main

    monkeypatch.chdir(tmp_path)
    files, _ = fake_batches(2)
    files["test_batch"] = _hostile()["exec"]
    write_folder(tmp_path, files)
    assert main(["data", "check", "--dataset", "cifar10", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test_batch: refused" in err[0] and "could run code" in err[0], err
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing-member", "symlink"])
def test_a_damaged_archive_names_itself(tmp_path, damage):
    files, _ = fake_batches(2)
    path = write_archive(tmp_path, files)
    if damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:400])
    elif damage == "missing-member":
        path.write_bytes(tar_bytes({k: v for k, v in files.items() if k != "data_batch_2"}))
    else:  # a member that is a link, not a file: never followed
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                if name == "data_batch_2":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                else:
                    info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
        path.write_bytes(buf.getvalue())
    with pytest.raises(CifarError, match=ARCHIVE.replace(".", r"\.")):
        load_split("cifar10", "train", tmp_path, download=False)


@pytest.mark.parametrize("what,needle", [
    ("float-data", "'data' must be a uint8 array"),
    ("short-rows", "'data' must be a uint8 array"),
    ("label-count", "4 images but 3 labels"),
    ("label-range", "label 10 out of range"),
    ("not-a-dict", "holds a list"),
])
def test_batches_of_the_wrong_shape_are_refused(what, needle):
    x, y = fake_split(4, 0)
    batch = {"data": x.reshape(4, -1).numpy(), "labels": y.tolist()}
    if what == "float-data":
        batch["data"] = batch["data"].astype(np.float32)
    elif what == "short-rows":
        batch["data"] = batch["data"][:, :1000]
    elif what == "label-count":
        batch["labels"] = batch["labels"][:3]
    elif what == "label-range":
        batch["labels"][0] = 10
    with pytest.raises(CifarError, match=needle):
        parse_batch(py2_pickle([1, 2] if what == "not-a-dict" else batch), "batch")


# ---- sources and the verified download ------------------------------------------------------


def test_sources_take_the_archive_or_the_complete_folder(tmp_path):
    files, _ = fake_batches(1)
    spec = get_spec("cifar10")
    write_folder(tmp_path, files)
    found = find_source(spec, tmp_path)
    assert found.directory == tmp_path / FOLDER and set(found.files) == set(files)
    (found.directory / "data_batch_4").unlink()  # an incomplete folder is no copy
    assert find_source(spec, tmp_path) is None
    write_archive(tmp_path, files)
    assert find_source(spec, tmp_path).files == {"archive": tmp_path / ARCHIVE}


def test_missing_copy_names_what_it_needs(tmp_path):
    with pytest.raises(Exception, match=r"cifar-10-python\.tar\.gz, or its "
                                        r"cifar-10-batches-py/ folder"):
        load_split("cifar10", "train", tmp_path, download=False)


def test_download_from_a_loopback_mirror_verified_and_resumed(tmp_path):
    files, splits = fake_batches(per_batch=3)
    archive = tar_bytes(files)
    spec = get_spec("cifar10")
    m = Mirror()
    m.routes[f"/bad/{ARCHIVE}"] = archive[:-1] + bytes([archive[-1] ^ 0xFF])  # wrong: skipped
    m.routes[f"/good/{ARCHIVE}"] = archive
    m.behaviour["good"] = "cut"  # the first transfer stops half-way: resumed with Range
    with serve(m) as url:
        md5 = hashlib.md5(archive).hexdigest()
        test_spec = replace(spec, mirrors=(f"{url}/bad/", f"{url}/good/"),
                            files={**spec.files, "archive": FileSpec(ARCHIVE, md5, None)})
        source = fetch_to_cache(test_spec, log=lambda m: None, directory=tmp_path / "cache")
    assert source.files["archive"].read_bytes() == archive
    assert any(path.startswith("/good/") for path, _ in m.requests)
    images, labels = cifar.read_split(source.files, "test")
    assert torch.equal(images, splits["test"][0]) and torch.equal(labels, splits["test"][1])


def test_data_check_compares_with_the_official_checksums(tmp_path):
    files, _ = fake_batches(1)
    write_archive(tmp_path, files)
    lines: list[str] = []
    assert data_check("cifar10", str(tmp_path), log=lines.append) is False  # not the real one
    assert any("cifar-10-python.tar.gz: checksum md5" in ln and
               "c58f30108f718f92721af3b95e74349a" in ln for ln in lines), lines
