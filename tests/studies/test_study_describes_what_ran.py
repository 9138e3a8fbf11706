"""Studies describe what ran (issue 21, item 5): `bnlab study lr --model mymod:f --dataset
mymod:d --quick` names that network and data, its arms and its one seed, in the figure's
title, study.json, the setup and the verdict; ``--analyze-only`` keeps all of it, with or
without ``--quick``, reading the subject back from study.json."""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import pytest

from bnlab.cli import main
from bnlab.studies.registry import get_study

MYMOD = '''
import torch
from torch import nn

from bnlab.norm.registry import create_norm


def f(norm="bnlab"):
    layer = create_norm(norm, 16, input_rank=2)
    return nn.Sequential(nn.Linear(8, 16), *([layer] if layer else []), nn.ReLU(),
                         nn.Linear(16, 3))


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.eye(3, 8)[y] * 4 + torch.randn(n, 8, generator=g), y


def d():
    return _blobs(256, 0), _blobs(96, 1)
'''


def png_title(path: Path) -> str:
    """The PNG's Title text chunk (``report.figures.save`` writes the figure's title there)."""
    data = path.read_bytes()
    pos = 8
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"tEXt" and body.startswith(b"Title\0"):
            return body[6:].decode("latin-1")
        if kind == b"zTXt" and body.startswith(b"Title\0"):
            return zlib.decompress(body[7:]).decode("latin-1")
        if kind == b"iTXt" and body.startswith(b"Title\0"):
            return body.split(b"\0", 5)[-1].decode("utf-8")
        pos += 12 + size
    raise AssertionError(f"{path} has no Title")


@pytest.mark.slow  # six tiny runs, each evaluated with PreciseBN: about 1.5 min here
def test_a_user_study_names_what_ran_and_analyze_only_keeps_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "cfgmod.py").write_text(MYMOD)  # (a name no other test imports)
    monkeypatch.delitem(sys.modules, "cfgmod", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "study"
    assert main(["study", "lr", "--model", "cfgmod:f", "--dataset", "cfgmod:d", "--quick",
                 "--out", str(out), "--threads", "1"]) == 0
    full = len(get_study("lr").arms(False))
    quick_arms = [a.name for a in get_study("lr").arms(True)]

    def check() -> dict:
        meta = json.loads((out / "study.json").read_text())
        assert meta["ran"] == {"on": "cfgmod:f on cfgmod:d", "arms": quick_arms, "seeds": 1,
                               "quick": True}
        assert (meta["subject"]["model_arg"], meta["subject"]["dataset_arg"]) == (
            "cfgmod:f", "cfgmod:d")
        assert meta["seeds"] == 1 and meta["quick"] is True
        assert meta["setup"].startswith(
            f"[This call ran cfgmod:f on cfgmod:d: {len(quick_arms)} of the design's {full} "
            f"arms, 1 seed each, quick mode. The full design:] ")
        verdict = (out / "verdict").read_text()
        assert "[ran on cfgmod:f on cfgmod:d]" in verdict and "LeNet" not in verdict
        title = png_title(out / "figure.png")
        assert title.startswith("cfgmod:f on cfgmod:d: learning-rate sweep") and "1 seed)" in title
        assert "LeNet" not in title and "Fashion" not in title
        return meta

    first = check()
    # --analyze-only, without --quick, --model or --dataset: the same subject, arms and seeds
    assert main(["study", "lr", "--analyze-only", "--out", str(out)]) == 0
    again = check()
    assert again["arms"] == first["arms"] and again["headline"] == first["headline"]
    # ... and with --quick given again
    assert main(["study", "lr", "--analyze-only", "--quick", "--out", str(out)]) == 0
    check()
    sys.modules.pop("cfgmod", None)


@pytest.mark.slow  # (the studies' import: matplotlib)
def test_bnlabs_own_study_keeps_its_wording(tmp_path):
    """Without --model/--dataset the design's setup is unchanged where the call ran all of it,
    and the figure names lenet-bn on fashion-mnist, read from the runs (not written in)."""
    from bnlab.studies.base import _setup

    study = get_study("lr")
    ran = {"on": "lenet-bn on fashion-mnist", "arms": [a.name for a in study.arms(False)],
           "seeds": study.seeds, "quick": False}
    assert _setup(study, ran, study.seeds) == study.setup
    fewer = _setup(study, {**ran, "seeds": 2}, 2)
    assert fewer.startswith("[This call ran lenet-bn on fashion-mnist: ") and "2 seeds" in fewer


def test_a_recorded_subject_is_never_imported():
    """--analyze-only reads the subject from study.json, a file: the module it names is not
    imported (this one does not exist: importing it would fail), and a value that no flag
    would take is dropped."""
    from bnlab.studies.subject import Subject

    got = Subject.from_record({"model_arg": "no_such_module_here:f", "dataset_arg": "mnist",
                               "takes_norm": True})
    assert (got.model, got.dataset, got.takes_norm) == ("no_such_module_here:f", "mnist", True)
    bad = Subject.from_record({"model_arg": "../../x", "dataset_arg": ["x"], "takes_norm": 3})
    assert bad.default and bad.takes_norm is False
