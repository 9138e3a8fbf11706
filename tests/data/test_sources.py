"""Source order, torchvision layouts, validation of what was found, and the cache location."""

import gzip
from dataclasses import replace

import pytest
import torch

from bnlab.data import IdxError, load_split
from bnlab.data.idx import encode_idx
from bnlab.data.registry import get_spec
from bnlab.data.sources import cache_dir, find_source
from bnlab.errors import UserError
from tests.data.fakes import write_fake_dataset


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No environment, home or working directory copies: only what a test puts there."""
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_system(name="fashion-mnist"):
    return replace(get_spec(name), system_dirs=())


def test_data_dir_wins(isolated):
    write_fake_dataset(isolated / "mine")
    write_fake_dataset(isolated / "cache" / "fashion-mnist")
    src = find_source(no_system(), isolated / "mine")
    assert (src.kind, src.directory) == ("data-dir", isolated / "mine")


def test_env_var_and_subfolder(isolated, monkeypatch):
    write_fake_dataset(isolated / "env" / "fashion-mnist", gz=False)
    monkeypatch.setenv("BNLAB_DATA", str(isolated / "env"))
    src = find_source(no_system())
    assert src.kind == "BNLAB_DATA" and src.files["train-images"].suffix != ".gz"


@pytest.mark.parametrize("name,folder", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_torchvision_layout_is_reused(isolated, monkeypatch, name, folder):
    monkeypatch.setattr("bnlab.data.dataset.get_spec", no_system)  # hide the Debian copy
    write_fake_dataset(isolated / "data" / folder / "raw")
    src = find_source(no_system(name))
    assert src.kind == "torchvision" and src.directory == isolated / "data" / folder / "raw"
    split = load_split(name, "test", download=False)
    assert len(split) == 32 and split.images.dtype == torch.uint8


def test_system_dir_before_cache(isolated):
    write_fake_dataset(isolated / "sys")
    write_fake_dataset(isolated / "cache" / "fashion-mnist")
    spec = replace(get_spec("fashion-mnist"), system_dirs=(str(isolated / "sys"),))
    assert find_source(spec).kind == "system"


def test_incomplete_directory_is_skipped(isolated, monkeypatch):
    """Among the usual places (not --data-dir: see below), an incomplete copy is passed over."""
    d = write_fake_dataset(isolated / "env")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("BNLAB_DATA", str(d))
    write_fake_dataset(isolated / "cache" / "fashion-mnist")
    assert find_source(no_system()).kind == "cache"


def test_data_dir_is_never_a_silent_fall_back(isolated, monkeypatch):
    """An incomplete or absent --data-dir is an error, even with a copy in the cache."""
    monkeypatch.setattr("bnlab.data.dataset.get_spec", lambda name: no_system(name))
    d = write_fake_dataset(isolated / "mine")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    write_fake_dataset(isolated / "cache" / "fashion-mnist")
    assert find_source(no_system(), d) is None
    with pytest.raises(UserError, match=r"holds no complete copy.*t10k-labels"):
        load_split("fashion-mnist", "train", data_dir=d)
    for absent in (isolated / "nowhere", d / "train-images-idx3-ubyte.gz"):
        with pytest.raises(UserError, match=r"--data-dir .* (does not exist|is not a direc)"):
            load_split("fashion-mnist", "train", data_dir=absent)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BNLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "bnlab"


def test_count_mismatch_names_both_files(isolated):
    d = write_fake_dataset(isolated / "mine")
    labels = torch.zeros(63, dtype=torch.uint8)
    (d / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels)))
    with pytest.raises(IdxError, match=r"64 images but .*train-labels.* 63 labels"):
        load_split("fashion-mnist", "train", data_dir=d, download=False)


def test_label_out_of_range(isolated):
    d = write_fake_dataset(isolated / "mine")
    labels = torch.full((32,), 12, dtype=torch.uint8)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels)))
    with pytest.raises(IdxError, match="label 12 out of range"):
        load_split("fashion-mnist", "test", data_dir=d, download=False)


def test_images_and_labels_swapped(isolated):
    d = write_fake_dataset(isolated / "mine")
    a, b = d / "t10k-images-idx3-ubyte.gz", d / "t10k-labels-idx1-ubyte.gz"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    with pytest.raises(IdxError, match="expected uint8 images"):
        load_split("fashion-mnist", "test", data_dir=d, download=False)


def test_not_found_without_download_says_how(isolated, monkeypatch):
    monkeypatch.setattr("bnlab.data.dataset.get_spec", lambda name: no_system(name))
    with pytest.raises(FileNotFoundError, match="bnlab data fetch"):
        load_split("mnist", "train", download=False)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_split("cifar")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_split("fashion-mnist", "val")
