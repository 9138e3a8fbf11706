"""Downloads against a loopback HTTP mirror serving files the test made."""

import hashlib
import os
from pathlib import Path

import pytest

from bnlab.data.download import DownloadError, fetch
from bnlab.data.sources import fetch_to_cache
from tests.data.fakes import Mirror, fake_files, serve, spec_for

PAYLOAD = os.urandom(300_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_plain_download(tmp_path):
    m = Mirror()
    m.routes["/a/f.gz"] = PAYLOAD
    with serve(m) as url:
        path = fetch([f"{url}/a/f.gz"], tmp_path / "f.gz", MD5)
    assert path.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.gz.part").exists()


def test_404_mirror_then_good_one(tmp_path):
    m = Mirror()
    m.routes["/good/f.gz"] = PAYLOAD
    m.behaviour["bad"] = "404"
    with serve(m) as url:
        fetch([f"{url}/bad/f.gz", f"{url}/good/f.gz"], tmp_path / "f.gz", MD5)
    assert [p for p, _ in m.requests] == ["/bad/f.gz", "/good/f.gz"]  # 404 is not retried


def test_corrupted_mirror_is_rejected_and_nothing_kept(tmp_path):
    m = Mirror()
    m.routes["/evil/f.gz"] = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF])  # always differs
    m.routes["/good/f.gz"] = PAYLOAD
    with serve(m) as url:
        fetch([f"{url}/evil/f.gz", f"{url}/good/f.gz"], tmp_path / "f.gz", MD5, retries=0)
        assert (tmp_path / "f.gz").read_bytes() == PAYLOAD
        with pytest.raises(DownloadError, match="checksum mismatch"):
            fetch([f"{url}/evil/f.gz"], tmp_path / "g.gz", MD5, retries=1)
    assert not (tmp_path / "g.gz").exists() and not (tmp_path / "g.gz.part").exists()


def test_html_page_is_rejected(tmp_path):
    m = Mirror()
    m.routes["/portal/f.gz"] = PAYLOAD
    m.behaviour["portal"] = "html"
    with serve(m) as url, pytest.raises(DownloadError, match="HTML page"):
        fetch([f"{url}/portal/f.gz"], tmp_path / "f.gz", MD5)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(tmp_path):
    m = Mirror()
    m.routes["/flaky/f.gz"] = PAYLOAD
    m.behaviour["flaky"] = "cut"  # first response stops half-way
    with serve(m) as url:
        fetch([f"{url}/flaky/f.gz"], tmp_path / "f.gz", MD5)
    assert (tmp_path / "f.gz").read_bytes() == PAYLOAD
    ranges = [r for _, r in m.requests]
    assert ranges[0] is None and ranges[-1] is not None and ranges[-1].startswith("bytes=")
    assert int(ranges[-1].split("=")[1].rstrip("-")) > 0


def test_leftover_part_file_is_resumed(tmp_path):
    (tmp_path / "f.gz.part").write_bytes(PAYLOAD[:1000])  # a previous run died here
    m = Mirror()
    m.routes["/a/f.gz"] = PAYLOAD
    with serve(m) as url:
        fetch([f"{url}/a/f.gz"], tmp_path / "f.gz", MD5)
    assert m.requests == [("/a/f.gz", "bytes=1000-")]
    assert (tmp_path / "f.gz").read_bytes() == PAYLOAD


def test_existing_verified_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "f.gz").write_bytes(PAYLOAD)
    m = Mirror()
    with serve(m) as url:
        fetch([f"{url}/a/f.gz"], tmp_path / "f.gz", MD5)
    assert m.requests == []


def test_unwritable_cache_is_a_clear_error():
    # sysfs refuses new files even to root: a directory that really cannot be written.
    with pytest.raises(DownloadError, match=r"/sys is not writable.*BNLAB_CACHE"):
        fetch(["http://127.0.0.1:9/x"], Path("/sys/f.gz"), MD5)
    with pytest.raises(DownloadError, match=r"not writable.*--data-dir"):
        fetch(["http://127.0.0.1:9/x"], Path("/sys/bnlab-cache/f.gz"), MD5)


def test_all_mirrors_failing_lists_each(tmp_path):
    m = Mirror()
    m.behaviour["x"] = "404"
    with serve(m) as url, pytest.raises(DownloadError) as info:
        fetch([f"{url}/x/f.gz", "http://127.0.0.1:9/f.gz"], tmp_path / "f.gz", MD5, retries=0,
              timeout=2)
    text = str(info.value)
    assert "HTTP 404" in text and "127.0.0.1:9" in text and "--data-dir" in text


def test_fetch_whole_dataset_into_cache_and_load(tmp_path, monkeypatch):
    from bnlab.data.dataset import load_split
    from bnlab.data.sources import find_source

    files = fake_files()
    m = Mirror()
    m.behaviour["dead"] = "404"
    for name, data in files.items():
        m.routes[f"/live/{name}"] = data
    with serve(m) as url:
        spec = spec_for(files, (f"{url}/dead/", f"{url}/live/"))
        source = fetch_to_cache(spec, log=lambda s: None, directory=tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(files)
    assert find_source(spec, tmp_path / "cache").directory == source.directory
    split = load_split("fashion-mnist", "train", data_dir=tmp_path / "cache", download=False)
    assert len(split) == 64
