"""A GPU host set up by the README: which torch `make setup` installs, that switching builds
reinstalls torch, that `make test` keeps the CUDA tests, and that benchmarks/gpu.sh refuses
cleanly without a device and keeps every finished figure when a run is cut short.

No network, no GPU: ``nvidia-smi`` and the interpreters are small fake executables, so every
case (driver CUDA 12.x and 13.x, a driver too old, an nvidia-smi that fails, none at all) runs
on any machine, a GPU host included, with a known answer.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "torch_pip.sh"
SH = shutil.which("sh") or "/bin/sh"
INDEX = "https://download.pytorch.org/whl"


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"the Makefile sets no {name}"
    return match.group(1)


VERSION = makefile_var("TORCH_VERSION")


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def header(cuda: str) -> str:
    """The first lines nvidia-smi prints, for a driver that supports CUDA `cuda`."""
    return ("+" + "-" * 89 + "+\n"
            f"| NVIDIA-SMI 580.65.06              Driver Version: 580.65.06      "
            f"CUDA Version: {cuda}     |\n"
            "|-----------------------------------------+------------------------+\n")


def fake_bin(tmp_path: Path, smi: str | None) -> Path:
    """A PATH of one folder: `sed` (all the script needs) and, unless `smi` is None, an
    nvidia-smi that prints `smi` (or fails, for "fails") and records that it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sed").symlink_to(shutil.which("sed"))
    if smi == "fails":
        executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho asked >> \"$0.log\"\n"
                   "echo \"NVIDIA-SMI has failed because it couldn't communicate with the "
                   "NVIDIA driver.\"\nexit 9\n")
    elif smi is not None:
        (tmp_path / "header").write_text(smi)
        executable(bin_dir / "nvidia-smi", "#!/bin/sh\necho asked >> \"$0.log\"\n"
                   f"while IFS= read -r l; do printf '%s\\n' \"$l\"; done < {tmp_path}/header\n")
    return bin_dir


def choose(tmp_path: Path, torch_mode: str, smi: str | None,
           version: str = VERSION) -> subprocess.CompletedProcess:
    env = {"PATH": str(fake_bin(tmp_path, smi)), "HOME": str(tmp_path)}
    return subprocess.run([SH, str(SCRIPT), torch_mode, version], env=env, capture_output=True,
                          text=True, timeout=30)


def cuda_pin(tag: str) -> str:
    return f"torch=={VERSION}+{tag} --index-url {INDEX}/{tag}"


@pytest.mark.parametrize(("driver", "tag"), [
    ("12.8", "cu128"), ("12.9", "cu128"),  # the newest wheel the driver supports
    ("13.0", "cu130"), ("13.2", "cu130"), ("14.1", "cu130"),
    ("12.2", "cu126"),  # older than every 12.x wheel: the oldest, by minor-version compatibility
])
@pytest.mark.parametrize("mode", ["auto", "cuda"])
def test_a_driver_gets_the_cuda_wheel_it_runs(tmp_path, driver, tag, mode):
    done = choose(tmp_path, mode, header(driver))
    assert (done.returncode, done.stdout, done.stderr) == (0, cuda_pin(tag) + "\n", "")


def test_no_nvidia_smi_keeps_the_cpu_build_as_today(tmp_path):
    """The CPU machine's path: the same `pip install torch==VERSION` as before, no note."""
    done = choose(tmp_path, "auto", None)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"torch=={VERSION}\n", "")


@pytest.mark.parametrize(("smi", "why"), [("fails", "fails"), (header("11.4"), "CUDA 11.4")])
def test_auto_falls_back_to_cpu_with_a_note(tmp_path, smi, why):
    done = choose(tmp_path, "auto", smi)
    assert (done.returncode, done.stdout) == (0, f"torch=={VERSION}\n")
    assert len(done.stderr.splitlines()) == 1 and why in done.stderr
    assert "CPU build" in done.stderr


