"""What users notice first: --version, defaults in every help, a fast start, their backend."""

import argparse
import subprocess
import sys

import pytest

import bnlab
from bnlab.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"bnlab {bnlab.__version__}"


def test_version_matches_pyproject():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"$', text, re.M)[1] == bnlab.__version__


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_flag_help_states_its_default(command):
    sub = _subparsers(build_parser())[command]
    formatter = sub.formatter_class("bnlab")
    missing = []
    for action in sub._actions:
        if not action.option_strings or action.required or isinstance(
                action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if "default" not in (formatter._get_help_string(action) or ""):
            missing.append(action.option_strings[0])
    assert not missing, f"bnlab {command}: no default in the help of {missing}"


def test_help_shows_defaults_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE examples per step (default: 256)" in out
    assert "--normalize standardize the input pixels (per channel for colour images) " \
           "(default: off)" in out
    assert "(default: all)" in out and out.count("(default: 0.0)") == 2  # momentum, decay
    # (every flag's default is its TrainConfig field's: tests/train/test_config_settings.py)
    assert "(default: 256) (default" not in out


_LAZY = """
import sys
from bnlab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in sys.modules
               if m.split('.')[0] == 'matplotlib' or (m.startswith('bnlab.studies.')
                                                      and m != 'bnlab.studies.options'))
print('MODULES', heavy)
"""


@pytest.mark.parametrize("argv", [["--help"], ["kernels", "status"], ["study", "--help"]])
def test_start_imports_no_studies_and_no_matplotlib(argv):
    """(bnlab.studies.options, the study command's flags, imports no study.)"""
    proc = subprocess.run([sys.executable, "-c", _LAZY, *argv], capture_output=True,
                          text=True, timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES"))
    heavy = line.removeprefix("MODULES ")
    if argv == ["study", "--help"]:  # the list of questions needs the studies: that is fine
        assert "bnlab.studies.registry" in heavy and "Does BN help" in " ".join(proc.stdout.split())
    else:
        assert heavy == "[]", heavy


def test_study_names_match_the_registry():
    from bnlab.studies import STUDY_NAMES
    from bnlab.studies.registry import STUDIES

    assert list(STUDY_NAMES) == list(STUDIES)


_BACKEND = """
import matplotlib
matplotlib.use("svg")
import bnlab, bnlab.report.figures, bnlab.studies.registry, bnlab.report.compare
from bnlab.report.figures import bars_figure, save
fig = bars_figure(["a", "b"], [0.5, 0.7], [0.0, 0.1], "accuracy")
save(fig, sys.argv[1], "title")
import sys as _s
print(matplotlib.get_backend(), "matplotlib.pyplot" in _s.modules, type(fig).__name__)
"""


def test_importing_and_plotting_leaves_the_backend_alone(tmp_path):
    png = tmp_path / "f.png"
    code = "import sys\n" + _BACKEND
    proc = subprocess.run([sys.executable, "-c", code, str(png)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False", "Figure"]
    assert png.read_bytes().startswith(b"\x89PNG")



def test_help_lists_the_new_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "compare" in out and "--version" in out
