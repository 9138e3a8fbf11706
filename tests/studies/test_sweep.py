"""Studies on Ray (``bnlab.studies.sweep``): a real two-node cluster on this machine.

The module's cluster is two ``ray start --block`` processes (a head and a second node, one CPU
each, on 127.0.0.1, free ports, a token of its own, a 200 MB object store), stopped however the
tests end. The study is the quickest one (momentum, quick, two seeds: six runs) on a tiny
dataset (``sweep_helpers.tiny_data``), one thread per run. The oracle is the same study run in
this process (the in-process path): every run's metrics (timings aside), config and weights must
be equal exactly, whichever path and node trained it, and after a worker is killed mid-study.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import bnlab
from bnlab import cli
from bnlab.errors import RunDirError, UserError
from bnlab.report.html import provenance_line
from bnlab.studies.base import BAR, run_study
from bnlab.studies.registry import get_study
from bnlab.studies.sweep import Sweep, read_tree, write_tree
from bnlab.train import Run
from bnlab.train.progress import Progress
from bnlab.train.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(bnlab.__file__).resolve().parents[1]
DATA = "tests.studies.sweep_helpers:tiny_data"
STUDY = ["study", "momentum", "--quick", "--seeds", "2", "--threads", "1", "--dataset", DATA]
TIMES = {"examples_per_sec", "epoch_time", "wall_time"}  # where and when, not what


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(ROOT)]),
           "BNLAB_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(study: Path) -> dict[str, tuple]:
    """Per run: its metrics without timings, its config without provenance, its weights."""
    out = {}
    for path in sorted((study / "runs").iterdir()):
        run = Run(path)
        metrics = [{k: v for k, v in row.items() if k not in TIMES} for row in run.metrics]
        config = {k: v for k, v in json.loads((path / "config.json").read_text()).items()
                  if k != "provenance"}
        weights = torch.load(path / "checkpoint.pt", weights_only=True)["model"]
        out[path.name] = (metrics, config, weights)
    return out


def assert_same_records(a: Path, b: Path) -> None:
    ra, rb = _records(a), _records(b)
    assert sorted(ra) == sorted(rb) and len(ra) == 6
    for name in ra:
        (ma, ca, wa), (mb, cb, wb) = ra[name], rb[name]
        assert ma == mb, name  # every per-epoch number, exactly
        assert ca == cb, name
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    assert (a / "table.csv").read_bytes() == (b / "table.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study trained in this process: the oracle."""
    out = tmp_path_factory.mktemp("in-process")
    run_study(get_study("momentum"), out, quick=True, seeds=2, threads=1, dataset=DATA,
              log=lambda m: None, progress=False)
    return out


# ---- without Ray -------------------------------------------------------------------------------

def test_workers_flag_parses_counts_and_auto():
    parse = cli.build_parser().parse_args
    assert parse(["study", "axes"]).workers == 1 and parse(["study", "axes"]).debug is False
    assert parse(["study", "axes", "--workers", "3"]).workers == 3
    assert parse(["reproduce", "--workers", "auto", "--address", "h:1"]).workers is None
    assert parse(["reproduce", "--address", "h:1"]).address == "h:1"
    with pytest.raises(SystemExit) as e:
        parse(["study", "axes", "--workers", "0"])
    assert e.value.code == 2


def test_the_bar_counts_runs_and_says_how_many_are_running(monkeypatch):
    monkeypatch.setenv("BNLAB_PROGRESS", "1")
    stream = io.StringIO()
    bar = Progress(50, "[lr]", stream=stream, unit="run", bar_format=BAR)
    bar.status("2 running")
    bar.update(17)
    bar.close()
    assert "[lr] run 17 of 50, 2 running, ETA" in stream.getvalue()


def test_sweep_refuses_bad_settings():
    with pytest.raises(UserError, match="workers must be at least 1"):
        Sweep(workers=0)
    with pytest.raises(UserError, match="retries must be 0 or more"):
        Sweep(retries=-1)
    assert Sweep().in_process and not Sweep(workers=2).in_process
    assert not Sweep(address="10.0.0.5:6379").in_process