@pytest.mark.parametrize(("smi", "why"), [(None, "missing"), ("fails", "fails"),
                                          (header("11.4"), "CUDA 11.4")])
def test_torch_cuda_refuses_where_no_wheel_can_run(tmp_path, smi, why):
    done = choose(tmp_path, "cuda", smi)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and why in done.stderr
    assert "TORCH=cpu" in done.stderr  # the fix


@pytest.mark.parametrize(("mode", "expected"), [("cpu", f"torch=={VERSION}"),
                                                ("cu126", cuda_pin("cu126"))])
def test_an_explicit_build_does_not_ask_the_driver(tmp_path, mode, expected):
    done = choose(tmp_path, mode, header("13.0"))
    assert (done.returncode, done.stdout, done.stderr) == (0, expected + "\n", "")
    assert not (tmp_path / "bin" / "nvidia-smi.log").exists()


@pytest.mark.parametrize(("mode", "version", "named"), [
    ("gpu", VERSION, "TORCH must be"), ("cuda12", VERSION, "TORCH must be"),
    ("cpu", "latest", "VERSION must be")])
def test_bad_settings_are_one_line(tmp_path, mode, version, named):
    done = choose(tmp_path, mode, None, version)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and named in done.stderr


def test_the_pin_is_the_torch_the_suite_runs_on():
    """The Makefile's one version serves both builds, and it is the torch running this test."""
    assert torch.__version__.split("+")[0] == VERSION
    assert not re.findall(r"torch==\d", (ROOT / "Makefile").read_text())  # no second pin


FAKE_PYTHON = """#!/bin/sh
# A fake interpreter: `-m venv DIR` makes DIR/bin/python (this file) and DIR/bin/bnlab;
# `-m pip` keeps the installed torch version in $FAKE_STATE; every call goes to $FAKE_LOG.
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"; cp "$0" "$3/bin/python"
  printf '#!/bin/sh\\necho "bnlab $*" >> "$FAKE_LOG"\\n' > "$3/bin/bnlab"; chmod +x "$3/bin/bnlab"
  exit 0
fi
case "$3" in
  show) if [ -s "$FAKE_STATE" ]; then echo "Version: $(cat "$FAKE_STATE")"; fi ;;
  uninstall) : > "$FAKE_STATE" ;;
  install) for a in "$@"; do case $a in
      torch==*+*) echo "${a#torch==}" > "$FAKE_STATE" ;;
      torch==*) [ -s "$FAKE_STATE" ] || echo "${a#torch==}+cpu" > "$FAKE_STATE" ;;
    esac; done ;;
esac
"""


def test_setup_reinstalls_torch_exactly_when_the_build_changes(tmp_path):
    """`make setup` on a copy of the Makefile with a fake interpreter: the first setup installs,
    a repeat does nothing, a switch to CUDA installs the CUDA pin, a switch back to the CPU
    removes the CUDA build first (its version would satisfy the CPU pin), and the stamp names
    the build the venv holds."""
    work = tmp_path / "repo"
    (work / "src/bnlab/norm/kernels/csrc").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", work)
    shutil.copytree(ROOT / "tools", work / "tools")
    (work / "pyproject.toml").touch()
    (work / "src/bnlab/norm/kernels/csrc/batch_norm_cpu.cpp").touch()
    python = executable(tmp_path / "python", FAKE_PYTHON)
    log, state = tmp_path / "log", tmp_path / "state"
    smi = fake_bin(tmp_path, header("12.8"))
    env = {**os.environ, "FAKE_LOG": str(log), "FAKE_STATE": str(state),
           "PATH": f"{smi}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MAKEFLAGS", None)

    def setup(mode: str) -> list[str]:
        log.write_text("")
        subprocess.run(["make", "-s", "setup", f"TORCH={mode}", f"PYTHON={python}"], cwd=work,
                       env=env, check=True, capture_output=True, timeout=60)
        return log.read_text().splitlines()

    cpu_install = f"-m pip install --quiet torch=={VERSION}"
    calls = setup("cpu")
    assert cpu_install in calls and "bnlab kernels build" in calls
    assert state.read_text().strip() == f"{VERSION}+cpu"
    assert (work / ".venv/.bnlab-installed").read_text().strip() == f"torch=={VERSION}"
    assert setup("cpu") == []  # nothing changed: nothing runs

    calls = setup("auto")  # the fake driver says CUDA 12.8
    assert f"-m pip install --quiet {cuda_pin('cu128')}" in calls
    assert not any("uninstall" in c for c in calls)  # pip replaces a CPU build by itself
    assert state.read_text().strip() == f"{VERSION}+cu128"
    assert (work / ".venv/.bnlab-installed").read_text().strip() == cuda_pin("cu128")
    assert setup("cu128") == []  # the same build, asked for by name

    calls = setup("cpu")
    assert calls.index("-m pip uninstall --quiet -y torch") < calls.index(cpu_install)
    assert state.read_text().strip() == f"{VERSION}+cpu"


