"""Hostile config files (issue 26): each is one line, exit 1, fast, in bounded memory.

Each case runs ``bnlab train --config FILE`` in its own process (one that hangs or grows is
one failed case, and its peak memory is measured alone): a 0.5 KB YAML alias bomb, nesting
thousands deep (YAML and JSON), integers of 5,000 digits, a file over the size limit, a FIFO.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bnlab.train.config_file import MAX_ALIASES, MAX_BYTES, MAX_DEPTH

# Nine levels of nine aliases: 9^9 (387 million) strings once expanded, from 0.5 KB.
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))

CASES = {
    "bomb.yaml": (BOMB, f"more than {MAX_ALIASES} YAML aliases"),
    "deep.yaml": ("lr: " + "[" * 5000 + "]" * 5000 + "\n", f"nested deeper than {MAX_DEPTH}"),
    "deep.json": ('{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    "long.yaml": ("epochs: " + "9" * 5000 + "\n", "an integer too long"),
    "long.json": ('{"epochs": ' + "9" * 5000 + "}", "an integer too long"),
    "huge.json": ('{"lr": 0.1}' + " " * MAX_BYTES, "too large for a config file"),
}

_CHILD = """
import resource, sys
from bnlab.cli import main
code = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""

_BASELINE = """
import resource, sys
import bnlab.cli, bnlab.train
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def _peak(stderr: str) -> int:
    return int(next(ln for ln in stderr.splitlines() if ln.startswith("PEAK_KB")).split()[1])


@pytest.fixture(scope="module")
def baseline_kb() -> int:
    """Peak memory of a process that has imported bnlab's trainer (torch) and nothing more."""
    proc = subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True,
                          timeout=120)
    return _peak(proc.stderr)


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # a fresh interpreter per case: torch's import dominates
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_is_one_line_fast_and_small(tmp_path, baseline_kb, name):
    text, needle = CASES[name]
    path = tmp_path / name
    path.write_text(text)
    if name == "bomb.yaml":
        assert len(text.encode()) <= 512
    started = time.perf_counter()
    proc = _run("train", "--out", str(tmp_path / "run"), "--config", str(path))
    took = time.perf_counter() - started
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("PEAK_KB")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"bnlab: error: {path}: "), lines
    assert needle in lines[0] and len(lines[0]) < 2000
    # Beyond the interpreter's own start, the file costs little: far below the gigabytes
    # (and minutes) the unbounded reader took.
    assert _peak(proc.stderr) - baseline_kb < 200_000, (_peak(proc.stderr), baseline_kb)
    assert took < 100
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_fifo_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "c.json"
    os.mkfifo(path)
    proc = _run("train", "--out", str(tmp_path / "run"), "--config", str(path), timeout=60)
    assert proc.returncode == 1 and f"{path}: not a regular file" in proc.stderr


def test_the_bounds_let_a_real_config_through(tmp_path):
    """A YAML config that uses a few aliases and the nesting a run's records have is fine."""
    from bnlab.train import load_config

    path = tmp_path / "c.yaml"
    path.write_text("lr: &rate 0.25\nepochs: 2\nprovenance: {code: {a: {b: *rate}}}\n")
    assert (load_config(path).lr, load_config(path).epochs) == (0.25, 2)
