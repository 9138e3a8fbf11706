"""Training on a small real Fashion-MNIST subset: it learns, it is deterministic, it resumes."""

import json
from dataclasses import replace

import pytest
import torch

from bnlab.train import Run, TrainConfig, train

SMALL = TrainConfig(model="lenet-bn", norm="bnlab", epochs=3, limit_train=4096,
                    limit_test=1000, threads=2, progress=False)
TIMING = ("examples_per_sec", "epoch_time", "wall_time")


def numbers(run: Run) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in run.metrics]


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train(SMALL, tmp_path_factory.mktemp("ref") / "run", log=quiet)


def test_it_learns(reference):
    rows = reference.metrics
    assert len(rows) == 3 and reference.done
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # Chance is 0.1; measured: 0.20, 0.55, 0.68 over the three epochs (48 SGD steps).
    assert rows[-1]["test_acc"] > 0.6


def test_run_directory_layout(reference):
    names = {p.name for p in reference.path.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "DONE"} <= names
    assert TrainConfig.from_dict(json.loads((reference.path / "config.json").read_text())) == SMALL
    assert json.loads((reference.path / "DONE").read_text())["final"]["epoch"] == 3


def test_deterministic(reference, tmp_path):
    again = train(SMALL, tmp_path / "again", log=quiet)
    assert numbers(again) == numbers(reference)


def test_resume_after_interruption_gives_identical_metrics(reference, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch  1:"):
            raise Stop

    with pytest.raises(Stop):
        train(SMALL, tmp_path / "run", log=stop_after_first_epoch)
    partial = Run(tmp_path / "run")
    assert not partial.done and len(partial.metrics) == 1
    # A line written after the last checkpoint (a crash between the two writes) is dropped.
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 99}) + "\n")
    resumed = train(SMALL, tmp_path / "run", resume=True, log=quiet)
    assert numbers(resumed) == numbers(reference)
    ref_state, state = reference.model().state_dict(), resumed.model().state_dict()
    assert all(torch.equal(ref_state[k], state[k]) for k in ref_state)


def test_existing_run_needs_resume_and_matching_config(reference, tmp_path):
    with pytest.raises(FileExistsError, match="--resume"):
        train(SMALL, reference.path, log=quiet)
    with pytest.raises(ValueError, match=r"lr: 1\.0 != 0\.5"):
        train(replace(SMALL, lr=0.5), reference.path, resume=True, log=quiet)
    # threads may differ; a finished run is returned as it is
    assert train(replace(SMALL, threads=1), reference.path, resume=True, log=quiet).done


@pytest.mark.parametrize("kw,match", [
    ({"model": "vgg"}, "invalid model"), ({"norm": "x"}, "invalid norm"),
    ({"epochs": 0}, "invalid epochs"), ({"lr": -1.0}, "invalid lr"),
    ({"optimizer": "lbfgs"}, "invalid optimizer"), ({"limit_train": 0}, "invalid limit_train"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_adam_and_torch_norm_run(tmp_path):
    cfg = replace(SMALL, norm="torch", optimizer="adam", lr=1e-3, epochs=2)
    rows = train(cfg, tmp_path / "adam", log=quiet).metrics
    assert rows[1]["train_loss"] < rows[0]["train_loss"] and rows[1]["train_acc"] > 0.5
