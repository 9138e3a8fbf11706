"""Command-line discipline, for every subcommand: usage errors exit 2 at parse time, Ctrl-C at
any moment exits 130; never a traceback, never a signal.

The bad-flag table is generated from the parser itself: every flag with a value type gets
every bad value of its type, so a new flag is covered the day it is added (and a flag whose
type is not one of the checked types fails ``test_every_typed_flag_uses_a_checked_type``).
Every case runs in its own child process (``forkserver.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab import cli, settings
from bnlab.settings import FlagType
from tests.reliability.conftest import QUICK, RUN_FLAGS, assert_usage_error, copy_of

# A minimal valid command line per subcommand, to which one bad flag is added.
BASE = {"reproduce": ["reproduce"], "train": ["train", "--out", "out"],
        "inspect": ["inspect", "x"], "data": ["data", "info"], "kernels": ["kernels", "status"],
        "study": ["study", "axes"], "report": ["report", "x"], "demo": ["demo"],
        "compare": ["compare", "x"], "evaluate": ["evaluate", "x"],
        "export": ["export", "."]}

# Bad values per checked type; FILE and MISSING become an existing file / an absent path. The
# flags generated from TrainConfig and StudyOptions (bnlab.settings) bring their own: out of
# every range, not of the type, not among the choices, and each field's own examples.
BAD = {
    cli.positive_int: ["0", "-3", "2.5", "x", ""],
    cli.out_dir: ["", " ", "FILE"],
    cli.out_file: ["", " ", "DIR"],
    cli.dir_name: ["", " "],
}


def bad_values(kind: object) -> list[str]:
    if isinstance(kind, FlagType):
        extra = {"data_dir": ["MISSING", "FILE"], "out": ["FILE"]}.get(kind.name, [])
        return settings.bad_values(kind.cls, kind.name) + extra
    return BAD[kind]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli.build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def typed_flags() -> list[tuple[str, str, object]]:
    return [(name, a.option_strings[0], a.type) for name, p in subparsers().items()
            for a in p._actions if a.type is not None and a.option_strings]


FLAG_CASES = [(cmd, flag, value) for cmd, flag, kind in typed_flags()
              for value in bad_values(kind)]


def test_the_table_covers_every_subcommand_and_type():
    assert sorted(BASE) == sorted(subparsers())
    assert {c for c, _, _ in FLAG_CASES} >= {"train", "reproduce", "study", "inspect", "report",
                                            "data", "evaluate", "export"}


def test_every_typed_flag_uses_a_checked_type():
    """A plain `type=float` would let nan and inf through: every typed flag uses a checked one."""
    for cmd, flag, kind in typed_flags():
        assert kind in BAD or isinstance(kind, FlagType), (cmd, flag)


@pytest.mark.parametrize("cmd,flag,value", FLAG_CASES,
                         ids=[f"{c}{f}={v!r}" for c, f, v in FLAG_CASES])
def test_bad_flag_value_is_a_usage_error(bnlab_cli, tmp_path, cmd, flag, value):
    (tmp_path / "FILE").write_text("a file, not a directory\n")
    value = {"FILE": str(tmp_path / "FILE"), "MISSING": str(tmp_path / "missing"),
             "DIR": str(tmp_path)}.get(value, value)
    r = bnlab_cli(*BASE[cmd], flag, value, cwd=tmp_path)
    assert_usage_error(r, f"argument {flag}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing written


@pytest.mark.parametrize("cmd", sorted(BASE))
def test_unknown_flag_is_a_usage_error(bnlab_cli, tmp_path, cmd):
    r = bnlab_cli(*BASE[cmd], "--no-such-flag", cwd=tmp_path)
    assert_usage_error(r, "unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize("action,where", [("info", "MISSING"), ("info", "FILE"),
                                          ("check", "MISSING"), ("check", "FILE")])
def test_data_dir_that_is_not_a_directory_is_a_usage_error(bnlab_cli, tmp_path, action, where):
    (tmp_path / "FILE").write_text("x")
    r = bnlab_cli("data", action, "--data-dir", str(tmp_path / where), cwd=tmp_path)
    assert_usage_error(r, "--data-dir")


@pytest.mark.parametrize("cmd", ["train", "reproduce", "study", "report"])
def test_out_below_a_file_is_one_line(bnlab_cli, pristine, tmp_path, cmd):
    """Not a usage error (the name is fine) but a runtime one: one line, exit 1."""
    (tmp_path / "FILE").write_text("x")
    out, data = tmp_path / "FILE" / "out", pristine["data"]
    argv = {"train": ["train", "--out", out, "--data-dir", data, *RUN_FLAGS],
            "reproduce": ["reproduce", "--out", out, "--data-dir", data, *QUICK],
            "study": ["study", "axes", "--out", out, "--data-dir", data, *QUICK],
            "report": ["report", pristine["study"], "--out", out]}[cmd]
    r = bnlab_cli(*argv, cwd=tmp_path)
    assert r.rc == 1 and r.stderr.count("\n") == 1, r
    assert r.stderr.startswith("bnlab: error: ") and "Not a directory" in r.stderr, r


# ---- Ctrl-C at any moment ---------------------------------------------------------------------

def interrupt_commands(pristine: dict[str, Path], tmp: Path) -> dict[str, list[str]]:
    data = str(pristine["data"])
    return {
        "train": ["train", "--out", tmp / "new", "--data-dir", data, "--epochs", "3",
                  *RUN_FLAGS[2:]],
        "train-resume": ["train", "--out", copy_of(pristine, "unfinished", tmp), "--resume",
                         "--data-dir", data, "--epochs", "2", *RUN_FLAGS[2:]],
        "reproduce": ["reproduce", "--out", tmp / "repro", "--data-dir", data, *QUICK],
        "study": ["study", "axes", "--out", tmp / "study", "--data-dir", data, *QUICK],
        "report": ["report", pristine["study"], "--out", tmp / "report"],
        "inspect": ["inspect", pristine["run"]],
        "data-check": ["data", "check", "--data-dir", data],
    }


NORMAL_RC = {"data-check": 1}  # the synthetic files fail the checksum check: its verdict
POINTS = [0.0, 0.25, 0.5, 0.75, 1.0]  # where in the command's bnlab calls Ctrl-C comes
INTERRUPT_CASES = [(c, f) for c in ("train", "train-resume", "reproduce", "study", "report",
                                    "inspect", "data-check") for f in POINTS]
_calls: dict[str, int] = {}


@pytest.mark.parametrize("command,point", INTERRUPT_CASES,
                         ids=[f"{c}-at-{f:.0%}" for c, f in INTERRUPT_CASES])
def test_ctrl_c_at_every_stage_exits_130_without_traceback(bnlab_cli, pristine, tmp_path,
                                                           command, point):
    """Ctrl-C at the first, a quarter, half, three quarters and the last of the command's calls
    of bnlab functions: exit 130, one goodbye line, no lock or temporary file left, and a
    run interrupted at any stage can be started again."""
    if command not in _calls:  # an uninterrupted run, counting its calls
        normal = bnlab_cli(*interrupt_commands(pristine, tmp_path / "count")[command],
                           count_calls=True, cwd=tmp_path)
        assert normal.rc == NORMAL_RC.get(command, 0) and normal.calls, normal
        _calls[command] = normal.calls
    argv = interrupt_commands(pristine, tmp_path)[command]
    at = max(2, round(point * _calls[command]))  # call 1: the entry point itself
    r = bnlab_cli(*argv, interrupt_at_call=at, cwd=tmp_path)
    assert r.rc == 130, (at, _calls[command], str(r))
    assert "Traceback" not in r.stderr, r
    assert r.stderr.splitlines()[-1] == "bnlab: interrupted (a run resumes with --resume)", r
    assert not [p for p in tmp_path.rglob("*") if p.name == ".lock" or ".tmp-" in p.name
                or (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if command in ("train", "train-resume"):  # whatever the stage, it can be run again
        again = bnlab_cli(*argv, "--resume", cwd=tmp_path)
        assert again.rc == 0, again


def test_ctrl_c_in_training_resumes_to_the_same_numbers(bnlab_cli, pristine, tmp_path):
    args = ["--data-dir", str(pristine["data"]), "--epochs", "6", *RUN_FLAGS[2:]]
    whole = bnlab_cli("train", "--out", tmp_path / "whole", *args)
    assert whole.rc == 0, whole
    cut = tmp_path / "cut"
    r = bnlab_cli("train", "--out", cut, *args, interrupt_when=cut / "checkpoint.pt")
    assert r.rc == 130 and "Traceback" not in r.stderr, r
    assert not (cut / "DONE").exists() and not (cut / ".lock").exists()
    resumed = bnlab_cli("train", "--out", cut, "--resume", *args)
    assert resumed.rc == 0, resumed
    from bnlab.train import Run

    def numbers(path):
        return [{k: v for k, v in m.items() if k.endswith(("loss", "acc"))}
                for m in Run(path).metrics]

    assert numbers(cut) == numbers(tmp_path / "whole")


# Startup: a real `python -m bnlab` whose import of MODULE is hit by Ctrl-C (the process sends
# itself SIGINT when the import begins), so the moment is exact, not a race.
INTERRUPT_AT_IMPORT = """
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal (see forkserver)
target = sys.argv.pop(1)
class CtrlC:
    def find_spec(self, name, path=None, target_=None):
        if name == target:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
