"""Untrusted files, for every subcommand that reads them: exit 1 with one line that names the
file and the fix, the directory left byte-identical, no traceback, and no code run.

One table: (command, file, damage). Damage is generic per kind of file (any JSON file can be
garbage, empty, truncated, not UTF-8, an array, nested 100 000 deep or a directory; any
checkpoint can also be a malicious pickle), plus what is specific to the file (a config with
values of the wrong type, a study.json whose names lead outside its directory). Where a file is
derived from another (metrics.jsonl from checkpoint.pt), resuming repairs it instead: exit 0.
Every command line runs in its own child process (``forkserver.py``).
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bnlab.data.idx import encode_idx
from bnlab.train import Run
from tests.reliability.conftest import (
    QUICK,
    RUN_FLAGS,
    assert_one_line_error,
    copy_of,
    snapshot,
)

MARKER = "PAYLOAD-RAN"  # the malicious pickles create this file in the working directory


class Payload:
    """Unpickling this runs code: it creates MARKER in the current directory."""

    def __reduce__(self):
        return exec, (f"open({MARKER!r}, 'w').close()",)


def _checkpoint_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_checkpoint(path: Path, change: Callable[[dict], None]) -> None:
    state = torch.load(path, weights_only=True)
    change(state)
    path.write_bytes(_checkpoint_bytes(state))


def _replace_by_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


# name -> how to damage a file in place
DAMAGE: dict[str, Callable[[Path], None]] = {
    "garbage": lambda p: p.write_bytes(bytes(range(256)) * 4),
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "not-utf8": lambda p: p.write_bytes(b'{"name": "\xff\xfe"}'),
    "array": lambda p: p.write_text("[1, 2, 3]"),
    "deep": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    "directory": _replace_by_directory,
    "missing": lambda p: p.unlink(),
    # config.json
    "wrong-types": lambda p: _edit_json(p, lambda d: d.update(epochs="ten", lr=[1])),
    "unknown-field": lambda p: _edit_json(p, lambda d: d.update(evil=1)),
    "lr-infinite": lambda p: _edit_json(p, lambda d: d.update(lr=float("inf"))),
    # checkpoint.pt
    "text": lambda p: p.write_text("hello\n"),
    "malicious-torch": lambda p: p.write_bytes(_checkpoint_bytes({"model": Payload()})),
    "malicious-pickle": lambda p: p.write_bytes(pickle.dumps({"model": Payload()}, protocol=2)),
    "a-list": lambda p: p.write_bytes(_checkpoint_bytes([1, torch.ones(2)])),
    "other-model": lambda p: _edit_checkpoint(p, lambda s: s.update(
        model=torch.nn.Linear(3, 2).state_dict())),
    "no-rng": lambda p: _edit_checkpoint(p, lambda s: s.pop("rng")),
    "bad-metrics": lambda p: _edit_checkpoint(p, lambda s: s.update(metrics=[{"epoch": 1}])),
    # metrics.jsonl
    "torn-line": lambda p: p.write_text(p.read_text()[:-20]),
    "missing-key": lambda p: p.write_text(json.dumps({"epoch": 1, "train_loss": 1.0}) + "\n"),
    "string-value": lambda p: p.write_text(p.read_text().replace('"test_acc": ',
                                                                 '"test_acc": "high", "x": ')),
    # study.json
    "no-arms": lambda p: _edit_json(p, lambda d: d.pop("arms")),
    "runs-not-a-list": lambda p: _edit_json(p, lambda d: d["arms"][0].update(runs=7)),
    "run-outside": lambda p: _edit_json(p, lambda d: d["arms"][0].update(runs=["../../.."])),
    "run-absolute": lambda p: _edit_json(p, lambda d: d["arms"][0].update(runs=["/etc"])),
    "name-outside": lambda p: _edit_json(p, lambda d: d.update(name="../../escaped")),
    "name-not-a-string": lambda p: _edit_json(p, lambda d: d.update(name=["x"])),
}

JSON = ["garbage", "empty", "truncated", "not-utf8", "array", "deep", "directory"]
CHECKPOINT = ["garbage", "empty", "truncated", "text", "malicious-torch", "malicious-pickle",
              "a-list", "no-rng", "bad-metrics", "directory"]
RUN = "runs/bnlab-s0"  # a run of the pristine study


def command(name: str, d: Path, data: Path, tmp: Path) -> list[object]:
    """The command line `name` on the damaged directory `d`."""
    return {
        "train-resume": ["train", "--out", d, "--resume", "--data-dir", data, "--epochs", "2",
                         *RUN_FLAGS[2:]],
        "inspect": ["inspect", d],
        "reproduce": ["reproduce", "--out", d, "--data-dir", data, *QUICK],
        "study": ["study", "axes", "--out", d, "--data-dir", data, *QUICK],
        "study-analyze": ["study", "axes", "--out", d, "--analyze-only", *QUICK],
        "report": ["report", d, "--out", tmp / "report"],
    }[name]


PRISTINE = {"train-resume": "unfinished", "inspect": "run", "reproduce": "reproduce",
            "study": "study", "study-analyze": "study", "report": "study"}

# (command, file, damages, exit status); 0 = the file is repaired from the checkpoint.
TABLE = [
    ("train-resume", "config.json",
     [*JSON, "missing", "wrong-types", "unknown-field", "lr-infinite"], 1),
    ("train-resume", "checkpoint.pt", [*CHECKPOINT, "other-model"], 1),
    ("train-resume", "metrics.jsonl", ["garbage", "torn-line", "missing-key"], 0),
    ("inspect", "checkpoint.pt",
     ["garbage", "empty", "truncated", "text", "malicious-torch", "malicious-pickle", "a-list",
      "directory"], 1),
    ("reproduce", "bnlab-bn/config.json", ["garbage", "deep", "wrong-types"], 1),
    ("reproduce", "bnlab-bn/checkpoint.pt", ["truncated", "malicious-torch", "a-list"], 1),
    ("reproduce", "torch-bn/DONE", ["garbage", "array"], 1),
    ("reproduce", "bnlab-bn/metrics.jsonl", ["garbage", "string-value"], 0),
    ("study", f"{RUN}/config.json", ["garbage", "unknown-field"], 1),
    ("study", f"{RUN}/checkpoint.pt", ["malicious-pickle", "bad-metrics"], 1),
    ("study", f"{RUN}/metrics.jsonl", ["torn-line"], 0),
    ("study-analyze", f"{RUN}/metrics.jsonl", ["garbage", "missing-key", "string-value", "empty"],
     1),
    ("report", "study.json",
     [*JSON, "no-arms", "runs-not-a-list", "run-outside", "run-absolute", "name-outside",
      "name-not-a-string"], 1),
    ("report", "verdict", ["not-utf8", "directory", "missing"], 1),
    ("report", "table.md", ["garbage", "missing"], 1),
    ("report", f"{RUN}/config.json", ["garbage", "deep", "array"], 1),
]
CASES = [(cmd, f, dmg, rc) for cmd, f, damages, rc in TABLE for dmg in damages]


@pytest.mark.parametrize("cmd,name,damage,rc", CASES,
                         ids=[f"{c}:{f}:{d}" for c, f, d, _ in CASES])
def test_damaged_file(bnlab_cli, pristine, tmp_path, cmd, name, damage, rc):
    d = copy_of(pristine, PRISTINE[cmd], tmp_path)
    DAMAGE[damage](d / name)
    before = snapshot(d)
    r = bnlab_cli(*command(cmd, d, pristine["data"], tmp_path), cwd=tmp_path)
    assert "Traceback" not in r.stderr, r
    assert not (tmp_path / MARKER).exists(), "the malicious pickle's code ran"
    if rc == 1:
        assert_one_line_error(r, Path(name).name)
        assert snapshot(d) == before, "a failed command changed the directory it read"
        assert not (tmp_path / "report").exists()
    else:  # repaired from checkpoint.pt
        assert r.rc == 0, r
        run = d / Path(name).parent
        assert Run(run).metrics and len(Run(run).metrics) == len(
            torch.load(run / "checkpoint.pt", weights_only=True)["metrics"])


# ---- junk handed to inspect ---------------------------------------------------------------------

def _zip_of_text(p: Path) -> None:
    import zipfile

    with zipfile.ZipFile(p, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")


JUNK: dict[str, Callable[[Path], Path]] = {
    "text-file": lambda t: (t / "notes.txt", (t / "notes.txt").write_text("hi"))[0],
    "json-file": lambda t: (t / "a.json", (t / "a.json").write_text('{"model": 1}'))[0],
    "other-zip": lambda t: (t / "a.zip", _zip_of_text(t / "a.zip"))[0],
    "empty-directory": lambda t: (t / "empty", (t / "empty").mkdir())[0],
    "missing": lambda t: t / "nothing-here.pt",
    "fifo": lambda t: (t / "fifo", os.mkfifo(t / "fifo"))[0],
    "dev-null": lambda t: Path(os.devnull),
    "tensor-not-dict": lambda t: (t / "t.pt", torch.save(torch.ones(3), t / "t.pt"))[0],
    "dict-of-strings": lambda t: (t / "s.pt", torch.save({"model": {"bn.running_mean": "x"}},
                                                         t / "s.pt"))[0],
}


@pytest.mark.parametrize("junk", sorted(JUNK))
def test_junk_handed_to_inspect(bnlab_cli, tmp_path, junk):
    path = JUNK[junk](tmp_path)
    r = bnlab_cli("inspect", path, cwd=tmp_path, timeout=30)
    assert not r.timed_out, "inspect blocked on its input"
    assert_one_line_error(r, path.name)


def test_inspect_reads_odd_but_valid_state_dicts(bnlab_cli, tmp_path):
    """Empty, complex, NaN and multi-element counters: printed, not a crash."""
    state = {"a.running_mean": torch.empty(0), "a.running_var": torch.ones(2, dtype=torch.cfloat),
             "a.num_batches_tracked": torch.tensor([1, 2]), "b.running_mean": torch.ones(()),
             "b.num_batches_tracked": torch.tensor(float("nan"))}
    torch.save(state, tmp_path / "odd.pt")
    r = bnlab_cli("inspect", tmp_path / "odd.pt", cwd=tmp_path)
    assert r.rc == 0 and r.stderr == "", r
    assert "layer a (0 channels, None batches tracked)" in r.stdout and "[] (empty)" in r.stdout


# ---- data that do not fit -----------------------------------------------------------------------

def _idx(path: Path, tensor: torch.Tensor) -> None:
    path.write_bytes(gzip.compress(encode_idx(tensor), mtime=0))


TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"

# name -> (damage of the data directory, the file the error must name)
DATA_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty-train-split": (lambda d: (_idx(d / TRAIN_IMAGES, torch.zeros(0, 28, 28,
                                                                        dtype=torch.uint8)),
                                     _idx(d / TRAIN_LABELS, torch.zeros(0, dtype=torch.uint8))),
                          TRAIN_IMAGES),
    "empty-test-split": (lambda d: (_idx(d / TEST_IMAGES, torch.zeros(0, 28, 28,
                                                                      dtype=torch.uint8)),
                                    _idx(d / TEST_LABELS, torch.zeros(0, dtype=torch.uint8))),
                         TEST_IMAGES),
    "images-32x32": (lambda d: _idx(d / TRAIN_IMAGES, torch.zeros(64, 32, 32,
                                                                  dtype=torch.uint8)),
                     TRAIN_IMAGES),
    "images-1x1": (lambda d: _idx(d / TEST_IMAGES, torch.zeros(32, 1, 1, dtype=torch.uint8)),
                   TEST_IMAGES),
    "truncated-gzip": (lambda d: (d / TRAIN_IMAGES).write_bytes(
        (d / TRAIN_IMAGES).read_bytes()[:500]), TRAIN_IMAGES),
    "html-page": (lambda d: (d / TRAIN_LABELS).write_bytes(b"<html>moved</html>"), TRAIN_LABELS),
    "count-mismatch": (lambda d: _idx(d / TRAIN_LABELS, torch.zeros(63, dtype=torch.uint8)),
                       TRAIN_LABELS),
    "label-out-of-range": (lambda d: _idx(d / TEST_LABELS, torch.full((32,), 200,
                                                                      dtype=torch.uint8)),
                           TEST_LABELS),
    "incomplete": (lambda d: (d / TEST_LABELS).unlink(), "holds no complete copy"),
}
DATA_CASES = [(cmd, dmg) for cmd in ("train", "data-check") for dmg in DATA_DAMAGE] + [
    (cmd, dmg) for cmd in ("reproduce", "study") for dmg in ("images-32x32", "empty-train-split")]


@pytest.mark.parametrize("cmd,damage", DATA_CASES, ids=[f"{c}:{d}" for c, d in DATA_CASES])
def test_data_that_do_not_fit(bnlab_cli, pristine, tmp_path, cmd, damage):
    data = copy_of(pristine, "data", tmp_path)
    change, needle = DATA_DAMAGE[damage]
    change(data)
    out = tmp_path / "out"
    argv = {"train": ["train", "--out", out, "--data-dir", data, *RUN_FLAGS],
            "data-check": ["data", "check", "--data-dir", data],
            "reproduce": ["reproduce", "--out", out, "--data-dir", data, *QUICK],
            "study": ["study", "axes", "--out", out, "--data-dir", data, *QUICK]}[cmd]
    r = bnlab_cli(*argv, cwd=tmp_path)
    assert_one_line_error(r, needle)
    assert not list(out.rglob("config.json")), "a start that failed left a run behind"
    if cmd == "train":
        assert not out.exists(), "a start that failed left its directory behind"


# ---- no code runs from a file -------------------------------------------------------------------

def test_the_payload_is_live(tmp_path, monkeypatch):
    """The malicious pickles do run code when loaded unsafely: the tests above can fail."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pt").write_bytes(_checkpoint_bytes({"model": Payload()}))
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / MARKER).exists()


