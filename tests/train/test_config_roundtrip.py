"""Every config.json bnlab writes is a valid ``--config`` (issue 21): real runs on the real
Fashion-MNIST, from ``train``, ``reproduce --quick`` and ``study --quick``; training from the
file gives the same config and, the batch order and seed being in it, the same numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bnlab.cli import main
from bnlab.train import Run, load_config
from bnlab.train.config import RECORDS

TINY = ["--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--batch-size", "32",
        "--threads", "1", "--no-progress"]
TIMING = ("examples_per_sec", "epoch_time", "wall_time")


def _numbers(run: Run) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in run.metrics]


def _round_trip(config_json: Path, new: Path) -> None:
    """`bnlab train --config config_json --out new` trains the run's own config again."""
    saved = json.loads(config_json.read_text())
    assert RECORDS & set(saved)  # the file carries records beside the settings (provenance)
    old = Run(config_json.parent)
    assert load_config(config_json) == old.config
    assert main(["train", "--config", str(config_json), "--out", str(new)]) == 0
    assert Run(new).config == old.config
    assert _numbers(Run(new)) == _numbers(old)


@pytest.mark.slow  # (reading the real Fashion-MNIST dominates: ~10 s here)
def test_a_train_run_config_round_trips(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--out", str(run), *TINY,
                 "--bn-momentum", "0.2", "--weight-decay", "1e-4"]) == 0
    _round_trip(run / "config.json", tmp_path / "again")


@pytest.mark.slow
def test_a_user_model_run_keeps_its_records_out_of_the_settings(tmp_path, capsys,
                                                               monkeypatch):
    """A run of a user's network records model_info; read back as a config file, the record
    is skipped (the trainer describes the network anew), never taken as a setting."""
    (tmp_path / "cfgnet.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.BatchNorm1d(16),\n"
        "                         nn.ReLU(), nn.Linear(16, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--model", "cfgnet:make", "--out", str(run), *TINY]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert "model_info" in saved
    config = load_config(run / "config.json")
    assert config.model == "cfgnet:make" and config.model_info is None
    assert main(["train", "--config", str(run / "config.json"), "--out",
                 str(tmp_path / "again")]) == 0
    assert Run(tmp_path / "again").config == Run(run).config
    sys.modules.pop("cfgnet", None)


@pytest.mark.slow
def test_reproduce_quick_run_configs_round_trip(tmp_path, capsys):
    out = tmp_path / "repro"
    assert main(["reproduce", "--quick", "--out", str(out), "--threads", "2"]) == 0
    configs = sorted(out.glob("*/config.json"))
    assert len(configs) == 3  # no BN, bnlab's BN, torch's BN
    for path in configs:
        assert load_config(path) == Run(path.parent).config
    _round_trip(configs[0], tmp_path / "again")


@pytest.mark.slow
def test_study_quick_run_configs_round_trip(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "axes", "--quick", "--out", str(out), "--threads", "2"]) == 0
    configs = sorted(out.glob("runs/*/config.json"))
    assert configs
    for path in configs:
        assert load_config(path) == Run(path.parent).config
    _round_trip(configs[0], tmp_path / "again")
