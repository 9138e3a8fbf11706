"""The memory policy (bnlab.memory): what it changes in a process, and who applies it.

The policy is process-wide, so every effect is measured in a fresh interpreter, by counting the
minor page faults of a loop that fills and frees one tensor, with Python objects allocated
between (``FAULTS``):

* 64 MiB tensors, 30 rounds. Under glibc's default each round maps fresh pages, and each page
  faults on first write (64 MiB / 4 KiB = 16,384 faults a round). Under ``reuse`` the heap
  first grows while small allocations split freed chunks (to about 10 tensors' worth in this
  loop: the policy's memory cost), then every round reuses its pages.
* 4 MiB tensors, 30 rounds: under glibc's untouched default the first free raises its adaptive
  mmap threshold, and later rounds come from the heap; once any mallopt has fixed the
  thresholds (``"system-fixed"``), every round is a fresh mapping again (1,024 faults a round).
  This tells "untouched" from "restored after reuse".

The last five rounds are compared; the bounds leave an order of magnitude on each side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bnlab import memory

FAULTS = """
import json, resource, sys
import torch
from bnlab import memory
mib = int(sys.argv[1])
applied = [memory.set_policy(p) for p in sys.argv[2:]] or [memory.current()]
torch.empty(1).fill_(0)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.empty(mib * 2**18)  # mib MiB of float32
    t.fill_(1.0)
    del t
    text = [str(i) for i in range(100)]  # small allocations between the large ones
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[-5:]}))
"""


def _faults(mib: int, *policies: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, str(mib), *policies],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reuse_stops_the_page_faults_of_fresh_tensors():
    system, reuse = _faults(64), _faults(64, "reuse")
    if reuse["applied"] != ["reuse"]:
        pytest.fail(f"mallopt is not available in this C library: {reuse}")
    assert min(system["faults"]) > 10_000, system
    assert max(reuse["faults"]) < 1_000, reuse


def test_system_changes_nothing_and_after_reuse_says_what_it_restored():
    untouched, system = _faults(4), _faults(4, "system")
    fixed = _faults(4, "reuse", "system")
    assert system["applied"] == ["system"] and fixed["applied"] == ["reuse", "system-fixed"]
    assert max(untouched["faults"]) < 100 and max(system["faults"]) < 100, (untouched, system)
    assert min(fixed["faults"]) > 900, fixed


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="memory policy must be one of reuse, system"):
        memory.set_policy("keep")


COMMAND = """
import json, sys
from bnlab import cli, memory
from bnlab.provenance import provenance
rc = cli.main(["kernels", "status"])
print(json.dumps({"rc": rc, "policy": memory.current(),
                  "recorded": provenance()["memory_policy"]}))
"""


def _command(env_value: str | None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "BNLAB_MEMORY"}
    if env_value is not None:
        env["BNLAB_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", COMMAND], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_the_command_applies_reuse_and_records_it():
    assert _command(None)[0] == {"rc": 0, "policy": "reuse", "recorded": "reuse"}
    assert _command(" SYSTEM ")[0] == {"rc": 0, "policy": "system", "recorded": "system"}
    result, err = _command("lots")
    assert result["rc"] == 1 and result["policy"] == "system"
    assert "BNLAB_MEMORY='lots' is not one of reuse, system" in err


def test_the_library_leaves_the_policy_alone():
    """Importing bnlab and its trainer changes nothing: the 4 MiB loop faults as untouched."""
    code = FAULTS.replace("import torch\n", "import torch, bnlab, bnlab.train\n")
    out = subprocess.run([sys.executable, "-c", code, "4"], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["applied"] == ["system"] and max(result["faults"]) < 100, result