def test_python_api_readers_refuse_the_payload(pristine, tmp_path, monkeypatch):
    from bnlab.errors import CorruptFileError
    from bnlab.report.inspect import load_state

    monkeypatch.chdir(tmp_path)
    run = copy_of(pristine, "run", tmp_path)
    DAMAGE["malicious-torch"](run / "checkpoint.pt")
    for read in (lambda: Run(run).model(), lambda: load_state(run),
                 lambda: Run(run).dir.load_checkpoint()):
        with pytest.raises(CorruptFileError, match="refused"):
            read()
    assert not (tmp_path / MARKER).exists()


def test_every_load_in_bnlab_goes_through_the_safe_loader():
    """torch.load and unpickling appear in two places only: bnlab.files (weights only) and the
    CIFAR reader, whose one Unpickler is allowed because it is restricted (find_class answers
    from an allow-list, and the payload below does not run through it)."""
    src = Path(__file__).resolve().parents[2] / "src" / "bnlab"
    pattern = re.compile(r"torch\.load\(|pickle\.loads?\(|\bUnpickler\b|weights_only\s*=\s*False")
    hits = {str(p.relative_to(src)): pattern.findall(p.read_text())
            for p in src.rglob("*.py") if pattern.search(p.read_text())}
    assert set(hits) == {"files.py", "data/cifar.py"}, hits
    assert not [h for found in hits.values() for h in found if "weights_only" in h], hits
    assert re.search(r"torch\.load\([^)]*weights_only=True\)", (src / "files.py").read_text())
    assert hits["data/cifar.py"] == ["Unpickler"], hits  # subclassed once, never used plain
    tree = ast.parse((src / "data" / "cifar.py").read_text())
    [cls] = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
             and any(ast.unparse(b) == "pickle.Unpickler" for b in n.bases)]
    assert "find_class" in {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}


