"""The README's "Fine-tune your pretrained network" section, run as written.

The network file and the commands are read from the README (the blocks after the ``finetune``
markers). Checked on the files the runs wrote: the fine-tuned run started from the pretrained
weights (its first epoch is already far above chance), its optimizer is AdamW with gamma and
beta in a group without weight decay, its learning rate followed the cosine schedule, and
`bnlab evaluate` reproduces the run's own test accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.readme_blocks import block
from tests.readme_blocks import commands as commands_of


def test_readme_finetune_runs_as_written(tmp_path):
    (tmp_path / "d2l.py").write_text(block("finetune", "d2l.py"))
    commands = commands_of("finetune")
    assert [c[:2] for c in commands] == [["bnlab", "train"], ["bnlab", "train"],
                                        ["bnlab", "evaluate"], ["bnlab", "evaluate"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    outputs = []
    for argv in commands:
        proc = subprocess.run([sys.executable, "-m", "bnlab", *argv[1:], "--threads", "1"]
                              if argv[1] == "train" else [sys.executable, "-m", "bnlab",
                                                          *argv[1:]],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        outputs.append(proc.stdout)
    runs = tmp_path / "runs"
    pre = [json.loads(x) for x in (runs / "pretrain" / "metrics.jsonl").read_text().split("\n")
           if x]
    fine = [json.loads(x) for x in (runs / "finetune" / "metrics.jsonl").read_text().split("\n")
            if x]
    config = json.loads((runs / "finetune" / "config.json").read_text())
    assert config["optimizer"] == "adamw" and config["no_decay_on_norm"] is True
    assert config["init"] is None and config["model"] == "d2l:pretrained"
    assert fine[0]["test_acc"] > 0.5 and pre[-1]["test_acc"] > 0.5  # chance is 0.1
    state = torch.load(runs / "finetune" / "checkpoint.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert len(groups[1]["params"]) == 8  # gamma and beta of the four BatchNorm layers
    assert groups[0]["lr"] < 1e-5  # the cosine ends near 0
    final = fine[-1]["test_acc"]
    assert f"test acc {final:.4f}" in outputs[2]
    assert "PreciseBN (2000 examples)" in outputs[3]
