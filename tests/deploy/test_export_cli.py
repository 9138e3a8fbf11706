"""`bnlab export RUN --onnx FILE`: a real (tiny) `bnlab train` run of the chapter's LeNet-BN on
Fashion-MNIST, exported with each exporter, checked in onnxruntime by the command and here."""

from __future__ import annotations

import pytest
import torch

from bnlab.cli import main
from bnlab.deploy import run_onnxruntime
from bnlab.train.run import Run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--limit-train", "64", "--limit-test", "32", "--epochs", "1",
                 "--batch-size", "32", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_prints_the_largest_difference_and_writes_a_model_that_matches(
        run_dir, tmp_path, capsys, exporter):
    target = tmp_path / "lenet.onnx"
    argv = ["export", str(run_dir), "--onnx", str(target), "--exporter", exporter]
    assert main([*argv, "--fold", "--precise-bn", "48"]) == 0
    out = capsys.readouterr().out
    assert "largest difference" in out and "PreciseBN over 48 examples" in out
    assert "4 BatchNorm layer(s) folded" in out
    assert main(argv) == 0  # unfolded, the run's own statistics: the oracle is run.model()
    model = Run(run_dir).model()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(run_onnxruntime(target.read_bytes(), x), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


def test_export_errors_are_one_line(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "no" / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bnlab: error: ") and err.count("\n") == 1 and "no directory" in err
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "missing"), "--onnx", str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    assert list(tmp_path.iterdir()) == []
