"""Records read back bounded and range-checked; Markdown and terminal text escaped (issue 26,
classes 4 and 6).

Every case runs the command in its own process (conftest.py's fork server): a file far larger
than any bnlab writes is refused from its size before a byte is read (the files are sparse, so
the test costs no disk), a number that cannot be what bnlab wrote (a 400-digit integer) is a
one-line error where it is read, a checkpoint that claims more epochs than its run has or a
string learning rate is refused before resuming; HTML from study files is escaped in
report.md and the studies page as it is in report.html, and ``inspect`` prints control
characters in layer names as escapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bnlab import files
from bnlab.errors import CorruptFileError
from tests.reliability.conftest import QUICK, RUN_FLAGS, assert_one_line_error, copy_of
from tests.reliability.test_untrusted_files import RUN, _edit_checkpoint, _edit_json

HUGE = 10**400  # a 401-digit integer: json reads it, float() of it overflows
MiB = 1 << 20


def _sparse(path: Path, size: int) -> None:
    """`path` replaced by a file of `size` bytes that takes no disk (a hole)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _resume(d: Path, data: Path) -> list[object]:
    return ["train", "--out", d, "--resume", "--data-dir", data, "--epochs", "2", *RUN_FLAGS[2:]]


# (pristine directory, file, size) -> the command that reads it
OVERSIZED = [
    ("study", "table.md", files.LIMITS["record"] + 1, "report"),
    ("study", "verdict", files.LIMITS["record"] + 1, "report"),
    ("study", "study.json", files.LIMITS["record"] + 1, "report"),
    ("study", "figure.png", files.LIMITS["figure"] + 1, "report"),
    ("study", f"{RUN}/metrics.jsonl", files.LIMITS["metrics"] + 1, "study-analyze"),
    ("unfinished", "checkpoint.pt", files.LIMITS["checkpoint"] + 1, "train-resume"),
    ("unfinished", "config.json", files.LIMITS["record"] + 1, "train-resume"),
]


def _command(cmd: str, d: Path, data: Path, tmp: Path) -> list[object]:
    return {"report": ["report", d, "--out", tmp / "report"],
            "study-analyze": ["study", "axes", "--out", d, "--analyze-only", *QUICK],
            "train-resume": _resume(d, data),
            "reproduce-analyze": ["reproduce", "--out", d, "--data-dir", data, *QUICK]}[cmd]


@pytest.mark.parametrize("what,name,size,cmd", OVERSIZED,
                         ids=[f"{c}:{n}" for _, n, _, c in OVERSIZED])
def test_an_oversized_record_is_refused_unread(bnlab_cli, pristine, tmp_path, what, name,
                                               size, cmd):
    d = copy_of(pristine, what, tmp_path)
    _sparse(d / name, size)
    r = bnlab_cli(*_command(cmd, d, pristine["data"], tmp_path), cwd=tmp_path, timeout=60)
    assert_one_line_error(r, str(d / name), "more than the")


def _put(path: Path, key: str, value: object) -> None:
    """Set `key` of every row of a JSON-lines file (or of a JSON file's object)."""
    if path.suffix == ".jsonl":
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        path.write_text("".join(json.dumps({**r, key: value}) + "\n" for r in rows))
    else:
        _edit_json(path, lambda d: d.update({key: value}))


OUT_OF_RANGE = [
    ("study", f"{RUN}/metrics.jsonl", "wall_time", "study-analyze", "'wall_time'"),
    ("study", f"{RUN}/metrics.jsonl", "test_acc", "study-analyze", "'test_acc'"),
    ("study", f"{RUN}/metrics.jsonl", "epoch", "study-analyze", "'epoch'"),
    ("reproduce", "torch-bn/DONE", "wall_time", "reproduce-analyze", "'wall_time'"),
    ("study", "study.json", "wall_time", "report", "wall time"),
]


@pytest.mark.parametrize("what,name,key,cmd,needle", OUT_OF_RANGE,
                         ids=[f"{c}:{n}:{k}" for _, n, k, c, _ in OUT_OF_RANGE])