def test_the_cifar_reader_refuses_the_payload(tmp_path, monkeypatch):
    from bnlab.data.cifar import CifarError, parse_batch

    monkeypatch.chdir(tmp_path)
    for protocol in (2, 4):
        with pytest.raises(CifarError, match="refused"):
            parse_batch(pickle.dumps({"data": Payload(), "labels": [0]}, protocol), "batch")
    assert not (tmp_path / MARKER).exists()


# ---- report: nothing written outside --out, every string escaped ---------------------------------

def test_report_figure_names_stay_inside_out(bnlab_cli, pristine, tmp_path):
    """A figures/ folder that is a link to elsewhere is refused too: nothing lands outside."""
    study = copy_of(pristine, "study", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "report"
    out.mkdir()
    (out / "figures").symlink_to(elsewhere)
    r = bnlab_cli("report", study, "--out", out, cwd=tmp_path)
    assert_one_line_error(r, str(out / "figures"), "is a symbolic link")  # bnlab.files
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs", "a/b", "..", "", "x\x00y",
                                  "x\\..\\y"])
def test_inside_refuses_names_that_are_not_plain(tmp_path, name):
    from bnlab.errors import CorruptFileError
    from bnlab.files import inside

    with pytest.raises(CorruptFileError, match=r"source\.json"):
        inside(tmp_path, name, tmp_path / "source.json", flat=True)


