"""The memory policy (bnlab.memory): what it changes in a process, and who applies it.

The policy is process-wide, so its effect is measured in a fresh interpreter: a tensor of
64 MiB filled and freed 30 times, with Python objects allocated between. Under glibc's default
each round maps fresh pages, and each page faults on first write (64 MiB / 4 KiB = 16,384
faults a round). Under ``reuse`` the heap first grows while small allocations split freed
chunks (to about 10 tensors' worth in this loop: the policy's memory cost), then every round
reuses its pages and faults almost never. The last five rounds are compared; the bounds (more
than 10,000 faults a round against fewer than 1,000) leave an order of magnitude each side.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bnlab import cli, memory
from bnlab.provenance import provenance

FAULTS = """
import json, resource, sys
import torch
from bnlab import memory
applied = memory.set_policy(sys.argv[1])
torch.empty(1).fill_(0)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(16 * 2**20)  # 64 MiB of float32
    t.fill_(1.0)
    del t
    text = [str(i) for i in range(100)]  # small allocations between the large ones
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, policy], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reuse_stops_the_page_faults_of_fresh_tensors():
    system, reuse = _faults("system"), _faults("reuse")
    if reuse["applied"] != "reuse":
        pytest.fail(f"mallopt is not available in this C library: {reuse}")
    assert min(system["faults"][-5:]) > 10_000, system
    assert max(reuse["faults"][-5:]) < 1_000, reuse


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="memory policy must be one of reuse, system"):
        memory.set_policy("keep")


def test_the_command_applies_reuse_and_records_it(monkeypatch, capsys):
    monkeypatch.delenv("BNLAB_MEMORY", raising=False)
    try:
        assert cli.main(["kernels", "status"]) == 0
        assert memory.current() == "reuse"
        assert provenance()["memory_policy"] == "reuse"
        monkeypatch.setenv("BNLAB_MEMORY", "system")
        assert cli.main(["kernels", "status"]) == 0
        assert memory.current() == "system"
        monkeypatch.setenv("BNLAB_MEMORY", "lots")
        assert cli.main(["kernels", "status"]) == 1
        assert "BNLAB_MEMORY='lots' is not one of reuse, system" in capsys.readouterr().err
    finally:
        memory.set_policy("system")


def test_the_library_leaves_the_policy_alone():
    """Importing bnlab and training do not change it (a fresh process: nothing applied)."""
    code = ("import bnlab, bnlab.train; from bnlab import memory; print(memory.current())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "system"
