"""The Python twin of `bnlab study NAME --model ... --dataset ...`: a factory and tensors."""

import json

import pytest
from torch import nn

from bnlab.errors import UserError
from bnlab.studies.base import run_study
from bnlab.studies.registry import get_study
from tests.train.test_user_inputs import TEST, TRAIN, mlp, mlp_with_norm


def quiet(msg: str) -> None:
    pass


def test_lr_study_varies_the_norm_of_a_factory_that_takes_one(tmp_path):
    findings = run_study(get_study("lr"), tmp_path, quick=True, threads=2, log=quiet,
                         model=mlp_with_norm, dataset=(TRAIN, TEST))
    assert [(r["norm"], r["lr"]) for r in findings.rows] == [
        (n, lr) for n in ("none", "bnlab") for lr in (0.1, 1.0, 10.0)]
    assert "status" not in findings.rows[0]  # every arm ran: the default table
    # both sweeps ran and are judged: a usable range for each
    assert findings.verdict.count("without BN ") == 1 and findings.verdict.count("; with BN ") == 1
    assert {r["seeds trained"] for r in findings.rows} <= {"0/1", "1/1"}
    runs = tmp_path / "runs"
    none = json.loads((runs / "none-lr0.1-s0" / "config.json").read_text())
    bn = json.loads((runs / "bnlab-lr0.1-s0" / "config.json").read_text())
    assert none["dataset"] == "custom" and none["data_info"]["train"]["size"] == 256
    assert not any("running_mean" in k for k in none["model_info"]["state"])
    assert "1.running_mean" in bn["model_info"]["state"]


def test_without_a_norm_parameter_only_the_bn_arms_run(tmp_path):
    findings = run_study(get_study("lr"), tmp_path, quick=True, threads=2, log=quiet,
                         model=mlp, dataset=(TRAIN, TEST))
    assert [r["status"][:4] for r in findings.rows] == ["ran"] * 3 + ["n/a:"] * 3
    assert "without BN" not in findings.verdict.split("Not run on")[0]
    assert not (tmp_path / "runs" / "none-lr0.1-s0").exists()


def test_a_study_needs_a_factory_not_a_built_network(tmp_path):
    with pytest.raises(UserError, match="pass a function that builds the network"):
        run_study(get_study("lr"), tmp_path, quick=True, log=quiet, model=nn.Linear(8, 3))
