"""The checks of tests/test_docs_fresh.py, run on a synthetic record and a scratch repository
(the committed records are regenerated at the end, so these are what must hold now)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest

from bnlab.studies import placement
from bnlab.studies.claims import exploratory, judge, literature_text, primary_text
from bnlab.studies.recompute import (
    claim_differences,
    declared_claims,
    differences,
    text_differences,
)
from bnlab.studies.stats import compare
from tests.test_docs_fresh import ANALYSIS_ONLY, changed_since

A = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.78, 0.82]
B = [0.84, 0.85, 0.83, 0.86, 0.85, 0.83, 0.82, 0.87]


def synthetic() -> tuple[dict, str]:
    judged = judge([(placement.CLAIM, B, A, True)])  # the claim: b - a < 0
    explored = exploratory([compare(A, B, metric="train_loss", label="x", paired=True,
                                    higher_is_better=False)])
    record = {"name": "placement", "literature": f"{literature_text(judged)}. More.",
              "primary": [j.record() for j in judged],
              "exploratory": [c.record() for c in explored]}
    return record, f"{primary_text(judged)} The rest of the verdict."


def test_a_synthetic_record_passes_every_check():
    record, verdict = synthetic()
    assert record["primary"][0]["wording"] == "reproduces"
    assert differences(record) == []
    assert claim_differences(record, declared_claims(placement.analyze)) == []
    assert text_differences(record, verdict) == []


def test_flipping_a_claims_direction_with_its_wording_is_caught():
    record, _ = synthetic()
    flipped = copy.deepcopy(record)
    flipped["primary"][0]["claim"]["direction"] = -placement.CLAIM.direction
    flipped["primary"][0]["wording"] = "contradicts"
    assert differences(flipped) == []  # the record is consistent with itself...
    wrong = claim_differences(flipped, declared_claims(placement.analyze))
    assert placement.CLAIM.direction == -1
    assert len(wrong) == 1 and "direction recorded 1, declared -1" in wrong[0]  # ...not the study
    unknown = copy.deepcopy(record)
    unknown["primary"][0]["claim"]["key"] = "made-up"
    assert "not declared" in claim_differences(unknown, declared_claims(placement.analyze))[0]


def test_a_literature_or_verdict_text_not_from_the_wording_is_caught():
    record, verdict = synthetic()
    edited = copy.deepcopy(record)
    edited["literature"] = edited["literature"].replace("reproduces", "does not reproduce")
    assert len(text_differences(edited)) == 1
    assert "verdict" in text_differences(record, verdict.replace("reproduces", "not shown"))[0]


def test_declared_claims_finds_every_module_level_claim():
    from bnlab.studies import chapter, momentum, why_lr
    assert set(declared_claims(why_lr.analyze)) == {c.key for c in why_lr.CLAIMS.values()}
    assert set(declared_claims(momentum.analyze)) == {c.key for c in momentum.CLAIMS.values()}
    assert set(declared_claims(chapter.analyze)) == {c.key for c in chapter.CLAIMS.values()}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")  # git is in the dev image
def test_changed_since_sees_uncommitted_and_untracked_files(tmp_path: Path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "train.py").write_text("x = 1\n")
    (tmp_path / "src" / "a" / "claims.py").write_text("y = 1\n")
    git("add", "-A")
    git("commit", "-qm", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    assert changed_since(tmp_path, head) == []
    (tmp_path / "src" / "a" / "train.py").write_text("x = 2\n")  # not committed
    (tmp_path / "src" / "a" / "new.py").write_text("z = 1\n")  # not tracked
    (tmp_path / "src" / "a" / "claims.py").write_text("y = 2\n")
    assert changed_since(tmp_path, head) == ["src/a/claims.py", "src/a/new.py",
                                             "src/a/train.py"]
    assert changed_since(tmp_path, head, exclude=("src/a/claims.py",)) == [
        "src/a/new.py", "src/a/train.py"]


def test_training_files_are_not_analysis_only():
    root = Path(__file__).resolve().parents[2]
    # (base.py and options.py are checked through the configs and seeds they produce, the
    # probes study by study through probe_files: see test_docs_fresh.ANALYSIS_ONLY)
    for f in ("sweep.py", "sweep_jobs.py", "ray_sweep.py", "subject.py"):
        path = f"src/bnlab/studies/{f}"
        assert (root / path).is_file()
        assert not any(path == p or path.startswith(p + "/") for p in ANALYSIS_ONLY)
    listed = [p for p in ANALYSIS_ONLY if p.endswith(".py")]
    assert all((root / p).is_file() for p in listed)  # no stale name in the list