def test_a_400_digit_number_is_a_one_line_error(bnlab_cli, pristine, tmp_path, what, name,
                                                key, cmd, needle):
    d = copy_of(pristine, what, tmp_path)
    _put(d / name, key, {"training": HUGE, "this_call": 1.0} if name == "study.json" else HUGE)
    r = bnlab_cli(*_command(cmd, d, pristine["data"], tmp_path), cwd=tmp_path, timeout=120)
    assert_one_line_error(r, str(d / name), needle)


CHECKPOINTS = {
    "more-rows-than-epochs": (lambda s: s.update(metrics=[{**s["metrics"][0], "epoch": e}
                                                           for e in (1, 2, 3)]),
                              "3 metrics rows but the run's config.json asks for 2 epochs"),
    "rows-out-of-order": (lambda s: s["metrics"][0].update(epoch=2), "not 1"),
    "lr-a-string": (lambda s: s["optimizer"]["param_groups"][0].update(lr="0.1"),
                    "'lr' is '0.1'"),
    "lr-infinite": (lambda s: s["optimizer"]["param_groups"][0].update(lr=float("inf")),
                    "'lr' is inf"),
    "momentum-huge": (lambda s: s["optimizer"]["param_groups"][0].update(momentum=HUGE),
                      "'momentum' is 1000"),
    "no-param-groups": (lambda s: s["optimizer"].pop("param_groups"), "parameter groups"),
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_checkpoint_that_cannot_be_resumed_is_refused(bnlab_cli, pristine, tmp_path, case):
    d = copy_of(pristine, "unfinished", tmp_path)
    change, needle = CHECKPOINTS[case]
    _edit_checkpoint(d / "checkpoint.pt", change)
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    r = bnlab_cli(*_resume(d, pristine["data"]), cwd=tmp_path)
    assert_one_line_error(r, str(d / "checkpoint.pt"), needle)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_record_that_is_no_regular_file_never_blocks(tmp_path, kind):
    """A FIFO would block open() and /dev/zero never ends: refused from fstat, at once."""
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    with pytest.raises(CorruptFileError, match="not a regular file"):
        files.read_jsonl(path, "fix")
    with pytest.raises(CorruptFileError, match="not a regular file"):
        files.load_checkpoint(path, "fix")


def test_read_bytes_stops_at_its_limit(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 101)
    assert files.read_bytes(tmp_path / "f", "fix", limit=101) == b"x" * 101
    with pytest.raises(CorruptFileError, match="101 bytes, more than the 100 bytes"):
        files.read_bytes(tmp_path / "f", "fix", limit=100)


# ---- class 6: Markdown and terminal text escaped ------------------------------------------

HOSTILE = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(3)>"


def test_markdown_outputs_escape_html_from_study_files(bnlab_cli, pristine, tmp_path):
    study = copy_of(pristine, "study", tmp_path)
    _edit_json(study / "study.json", lambda d: d.update(
        question=HOSTILE, setup=IMG, caveats=HOSTILE, literature=IMG, headline=HOSTILE))
    (study / "verdict").write_text(f"{HOSTILE} & {IMG}\n")
    (study / "table.md").write_text(f"| arm {HOSTILE} |\n|---|\n| {IMG} |\n")
    docs = tmp_path / "studies.md"
    r = bnlab_cli("report", study, "--out", tmp_path / "report", "--docs", docs, cwd=tmp_path)
    assert r.rc == 0, r
    for page in (tmp_path / "report" / "report.md", docs):
        text = page.read_text()
        assert "<script" not in text and "<img" not in text, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, page
        assert "&lt;img src=x onerror=alert(3)&gt;" in text, page
    assert "&amp; &lt;img" in (tmp_path / "report" / "report.md").read_text()


def test_inspect_prints_control_characters_escaped(bnlab_cli, tmp_path):
    bn = torch.nn.BatchNorm1d(2)
    evil = "\x1b]0;owned\x07\x1b[2J\rlayer\u202e"
    state = {f"{evil}.{k}": v for k, v in bn.state_dict().items()}
    torch.save(state, tmp_path / "evil.pt")
    r = bnlab_cli("inspect", tmp_path / "evil.pt", cwd=tmp_path)
    assert r.rc == 0, r
    assert not any(c in r.stdout for c in "\x1b\x07\r\u202e"), repr(r.stdout)
    assert r"layer \x1b]0;owned\x07\x1b[2J\rlayer\u202e (2 channels" in r.stdout
