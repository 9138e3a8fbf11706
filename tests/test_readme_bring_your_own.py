"""The README's "Bring your own" section, run as written: the user's file, the commands.

The network file and the shell commands are read from the README itself (the blocks after the
``bring-your-own`` markers), so the README cannot drift from what works. The commands train on
``fake-cifar10``, bnlab's synthetic CIFAR-10, so they run offline exactly as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.readme_blocks import block
from tests.readme_blocks import commands as commands_of


def test_readme_bring_your_own_runs_as_written(tmp_path):
    (tmp_path / "mynet.py").write_text(block("bring-your-own", "mynet.py"))
    commands = commands_of("bring-your-own")
    assert [c[:2] for c in commands] == [["bnlab", "train"], ["bnlab", "train"],
                                        ["bnlab", "compare"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for argv in commands:
        proc = subprocess.run([sys.executable, "-m", "bnlab", *argv[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
    for name, kind in (("mine-bn", "BatchNorm2d"), ("mine-ghost", "GhostBatchNorm")):
        config = json.loads((tmp_path / "runs" / name / "config.json").read_text())
        assert config["model"] == "mynet:resnet" and (tmp_path / "runs" / name / "DONE").exists()
        assert kind in config["model_info"]["repr"]
    out = tmp_path / "runs" / "mine-compare"
    table = (out / "compare.md").read_text()
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.html").exists()
    assert "mine-bn" in table and "mine-ghost" in table
    assert "model_info" not in table  # (a user network's repr and shapes: not a table cell)
    losses = [json.loads((tmp_path / "runs" / n / "metrics.jsonl").read_text().splitlines()[-1])
              ["train_loss"] for n in ("mine-bn", "mine-ghost")]
    assert losses[0] != losses[1]  # ghost batches of 32 in batches of 64: other statistics
