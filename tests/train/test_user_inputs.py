"""train() on the user's network and data, as the textbook's train_ch6(net, train_iter, ...)."""

import json
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnlab.errors import RunDirError, UserError
from bnlab.norm.registry import create_norm
from bnlab.train import Run, TrainConfig, train

CFG = TrainConfig(epochs=2, batch_size=32, lr=0.5, threads=2, progress=False)
TIMING = ("examples_per_sec", "epoch_time", "wall_time")


def quiet(msg: str) -> None:
    pass


def numbers(run: Run) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in run.metrics]


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 8 dimensions, far apart: an MLP learns them in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.eye(3, 8) * 4
    return centers[y] + torch.randn(n, 8, generator=g), y


TRAIN, TEST = blobs(256, 0), blobs(96, 1)


def mlp(width: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(8, width), nn.BatchNorm1d(width), nn.ReLU(),
                         nn.Linear(width, 3))


def mlp_with_norm(norm: str = "bnlab") -> nn.Module:
    layer = create_norm(norm, 16, input_rank=2)  # None for "none": no layer
    return nn.Sequential(nn.Linear(8, 16), *([layer] if layer else []), nn.ReLU(),
                         nn.Linear(16, 3))


@pytest.fixture
def mod(tmp_path, monkeypatch):
    """A module `usernets` on the import path, as a user's own file would be."""
    (tmp_path / "usernets.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),"
        " nn.Linear(16, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernets:make"
    sys.modules.pop("usernets", None)


def test_tensors_dataset_and_dataloader_train_and_are_described(tmp_path):
    t = train(CFG, tmp_path / "t", model=mlp, train_data=TRAIN, test_data=TEST, log=quiet)
    d = train(CFG, tmp_path / "d", model=mlp, train_data=TensorDataset(*TRAIN),
              test_data=TensorDataset(*TEST), log=quiet)
    loader = DataLoader(TensorDataset(*TRAIN), batch_size=64, shuffle=True)
    with pytest.raises(UserError, match=r"batch size 32 was asked for, but the training "
                                        r"DataLoader batches 64 examples"):
        train(CFG, tmp_path / "no", model=mlp, train_data=loader, test_data=TEST, log=quiet)
    assert not (tmp_path / "no").exists()  # nothing written but the error
    dl = train(replace(CFG, batch_size=TrainConfig().batch_size), tmp_path / "dl", model=mlp,
               train_data=loader, test_data=TEST, log=quiet)
    assert t.final["test_acc"] > 0.9  # chance is 1/3
    # bnlab draws the batches of every kind of data in the same seeded order
    assert numbers(d) == numbers(t)
    assert dl.config.batch_size == 64 and dl.done
    saved = json.loads((tmp_path / "dl" / "config.json").read_text())
    assert saved["dataset"] == "custom" and saved["batch_size"] == 64
    assert saved["data_info"]["train"] == {
        "kind": "dataloader", "class": "torch.utils.data.dataset.TensorDataset", "size": 256,
        "example_shape": [8], "dtype": "float32", "batch_size": 64}
    assert saved["data_info"]["test"]["kind"] == "tensors"
    assert saved["data_info"]["test"]["size"] == 96
    info = saved["model_info"]
    assert info["state"]["1.running_mean"] == [16] and "BatchNorm1d" in info["repr"]
    assert saved["norm"] == "own"  # mlp takes no norm: its own layers were trained


def test_a_module_instance_is_trained_in_place_and_recorded_by_class(tmp_path):
    net = mlp()
    run = train(CFG, tmp_path / "r", model=net, train_data=TRAIN, test_data=TEST, log=quiet)
    assert run.config.model == "custom"
    assert run.config.model_info["class"] == "torch.nn.modules.container.Sequential"
    assert torch.equal(run.state_dict()["0.weight"], net[0].weight.detach())
    with pytest.raises(UserError, match=r"pass its factory, run\.model\(factory\)"):
        run.model()  # bnlab never imports what a run directory names
    assert torch.equal(run.model(mlp)[0].weight, net[0].weight.detach())


def test_an_importable_factory_is_recorded_by_path_and_rebuilt(tmp_path, mod):
    run = train(replace(CFG, model=mod), tmp_path / "r", train_data=TRAIN, test_data=TEST,
                log=quiet)
    assert run.config.model == "usernets:make"
    assert run.config.model_info["factory"] == "usernets:make"
    assert torch.equal(run.model(mod)[0].weight, run.state_dict()["0.weight"])
    with pytest.raises(ValueError, match="does not fit the network"):
        run.model(lambda: mlp(32))


def test_resume_of_a_user_model_run_matches_an_uninterrupted_one(tmp_path):
    class Stop(Exception):
        pass

    def stop(msg: str) -> None:
        if msg.startswith("epoch  1:"):
            raise Stop

    whole = train(CFG, tmp_path / "whole", model=mlp, train_data=TRAIN, test_data=TEST,
                  log=quiet)
    with pytest.raises(Stop):
        train(CFG, tmp_path / "cut", model=mlp, train_data=TRAIN, test_data=TEST, log=stop)
    assert len(Run(tmp_path / "cut").metrics) == 1
    resumed = train(CFG, tmp_path / "cut", model=mlp, train_data=TRAIN, test_data=TEST,
                    resume=True, log=quiet)
    assert resumed.done and numbers(resumed) == numbers(whole)


def test_resume_refuses_another_network_or_other_data(tmp_path):
    first = train(CFG, tmp_path / "r", model=mlp, train_data=TRAIN, test_data=TEST, log=quiet)
    with pytest.raises(RunDirError, match=r"model_info.state: \{'0.weight': \[16, 8\]"):
        train(CFG, tmp_path / "r", model=lambda: mlp(32), train_data=TRAIN, test_data=TEST,
              resume=True, log=quiet)
    with pytest.raises(RunDirError, match=r"data_info.train: .*'size': 256.* != .*'size': 200"):
        train(CFG, tmp_path / "r", model=mlp, train_data=blobs(200, 0), test_data=TEST,
              resume=True, log=quiet)
    # the same factory and data: it matches (the run is complete, so nothing trains)
    again = train(CFG, tmp_path / "r", model=mlp, train_data=TRAIN, test_data=TEST,
                  resume=True, log=quiet)
    assert numbers(again) == numbers(first)


def test_a_factory_with_a_norm_parameter_gets_the_runs_norm(tmp_path):
    run = train(replace(CFG, norm="none", epochs=1), tmp_path / "r", model=mlp_with_norm,
                train_data=TRAIN, test_data=TEST, log=quiet)
    assert run.config.norm == "none" and run.config.model_info["takes_norm"] is True
    assert not any("running_mean" in k for k in run.config.model_info["state"])
    with pytest.raises(UserError, match="takes no `norm`"):
        train(replace(CFG, norm="group"), tmp_path / "g", model=mlp, train_data=TRAIN,
              test_data=TEST, log=quiet)


@pytest.mark.parametrize("kw, needle", [
    ({"train_data": TRAIN}, "pass both train_data and test_data"),
    ({"train_data": (TRAIN[0], TRAIN[1][:10]), "test_data": TEST}, "256 inputs but 10 labels"),
    ({"train_data": [1, 2], "test_data": TEST}, "not an \\(input, label\\) pair"),
    ({"train_data": [("img", 0)], "test_data": TEST}, "item 0's input is a str, not a tensor"),
    ({"model": 3}, "an object of type int is not a network"),
    ({"model": lambda: 3}, "not a torch nn.Module"),
])
def test_bad_user_inputs_name_the_problem_and_leave_nothing(tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        train(CFG, tmp_path / "r", log=quiet, **{"model": mlp, **kw})
    assert not (tmp_path / "r").exists()


def test_matching_ignores_only_the_repr():
    a = replace(CFG, model="custom", norm="own", model_info={"class": "A", "repr": "A()"})
    assert a.differences(replace(a, model_info={"class": "A", "repr": "A(x)"})) == []
    assert a.differences(replace(a, model_info={"class": "B", "repr": "A()"})) == [
        "model_info.class: 'A' != 'B'"]
    with pytest.raises(ValueError, match="invalid norm='own'"):
        TrainConfig(norm="own")  # bnlab's own models always take a norm


def rank_train(rank: int, world: int, out: str) -> list[dict]:
    """One data-parallel rank: a user's network on a user's Dataset, BN synchronized."""
    return train(replace(CFG, sync_bn=True, threads=1), out, model=mlp,
                 train_data=TensorDataset(*TRAIN), test_data=TEST, log=quiet).metrics


def test_two_ranks_on_a_user_network_and_dataset_reproduce_one_process(tmp_path):
    from tests.norm.dist_helpers import run_ranks

    single = train(replace(CFG, sync_bn=True), tmp_path / "one", model=mlp,
                   train_data=TensorDataset(*TRAIN), test_data=TEST, log=quiet)
    ranks = run_ranks(rank_train, 2, tmp_path, str(tmp_path / "ddp"), timeout=120)
    assert ranks[0] == ranks[1] == Run(tmp_path / "ddp").metrics
    for a, b in zip(ranks[0], single.metrics, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=2 / 96)
