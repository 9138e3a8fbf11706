"""Nothing is written through a planted link (issue 26, class 1: one way to write).

For every name each command writes (train, train --resume, reproduce, study, report, compare)
a symbolic link is planted there, pointing at a victim outside the output directory; the
command runs in its own process (the fork server of conftest.py) and must end with one line
``bnlab: error: ...`` naming the link, with every file outside byte-identical and the link
still a link. The data download and the writer module itself are checked in process (the
download needs the loopback mirror of tests/data). A study directory whose ``verdict`` or
``figure.png`` links outside is refused by the report, not embedded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bnlab import files
from bnlab.errors import CorruptFileError, UnsafePathError
from tests.reliability.conftest import QUICK, RUN_FLAGS, assert_one_line_error, copy_of

VICTIM = b"the victim's own bytes: nothing may change them\n"


def _victims(tmp_path: Path) -> tuple[Path, Path]:
    """A victim file and a victim directory (holding one file), outside every output."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(VICTIM)
    (outside / "dir").mkdir()
    (outside / "dir" / "kept").write_bytes(VICTIM)
    return outside / "victim", outside / "dir"


def _fingerprint(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _command(name: str, pristine: dict[str, Path], tmp_path: Path) -> tuple[list[object], Path]:
    """The command line `name` and the directory it writes into (prepared, possibly copied)."""
    data = pristine["data"]
    if name == "train":
        out = tmp_path / "fresh"
        out.mkdir()
        return ["train", "--out", out, "--data-dir", data, *RUN_FLAGS], out
    if name == "train-resume":
        out = copy_of(pristine, "unfinished", tmp_path)
        return ["train", "--out", out, "--resume", "--data-dir", data, "--epochs", "2",
                *RUN_FLAGS[2:]], out
    if name == "reproduce":
        out = copy_of(pristine, "reproduce", tmp_path)
        return ["reproduce", "--out", out, "--data-dir", data, *QUICK], out
    if name == "study":
        out = copy_of(pristine, "study", tmp_path)
        return ["study", "axes", "--out", out, "--data-dir", data, *QUICK], out
    if name == "report":
        out = tmp_path / "report"
        out.mkdir()
        return ["report", pristine["study"], "--out", out], out
    if name == "compare":
        out = tmp_path / "compare"
        out.mkdir()
        return ["compare", pristine["run"], pristine["unfinished"], "--out", out], out
    raise AssertionError(name)


RUN_NAMES = [".lock", "config.json", "metrics.jsonl", "checkpoint.pt", "DONE", "probes.jsonl",
             "tensorboard"]
STUDY_NAMES = ["study.json", "verdict", "table.md", "table.csv", "figure.png"]
PLANTS = [
    *[("train", n) for n in RUN_NAMES],
    *[("train-resume", n) for n in RUN_NAMES],
    *[("reproduce", n) for n in [*STUDY_NAMES, "REPORT.md", "curves.png", "bnlab-bn",
                                 "bnlab-bn/checkpoint.pt", "torch-bn/DONE",
                                 "no-bn/metrics.jsonl"]],
    *[("study", n) for n in [*STUDY_NAMES, "runs/bnlab-s0", "runs/bnlab-s0/.lock",
                             "runs/none-s0/config.json"]],
    *[("report", n) for n in ["report.html", "report.md", "figures", "figures/axes.png"]],
    *[("compare", n) for n in ["compare.png", "compare.md", "compare.html"]],
]


@pytest.mark.parametrize("target", ["file", "dir"])
@pytest.mark.parametrize("cmd,name", PLANTS, ids=[f"{c}:{n}" for c, n in PLANTS])
def test_a_planted_link_is_refused_and_nothing_outside_changes(bnlab_cli, pristine, tmp_path,
                                                               cmd, name, target):
    victim_file, victim_dir = _victims(tmp_path)
    before = _fingerprint(victim_file.parent)
    argv, out = _command(cmd, pristine, tmp_path)
    link = out / name
    if link.is_dir() and not link.is_symlink():
        files.remove_tree(link)
    else:
        files.remove(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim_file if target == "file" else victim_dir)
    r = bnlab_cli(*argv, cwd=tmp_path)
    assert_one_line_error(r, "is a symbolic link", str(link))
    assert _fingerprint(victim_file.parent) == before
    assert link.is_symlink() and victim_file.read_bytes() == VICTIM


def test_the_link_may_be_the_directory_the_user_named(bnlab_cli, pristine, tmp_path):
    """--out itself may be a link (the user's choice); only names below it are refused."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "named").symlink_to(real)
    r = bnlab_cli("train", "--out", tmp_path / "named", "--data-dir", pristine["data"],
                  *RUN_FLAGS, cwd=tmp_path)
    assert r.rc == 0, r
    assert (real / "DONE").is_file() and not (real / ".lock").exists()


@pytest.mark.parametrize("name", ["verdict", "figure.png", "table.md", "study.json"])
def test_report_refuses_a_study_file_that_links_outside(bnlab_cli, pristine, tmp_path, name):
    study = copy_of(pristine, "study", tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes((study / name).read_bytes())  # valid content: only the link is wrong
    (study / name).unlink()
    (study / name).symlink_to(secret)
    r = bnlab_cli("report", study, "--out", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(r, str(study / name), "outside")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_report_leaves_no_partial_figures(pristine, tmp_path, monkeypatch):
    """The report writes figures/ and both pages all or nothing: the last file refused (a
    link at report.md planted after the check, as a racing writer would) removes the rest."""
    from bnlab.report.html import build_report

    out = tmp_path / "out"
    real_write = files.write_bytes
    victim, _ = _victims(tmp_path)

    def plant_then_write(path, data, *, root=None):
        if Path(path).name == "report.md":
            Path(path).symlink_to(victim)
        return real_write(path, data, root=root)

    monkeypatch.setattr(files, "write_bytes", plant_then_write)
    with pytest.raises(UnsafePathError, match=r"report\.md: is a symbolic link"):
        build_report([pristine["study"]], out)
    assert sorted(p.name for p in out.rglob("*")) == ["report.md"]  # only the plant is left
    assert victim.read_bytes() == VICTIM


# ---- the writer module itself ----------------------------------------------------------------

def test_atomic_write_never_follows_a_guessable_temporary(tmp_path):
    """The temporaries of earlier versions were `.NAME.tmp-PID`: planted there (and at other
    guessable names), links are never written through; the temporary is a mkstemp name."""
    victim, _ = _victims(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    for guess in (f".config.json.tmp-{os.getpid()}", ".config.json.tmp", "config.json.tmp"):
        (out / guess).symlink_to(victim)
    planted = set(os.listdir(out))
    seen: list[str] = []
    files.atomic_write(out / "config.json",
                       lambda f: seen.extend(set(os.listdir(out)) - planted) or f.write(b"{}\n"))
    assert (out / "config.json").read_bytes() == b"{}\n" and victim.read_bytes() == VICTIM
    [temporary] = seen  # the one new name while writing: a random mkstemp name
    assert temporary.startswith(".config.json.") and temporary.endswith(".tmp")
    assert len(temporary) > len(".config.json..tmp") + 5
    assert set(os.listdir(out)) == planted | {"config.json"}


def test_a_writer_that_fails_leaves_no_temporary(tmp_path):
    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(tmp_path / "x", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_files_opened_in_place_must_be_plain(tmp_path, kind):
    victim, _ = _victims(tmp_path)
    lock = tmp_path / ".lock"
    {"symlink": lambda: lock.symlink_to(victim), "hardlink": lambda: os.link(victim, lock),
     "fifo": lambda: os.mkfifo(lock)}[kind]()
    with pytest.raises(UnsafePathError, match=r"\.lock"):
        files.open_in_place(lock, truncate=True)
    assert victim.read_bytes() == VICTIM


def test_a_link_in_a_parent_below_the_root_is_refused(tmp_path):
    _, victim_dir = _victims(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "figures").symlink_to(victim_dir)
    with pytest.raises(UnsafePathError, match="figures: is a symbolic link"):
        files.write_files(tmp_path / "out", {"a.md": b"a", "figures/x.png": b"x"})
    assert not (tmp_path / "out" / "a.md").exists()  # checked before the first write
    assert sorted(p.name for p in victim_dir.iterdir()) == ["kept"]


def test_download_refuses_links_at_the_file_and_its_part(tmp_path):
    from bnlab.data.download import fetch
    from tests.data.fakes import Mirror, serve

    victim, _ = _victims(tmp_path)
    payload = os.urandom(4096)
    md5 = hashlib.md5(payload).hexdigest()
    for planted in ("data.bin", "data.bin.part"):
        cache = tmp_path / f"cache-{planted}"
        cache.mkdir()
        (cache / planted).symlink_to(victim)
        m = Mirror()
        m.routes["/data.bin"] = payload
        with serve(m) as url, pytest.raises(UnsafePathError, match="is a symbolic link"):
            fetch([f"{url}/data.bin"], cache / "data.bin", md5, retries=0)
        assert victim.read_bytes() == VICTIM and (cache / planted).is_symlink()


def test_readers_refuse_a_link_leaving_their_root(tmp_path):
    victim, _ = _victims(tmp_path)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "verdict").symlink_to(victim)
    with pytest.raises(CorruptFileError, match="outside"):
        files.read_text(tmp_path / "study" / "verdict", "fix", root=tmp_path / "study")
    assert files.read_text(tmp_path / "study" / "verdict", "fix") == VICTIM.decode()


def test_outputs_keep_the_usual_permissions(tmp_path):
    """mkstemp makes 0600 temporaries: a new output gets 0666 less the umask, a rewritten one
    keeps its mode (a report stays readable by the group that read it before)."""
    umask = os.umask(0o022)
    os.umask(umask)
    files.write_text(tmp_path / "new.md", "x")
    assert (tmp_path / "new.md").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "new.md").chmod(0o640)
    files.write_text(tmp_path / "new.md", "y")
    assert (tmp_path / "new.md").stat().st_mode & 0o777 == 0o640
