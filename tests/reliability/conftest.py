"""Shared pieces of the hostile-input tests: the forking command runner and pristine directories.

Every command line runs in a child process of ``forkserver.py`` (see there), so a signal or a
hang is one failed case. The pristine directories (a tiny synthetic dataset, a finished run,
a reproduce directory, a study) are built once per session, in process; each case copies what
it damages.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.data.fakes import write_fake_dataset

SERVER = Path(__file__).with_name("forkserver.py")
# The finished run's flags (tiny: 64 training examples, one epoch), for `train --resume`.
RUN_FLAGS = ["--epochs", "1", "--batch-size", "32", "--threads", "1", "--no-progress"]
QUICK = ["--quick", "--threads", "1"]


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    timed_out: bool
    calls: int | None = None  # bnlab function calls made (with count_calls)

    def __str__(self) -> str:
        return f"rc={self.rc}\nstdout:\n{self.stdout[-1500:]}\nstderr:\n{self.stderr[-3000:]}"


class Runner:
    """Send command lines to the fork server; each runs in its own child process."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def __call__(self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120, interrupt_after: float | None = None,
                 interrupt_when: Path | None = None, interrupt_at_call: int | None = None,
                 count_calls: bool = False) -> Result:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd or self.scratch),
                   "env": env or {}, "stdout": str(out), "stderr": str(err),
                   "timeout": timeout, "interrupt_after": interrupt_after,
                   "interrupt_when": None if interrupt_when is None else str(interrupt_when),
                   "interrupt_at_call": interrupt_at_call, "count_calls": count_calls}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return Result(answer["rc"], out.read_text(errors="replace"),
                      err.read_text(errors="replace"), answer["timed_out"], answer.get("calls"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def bnlab_cli(tmp_path_factory) -> Runner:
    runner = Runner(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()


def assert_usage_error(r: Result, needle: str = "") -> None:
    """Exit status 2 from argparse: the usage, then one `bnlab ...: error:` line."""
    assert r.rc == 2, r
    assert "Traceback" not in r.stderr, r
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("bnlab")]
    assert len(errors) == 1 and ": error: " in errors[0], r
    assert needle in errors[0], r


def assert_one_line_error(r: Result, *needles: str) -> None:
    """Exit status 1 and exactly one stderr line, `bnlab: error: ...`, naming the needles."""
    assert r.rc == 1, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error: "), r
    for needle in needles:
        assert needle in lines[0], (needle, str(r))


def snapshot(directory: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `directory` (symlinks by their target)."""
    files = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            files[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """A synthetic dataset, and trained on it: a finished run, an unfinished one (1 of 2
    epochs), a reproduce directory and a study."""
    from bnlab.studies.base import run_study
    from bnlab.studies.registry import get_study
    from bnlab.studies.reproduce import reproduce
    from bnlab.train import TrainConfig, train

    root = tmp_path_factory.mktemp("pristine")
    data = write_fake_dataset(root / "data", n_train=64, n_test=32)
    quiet = lambda msg: None  # noqa: E731
    config = TrainConfig(epochs=1, batch_size=32, threads=1, progress=False, data_dir=str(data))
    train(config, root / "run", log=quiet)

    class Stop(Exception):
        pass

    def stop_after_epoch_1(msg: str) -> None:
        if msg.startswith("epoch  1:"):
            raise Stop

    with pytest.raises(Stop):  # a run of 2 epochs interrupted after the first
        train(replace(config, epochs=2), root / "unfinished", log=stop_after_epoch_1)
    reproduce(out=root / "reproduce", quick=True, data_dir=str(data), threads=1, log=quiet)
    run_study(get_study("axes"), root / "study", quick=True, data_dir=str(data), threads=1,
              log=quiet)
    return {"data": data, "run": root / "run", "unfinished": root / "unfinished",
            "reproduce": root / "reproduce", "study": root / "study"}


def copy_of(pristine: dict[str, Path], what: str, tmp_path: Path) -> Path:
    """A private copy of a pristine directory, to damage."""
    return Path(shutil.copytree(pristine[what], tmp_path / what, symlinks=True))