HOSTILE = "<script>alert(1)</script>"
ATTRIBUTE = "x' onmouseover='alert(2)"


def test_report_escapes_every_string_from_a_file(bnlab_cli, pristine, tmp_path):
    study = copy_of(pristine, "study", tmp_path)
    _edit_json(study / "study.json", lambda d: d.update(
        name=f"<img src=x onerror=alert(3)>{ATTRIBUTE}", question=HOSTILE))
    (study / "verdict").write_text(f"{HOSTILE} & more\n")
    (study / "table.md").write_text(f"| arm {HOSTILE} |\n|---|\n| {ATTRIBUTE} |\n")
    _edit_json(study / RUN / "config.json", lambda d: d.update(data_dir=HOSTILE))
    repro = copy_of(pristine, "reproduce", tmp_path)  # a study directory too
    (repro / "verdict").write_text(f"- x: loss {HOSTILE}\n")
    (repro / "table.md").write_text(f"| {HOSTILE} |\n|---|\n| {ATTRIBUTE} |\n")
    r = bnlab_cli("report", study, repro, "--out", tmp_path / "report", cwd=tmp_path)
    assert r.rc == 0, r
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<script") == 1  # bnlab's own, at the end
    for raw in ("<img src=x", "onerror=alert(3)>", "' onmouseover='", HOSTILE):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "x&#x27; onmouseover=&#x27;alert(2)" in page
    assert sorted(p.name for p in (tmp_path / "report").rglob("*")) == sorted(
        ["report.html", "report.md", "figures", "reproduce.png",
         "<img src=x onerror=alert(3)>x' onmouseover='alert(2).png"])