def test_make_test_keeps_the_cuda_tests():
    """The marker expression `make test` gives pytest selects every CUDA test (they run where a
    device is present and are skipped, with the reason, elsewhere): pytest's own expression
    evaluator, fed each CUDA test's marker names (the module's and the function's)."""
    from _pytest.mark.expression import Expression

    from tests.norm import test_cuda

    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "the Makefile has no test target"
    runs = [line for line in recipe.group(1).splitlines() if "-m pytest" in line]
    assert runs, "`make test` runs no pytest"
    module_marks = {m.name for m in test_cuda.pytestmark} if isinstance(
        test_cuda.pytestmark, list) else {test_cuda.pytestmark.name}
    tests = {name: module_marks | {m.name for m in getattr(fn, "pytestmark", [])}
             for name, fn in vars(test_cuda).items() if name.startswith("test_")}
    assert len(tests) >= 4 and all("cuda" in marks for marks in tests.values())
    for line in runs:
        marker = re.search(r"-m\s+\"([^\"]*)\"", line)
        if marker is None:
            continue  # no marker expression: every test is selected
        expression = Expression.compile(marker.group(1))
        dropped = [name for name, marks in tests.items()
                   if not expression.evaluate(lambda mark, /, marks=marks, **_: mark in marks)]
        assert not dropped, f"`{line.strip()}` deselects the CUDA tests {dropped}"
    # The evaluator itself: the expression that would drop them does.
    assert not Expression.compile("not cuda").evaluate(lambda mark, /, **_: mark == "cuda")


def run_gpu_sh(tmp_path: Path, python: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SH, "benchmarks/gpu.sh", str(tmp_path / "out")], cwd=ROOT,
                          env={**os.environ, "PY": python, **env}, capture_output=True,
                          text=True, timeout=120)