def test_run_files_round_trip_and_stay_inside(tmp_path):
    files = {"config.json": b"{}", "DONE": b"{}", "tensorboard/events": b"\x00\x01"}
    write_tree(tmp_path / "run", files)
    (tmp_path / "run" / ".lock").write_text("1\n")  # neither the lock nor temporaries travel
    (tmp_path / "run" / ".DONE.x1y2z3.tmp").write_text("torn")  # (bnlab.files' naming)
    assert read_tree(tmp_path / "run") == files
    with pytest.raises(UserError, match="would land outside"):
        write_tree(tmp_path / "other", {"../escape": b"x"})
    assert not (tmp_path / "escape").exists()


def test_an_address_where_nothing_listens_is_one_line_at_once(tmp_path):
    out = tmp_path / "nowhere"
    port = _free_port()  # closed again: nothing listens there
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"cannot join the Ray cluster at 127.0.0.1:{port}: "
                       r"nothing answers there .*ray start --head"):
        run_study(get_study("momentum"), out, quick=True, threads=1, dataset=DATA,
                  sweep=Sweep(address=f"127.0.0.1:{port}"), log=lambda m: None, progress=False)
    assert time.monotonic() - start < 30 and not out.exists()


def test_a_second_study_on_one_directory_is_refused(tmp_path):
    out = tmp_path / "study"
    with RunDir(out).lock():
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(RunDirError, match="is in use"):
            run_study(get_study("momentum"), out, quick=True, threads=1, dataset=DATA,
                      log=lambda m: None, progress=False)
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_in_process_path_reuses_finished_runs_without_ray(reference, tmp_path):
    """--workers 1 without an address: no Ray import; a finished study is all reused."""
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    before = {p: p.read_bytes() for p in out.glob("runs/*/*")}
    code = (f"import sys; from bnlab.cli import main; "
            f"rc = main({[*STUDY, '--workers', '1', '--out', str(out)]!r}); "
            f"assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("reused (finished earlier)") == 6
    assert {p: p.read_bytes() for p in out.glob("runs/*/*")} == before
    assert json.loads((out / "study.json").read_text())["executor"]["executor"] == "in-process"


@pytest.mark.slow
def test_two_local_workers_equal_the_in_process_study(reference, tmp_path):
    """--workers 2 without an address: a private local Ray instance (what make docs uses)."""
    out = tmp_path / "local"
    done = subprocess.run([sys.executable, "-m", "bnlab", *STUDY, "--workers", "2", "--out",
                           str(out)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_records(reference, out)
    where = json.loads((out / "study.json").read_text())["executor"]
    assert (where["executor"], where["cluster"], where["workers"]) == ("ray", "local", 2)


# ---- a two-node Ray cluster ----------------------------------------------------------------------

RAY = str(Path(sys.executable).with_name("ray"))  # the venv's, whatever PATH says


@pytest.fixture(scope="module")
def cluster() -> dict:
    """`ray start --head` and a second `ray start --address` node; stopped at the end."""
    temp = tempfile.mkdtemp(prefix="bnray-")  # short: Ray's socket paths live in it
    port = _free_port()
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
              "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    logs = [open(Path(temp) / f"{n}.log", "w") for n in ("head", "node")]  # noqa: SIM115
    try:
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
             "--ray-client-server-port", str(_free_port()), "--temp-dir", temp,
             "--dashboard-agent-listen-port", str(_free_port()), *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT))
        _wait(lambda: _listening(port), procs[0], logs[0].name, "the head node")
        procs.append(subprocess.Popen(
            [RAY, "start", "--address", f"127.0.0.1:{port}",
             "--dashboard-agent-listen-port", str(_free_port()), *common],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        _wait(lambda: "Ray runtime started" in Path(logs[1].name).read_text(), procs[1],
              logs[1].name, "the second node")
        yield {"address": f"127.0.0.1:{port}", "env": env, "pids": [p.pid for p in procs]}
    finally:
        for p in reversed(procs):  # `ray start --block` stops its node's processes on SIGTERM
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait(ready, proc: subprocess.Popen, log: str, what: str, limit: float = 180) -> None:
    end = time.monotonic() + limit
    while not ready():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{what} did not start: {Path(log).read_text()[-2000:]}")
        time.sleep(0.2)


def _study(cluster: dict, out: Path) -> list[str]:
    return [sys.executable, "-m", "bnlab", *STUDY, "--workers", "2", "--address",
            cluster["address"], "--out", str(out)]


def test_a_study_on_the_cluster_equals_the_in_process_one(cluster, reference, tmp_path):
    out = tmp_path / "on-ray"
    done = subprocess.run(_study(cluster, out), env=cluster["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_records(reference, out)
    # the terminal: one line per finished run, the verdict, the files; nothing from Ray
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert sum("Ray node" in line for line in lines) == 6
    assert all(line.startswith(("[momentum] ", "study written to")) for line in lines), lines
    where = json.loads((out / "study.json").read_text())["executor"]
    assert where["executor"] == "ray" and where["cluster"] == cluster["address"]
    assert where["workers"] == 2 and where["threads"] == 1
    nodes = {text.rsplit("Ray node ", 1)[1] for text in where["ran_on"].values()}
    assert len(where["ran_on"]) == 6 and len(nodes) == 2  # both nodes trained runs
    line = provenance_line(json.loads((out / "study.json").read_text()))
    assert f"(6 runs, torch {torch.__version__}), on Ray (2 workers of 1 thread(s), the " \
           f"cluster at {cluster['address']}); analysed at" in line


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        seen.add(pid)
    return seen


def _running_task(owners: list[int]) -> int | None:
    """A worker of this cluster that is training a run (its title: ray::bnlab_run)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::bnlab_run") and _ancestors(int(proc.name)) & set(owners):
            return int(proc.name)
    return None


def test_a_killed_worker_is_retried_and_finished_runs_are_reused(cluster, reference, tmp_path):
    out = tmp_path / "killed"
    runs = out / "runs"
    runs.mkdir(parents=True)
    shutil.copytree(reference / "runs" / "m0.1-s0", runs / "m0.1-s0")  # finished earlier
    shutil.copytree(reference / "runs" / "m0.9-s1", runs / "m0.9-s1")  # interrupted
    (runs / "m0.9-s1" / "DONE").unlink()
    finished = (runs / "m0.1-s0" / "DONE").read_bytes()
    driver = subprocess.Popen(_study(cluster, out), env=cluster["env"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        while victim is None and driver.poll() is None:
            victim = _running_task(cluster["pids"])
            time.sleep(0.05)
        assert victim is not None, "no run was seen training"
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, stderr
    assert_same_records(reference, out)
    assert (runs / "m0.1-s0" / "DONE").read_bytes() == finished
    assert "momentum 0.1, seed 0: reused (finished earlier)" in stdout
    assert stdout.count("Ray node") == 5  # the five others ran, the killed one again
    lines = (stdout + stderr).strip().splitlines()  # and Ray said nothing about the retry
    assert all(line.startswith(("[momentum] ", "study written to")) for line in lines), lines


def test_a_worker_that_always_dies_stops_the_study_with_one_line(cluster, tmp_path):
    out = tmp_path / "dying"
    code = ("import sys; from tests.studies.sweep_helpers import run_dying; "
            f"sys.exit(run_dying({str(out)!r}, {cluster['address']!r}))")
    done = subprocess.run([sys.executable, "-c", code], env=cluster["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    line = (done.stdout + done.stderr).strip()
    assert "\n" not in line, line
    assert line.startswith(f"run dying, seed 0 ({out / 'runs' / 'dying-s0'}) failed: its "
                           f"worker died 2 time(s)"), line
    assert not (out / "runs" / "dying-s0").exists()  # nothing half-written
