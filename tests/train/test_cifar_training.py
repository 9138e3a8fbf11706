"""`bnlab train --dataset cifar10 --model resnet18-cifar` on a synthetic CIFAR-10 copy."""

import pytest
import torch

from bnlab.cli import main
from bnlab.train import Run, TrainConfig
from bnlab.train.batches import pixel_statistics as _pixel_statistics
from tests.data.cifar_fakes import fake_batches, write_archive


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_archive(root, fake_batches(per_batch=4)[0])  # 20 train, 4 test images
    return root


@pytest.mark.parametrize("model", ["resnet18-cifar", "vgg-cifar"])
def test_train_a_cifar_preset_end_to_end(cifar_dir, tmp_path, model):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--model", model, "--data-dir", str(cifar_dir),
            "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "0.05",
            "--momentum", "0.9", "--augment", "--normalize", "--no-progress", "--threads", "2"]
    assert main(argv) == 0
    run = Run(out)
    assert run.done and [r["epoch"] for r in run.metrics] == [1, 2]
    assert run.config.augment and run.config.dataset == "cifar10"
    assert 0.0 <= run.final["test_acc"] <= 1.0
    assert run.model()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("model,dataset,fits", [
    ("lenet-bn", "cifar10", "resnet18-cifar, vgg-cifar"),
    ("resnet18-cifar", "fashion-mnist", "cifar10"),
])
def test_a_model_that_cannot_read_the_dataset_is_a_usage_error(model, dataset, fits, capsys,
                                                               tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", dataset, "--model", model, "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid model={model!r} for dataset={dataset!r}" in err and fits in err, err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="reads 1x28x28 images, cifar10 images are 3x32x32"):
        TrainConfig(model="lenet-bn", dataset="cifar10")


def test_pixel_statistics_per_channel():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[:2, 2] = 255
    mean, std = _pixel_statistics(images)
    assert mean == pytest.approx([0.0, 1.0, 0.5])
    assert std[0] == 0 and std[1] == 0 and std[2] == pytest.approx(0.5164, abs=1e-4)
    grey = _pixel_statistics(images[:, 2])
    assert grey[0] == pytest.approx(0.5) and isinstance(grey[0], float)