def test_gpu_sh_refuses_without_a_device_in_one_line(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this is the CPU machine's answer everywhere.
    done = run_gpu_sh(tmp_path, sys.executable, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and "sees no CUDA device" in done.stdout
    assert "make setup" in done.stdout and not (tmp_path / "out").exists()
    done = run_gpu_sh(tmp_path, str(tmp_path / "missing" / "python"))
    assert done.returncode == 1 and done.stdout.count("\n") == 1
    assert "no Python at" in done.stdout
    no_torch = executable(tmp_path / "python", "#!/bin/sh\necho 'Traceback (most recent call "
                          "last):' >&2\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\n"
                          "exit 1\n")
    done = run_gpu_sh(tmp_path, str(no_torch))
    assert done.returncode == 1 and done.stdout.count("\n") == 1
    assert "cannot run torch (ModuleNotFoundError" in done.stdout and "make setup" in done.stdout
    assert not (tmp_path / "out").exists()


FAKE_CUDA_PYTHON = """#!/bin/sh
# Says CUDA is there (the check prints nothing), echoes each step, and hangs in bench_bn.py.
case "$*" in *is_available*) exit 0 ;; *bench_bn.py*) echo "half a table"; sleep 30 ;; esac
echo "ran $*"
"""


def test_gpu_sh_keeps_every_finished_figure_when_a_step_is_cut_short(tmp_path):
    python = executable(tmp_path / "python", FAKE_CUDA_PYTHON)
    done = run_gpu_sh(tmp_path, str(python), STEP_LIMIT="2")
    out = tmp_path / "out"
    assert done.returncode == 1  # a step did not finish
    steps = dict(re.findall(r"^(\w+) rc=(\d+)", (out / "steps.txt").read_text(), re.M))
    assert steps == {"device": "0", "tests_cuda": "0", "bench_bn": "124", "lenet_gpu": "0",
                     "resnet_gpu": "0"}
    assert "-m pytest -q -m cuda tests" in (out / "tests_cuda.txt").read_text()
    assert "bench_gpu_lenet.py" in (out / "lenet_gpu.txt").read_text()
    assert "bench_resnet.py --device cuda" in (out / "resnet_gpu.txt").read_text()
    cut = (out / "bench_bn.txt").read_text()
    assert cut.startswith("half a table") and "incomplete" in cut
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize("script", ["bench_bn.py", "bench_resnet.py", "bench_gpu_lenet.py"])
def test_gpu_benchmarks_load_and_refuse_cuda_here(script, monkeypatch, capsys):
    """gpu.sh's Python parts: each prints its help, and with --device cuda where torch sees no
    device (forced, so a GPU host answers the same) it stops with one line."""
    import runpy

    path = str(ROOT / "benchmarks" / script)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(path, run_name="__main__")
    assert stop.value.code == 0 and "--device" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", [script, "--device", "cuda"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(path, run_name="__main__")
    assert isinstance(stop.value.code, str) and "\n" not in stop.value.code
    assert "no CUDA device" in stop.value.code


@pytest.mark.parametrize(("clock_mhz", "bus_bits", "datasheet_gbs"), [
    (2619, 5120, 3350),  # H100 SXM5 80 GB (HBM3): 3.35 TB/s
    (1593, 5120, 2039),  # A100 80 GB SXM (HBM2e): 2,039 GB/s
    (1215, 5120, 1555),  # A100 40 GB (HBM2): 1,555 GB/s
])
def test_card_peak_bandwidth_from_the_device_properties(clock_mhz, bus_bits, datasheet_gbs):
    """bench_bn.py's peak: 2 x memory clock x bus width, within 0.2% of the datasheet figure."""
    import runpy

    peak_gbs = runpy.run_path(str(ROOT / "benchmarks" / "bench_bn.py"))["peak_gbs"]
    props = SimpleNamespace(memory_clock_rate=clock_mhz * 1000, memory_bus_width=bus_bits)
    assert peak_gbs(props) == pytest.approx(datasheet_gbs, rel=2e-3)
    assert peak_gbs(SimpleNamespace(memory_clock_rate=0, memory_bus_width=bus_bits)) is None
    assert peak_gbs(SimpleNamespace()) is None


def test_the_readme_gpu_host_commands_exist():
    """The README's GPU host block, as written: each make target is one the Makefile has (a dry
    run succeeds) and each script is in the repository; tools/torch_pip.sh is named there."""
    from tests.readme_blocks import README, commands

    ran = commands("gpu-host")
    assert [c[0] for c in ran] == ["make", "make", "sh"]
    for command in ran:
        if command[0] == "make":
            subprocess.run(["make", "-n", *command[1:]], cwd=ROOT, check=True,
                           capture_output=True, timeout=60)
        else:
            assert (ROOT / command[1]).is_file(), command
    assert "`tools/torch_pip.sh`" in README.read_text()