sys.argv[0] = "bnlab"
runpy.run_module("bnlab", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", ["bnlab.cli", "argparse", "torch", "bnlab.data",
                                    "bnlab.train.loop", "torch._dynamo"])
def test_ctrl_c_during_startup_imports(pristine, tmp_path, module):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", INTERRUPT_AT_IMPORT, module, "train", "--out",
                        str(out), "--data-dir", str(pristine["data"]), *RUN_FLAGS],
                       capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert r.returncode == 130, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "interrupted" in r.stderr, r.stderr[-3000:]
    assert not out.exists()  # interrupted before training: nothing left to block a retry


def test_real_process_is_the_same_as_the_fork_runner(pristine, tmp_path):
    """One usage error and one runtime error through a plain `python -m bnlab`."""
    usage = subprocess.run([sys.executable, "-m", "bnlab", "train", "--out", "x", "--lr", "inf"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert usage.returncode == 2 and "argument --lr" in usage.stderr, usage.stderr
    (tmp_path / "junk.pt").write_bytes(b"junk")
    runtime = subprocess.run([sys.executable, "-m", "bnlab", "inspect", "junk.pt"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert runtime.returncode == 1 and runtime.stderr.count("\n") == 1, runtime.stderr
    assert runtime.stderr.startswith("bnlab: error: junk.pt: not a")
