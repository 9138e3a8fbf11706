"""A user's network or data that cannot train is refused before the first step, in one line.

Each case is a real `bnlab train` (in its own child process) on a module written here: exit 1,
one `bnlab: error:` line naming both sides of the mismatch (or the user's file and line), and
nothing written (the run directory does not exist afterwards). `--debug` adds the traceback.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import RUN_FLAGS, assert_one_line_error

USER_CODE = '''
import torch
from torch import nn
from torch.utils.data import Dataset


def tuple_net():
    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)), x
    return TupleNet()


def five_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))


def wrong_width():
    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(100, 10)

        def forward(self, x):
            h = x.flatten(1)
            return self.fc(h)  # the line the error must name
    return Wrong()


def no_parameters():
    class Slice(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]
    return Slice()


def image_out():
    return nn.Conv2d(1, 10, 3)


def factory_raises():
    raise KeyError("no such checkpoint")


class Items(Dataset):
    def __init__(self, label, length=64, fail_at=None):
        self.label, self.length, self.fail_at = label, length, fail_at

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at:
            raise KeyError(f"no item {i}")
        return torch.rand(1, 28, 28), self.label(i)


def string_labels():
    return Items(lambda i: "cat"), Items(lambda i: "cat")


def zero_d_inputs_as_labels():
    return Items(lambda i: torch.tensor([i % 10])), Items(lambda i: torch.tensor([i % 10]))


def negative_length():
    return Items(lambda i: i % 10, length=-3), Items(lambda i: i % 10)


def item_raises():
    return Items(lambda i: i % 10, fail_at=4), Items(lambda i: i % 10)


def int32_labels():
    x = torch.rand(64, 1, 28, 28)
    return (x, (torch.arange(64) % 10).int()), (x, (torch.arange(64) % 10).int())


def labels_beyond_outputs():
    x = torch.rand(64, 1, 28, 28)
    y = torch.arange(64) % 10
    y[-1] = 12  # one label in the last batch only: found before the first step all the same
    return (x, y), (x, torch.arange(64) % 10)
'''

CASES = [  # (--model, --dataset, what the one line must say)
    ("usernet:tuple_net", "fake-fashion-mnist", ["returned a tuple of 2 items", "(N, classes)"]),
    ("usernet:five_outputs", "fake-fashion-mnist", ["outside the network's 5 outputs"]),
    ("usernet:wrong_width", "fake-fashion-mnist",
     ["raised RuntimeError", "usernet.py:30, in forward", "--debug"]),
    ("usernet:image_out", "fake-fashion-mnist", ["returned shape (32, 10, 26, 26)"]),
    ("usernet:factory_raises", "fake-fashion-mnist",
     ["your model factory usernet:factory_raises raised KeyError", "usernet.py:46"]),
    ("lenet-bn", "usernet:string_labels", ["labels of batch 1 are a tuple, not a tensor"]),
    ("lenet-bn", "usernet:zero_d_inputs_as_labels", ["have shape (32, 1)", "shape (N,)"]),
    ("lenet-bn", "usernet:negative_length", ["len() of the dataset failed"]),
    ("lenet-bn", "usernet:item_raises", ["your dataset raised KeyError", "in __getitem__"]),
    ("lenet-bn", "usernet:int32_labels", ["are int32", "int64 class indices"]),
    ("lenet-bn", "usernet:labels_beyond_outputs",
     ["label 12 in ", "outside the network's 10 outputs"]),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("door")
    (d / "usernet.py").write_text(USER_CODE)
    return d


@pytest.mark.parametrize(("model", "dataset", "needles"), CASES,
                         ids=[c[0].split(":")[-1] + "-" + c[1].split(":")[-1] for c in CASES])
def test_a_mismatch_is_one_line_and_writes_nothing(bnlab_cli, workdir, model, dataset, needles):
    out = workdir / f"run-{model}-{dataset}".replace(":", "_")
    r = bnlab_cli("train", "--model", model, "--dataset", dataset, "--out", out, *RUN_FLAGS,
                  cwd=workdir)
    assert_one_line_error(r, *needles)
    assert " of epoch " not in r.stderr, r  # found at the door, not by a training step
    assert not out.exists()


def test_no_parameters_is_refused_by_name(bnlab_cli, workdir):
    out = workdir / "run-no-parameters"
    r = bnlab_cli("train", "--model", "usernet:no_parameters", "--dataset",
                  "fake-fashion-mnist", "--out", out, *RUN_FLAGS, cwd=workdir)
    assert_one_line_error(r, "no trainable parameters")
    assert not out.exists()


def test_debug_prints_the_whole_traceback(bnlab_cli, workdir):
    r = bnlab_cli("train", "--model", "usernet:wrong_width", "--dataset", "fake-fashion-mnist",
                  "--out", workdir / "run-debug", *RUN_FLAGS, "--debug", cwd=workdir)
    assert r.rc == 1 and "Traceback" in r.stderr and 'usernet.py", line 30' in r.stderr, r
    assert r.stderr.rstrip().splitlines()[-1].startswith("bnlab: error: your network"), r


@pytest.mark.parametrize(("source", "needle"), [
    ("x = 1 / 0\n\ndef f():\n    pass\n", "raised ZeroDivisionError: division by zero at "
                                        "broken.py:1"),
    ("def f(:\n    pass\n", "invalid syntax"),
], ids=["raises", "syntax"])
def test_a_module_that_fails_to_import_is_one_line(bnlab_cli, tmp_path, source, needle):
    (tmp_path / "broken.py").write_text(source)
    for flag in ("--model", "--dataset"):
        r = bnlab_cli("train", flag, "broken:f", "--out", tmp_path / "r", *RUN_FLAGS,
                      cwd=tmp_path)
        assert_one_line_error(r, needle)
        assert "broken.py" in r.stderr and not (tmp_path / "r").exists()
