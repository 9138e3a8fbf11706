"""Where a run came from (config.json / DONE), its PreciseBN evaluation and BN momentum."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from bnlab.data import BatchLoader
from bnlab.models import build_model
from bnlab.norm.base import tracked_batch_norms
from bnlab.provenance import ROOT, provenance
from bnlab.train import TrainConfig, train
from bnlab.train.evaluate import evaluate, precise_accuracy

TINY = TrainConfig(epochs=2, limit_train=512, limit_test=256, progress=False, threads=1)


def quiet(msg: str) -> None:
    pass


def test_provenance_names_the_commit_torch_machine_and_threads():
    p = provenance(3)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert p["code"]["commit"] == head and isinstance(p["code"]["clean"], bool)
    assert p["torch"] == torch.__version__ and p["threads"] == 3 and p["machine"]["cpus"] >= 1


def test_a_run_records_provenance_and_its_wall_time(tmp_path):
    run = train(TINY, tmp_path / "r", log=quiet)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["provenance"]["threads"] == 1 and "commit" in config["provenance"]["code"]
    assert TrainConfig.from_dict(config) == TINY  # the record is not a setting
    done = json.loads((tmp_path / "r" / "DONE").read_text())
    assert done["wall_time"] == pytest.approx(run.metrics[-1]["wall_time"])
    assert done["provenance"]["torch"] == torch.__version__


def test_precise_bn_metric_only_where_there_are_statistics(tmp_path):
    bn = train(TrainConfig(**{**TINY.to_dict(), "precise_bn": 300}), tmp_path / "bn", log=quiet)
    assert all(0 <= m["test_acc_precise"] <= 1 for m in bn.metrics)
    plain = train(TrainConfig(**{**TINY.to_dict(), "precise_bn": 300, "norm": "none"}),
                  tmp_path / "none", log=quiet)
    assert all("test_acc_precise" not in m for m in plain.metrics)
    # the evaluation touches neither the training (same losses) nor the running averages
    off = train(TINY, tmp_path / "off", log=quiet)
    assert [m["train_loss"] for m in off.metrics] == [m["train_loss"] for m in bn.metrics]
    assert [m["test_acc"] for m in off.metrics] == [m["test_acc"] for m in bn.metrics]


def test_precise_accuracy_leaves_model_buffers_and_rng_alone():
    torch.manual_seed(0)
    model = build_model("lenet-bn", "bnlab")
    x = torch.randint(0, 256, (600, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (600,))
    train_l = BatchLoader(x[:400], y[:400], 100, shuffle=True, seed=0)
    test_l = BatchLoader(x[400:], y[400:], 100, shuffle=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    acc = precise_accuracy(model, train_l, test_l, 400)
    assert 0 <= acc <= 1 and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert acc != evaluate(model.eval(), test_l)  # the fresh layers' 0/1 statistics differ


def test_precise_evaluation_sees_through_fused_layers(tmp_path):
    """The trainer's fused BN-sigmoid-pool layers re-estimate like the plain ones."""
    kw = {**TINY.to_dict(), "precise_bn": 300}
    fused = train(TrainConfig(**kw), tmp_path / "fused", log=quiet)
    plain = train(TrainConfig(**{**kw, "fuse": False}), tmp_path / "plain", log=quiet)
    assert [m["test_acc_precise"] for m in fused.metrics] == pytest.approx(
        [m["test_acc_precise"] for m in plain.metrics], abs=2 / 256)  # float32 order: 2 images


def test_bn_momentum_sets_every_layer(tmp_path):
    from bnlab.train.build import make_model
    model = make_model(TrainConfig(**{**TINY.to_dict(), "bn_momentum": 0.3, "fuse": False}))
    assert [m.momentum for m in tracked_batch_norms(model)] == [0.3] * 4


@pytest.mark.parametrize(("field", "value"), [("bn_momentum", 0.0), ("bn_momentum", 1.5),
                                              ("bn_momentum", float("nan")), ("precise_bn", 1),
                                              ("precise_bn", -5)])
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_diverged_network_is_evaluated_not_an_error():
    """NaN weights or NaN statistics: PreciseBN has nothing to re-estimate, the accuracy is
    what the network gives (the studies count such a seed as failed), and no exception."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (300, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (300,))
    train_l = BatchLoader(x[:200], y[:200], 100, shuffle=True, seed=0)
    test_l = BatchLoader(x[200:], y[200:], 100, shuffle=False)
    nan_weights = build_model("lenet-bn", "bnlab")
    with torch.no_grad():
        nan_weights[0].weight.fill_(float("nan"))
    huge = build_model("lenet-bn", "bnlab")  # finite weights whose activations overflow
    with torch.no_grad():
        huge[0].weight.fill_(3e38)
    for model in (nan_weights, huge):
        acc = precise_accuracy(model, train_l, test_l, 200)
        assert acc == evaluate(model.eval(), test_l)  # the statistics it has
