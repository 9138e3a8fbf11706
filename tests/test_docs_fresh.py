"""docs/ is regenerated from the current code: a stale figure or verdict fails here.

The committed study records (``docs/studies/NAME/``: study.json, table.md, verdict, figure)
say which commit trained their runs and which analysed them (``bnlab.provenance``). They are
fresh when

* every registered study has a full (not --quick) record, made from clean trees;
* the analysis ran on exactly the current ``src/`` (any change since fails, uncommitted and
  untracked files included: the comparison is with the working tree);
* the runs were trained by the current training code: ``src/`` as now outside the analysis
  and reporting files (``ANALYSIS_ONLY``, listed one by one), the probe modules *that
  study's* arms run
  (``bnlab.studies.probes.probe_files``: probes are training code, so a changed probe makes
  its study's runs stale, and no other study's), and with the configs the study's arms give
  now (so a changed design in ``studies/`` is caught too);
* every published comparison recomputes from the record's own per-seed values (Holm over the
  declared claims), the record's claims are the ones its study declares, every declared claim
  is judged or listed as not judged with its reason, and its headline, literature sentence and
  verdict lead with exactly the claims part the current code generates from the record
  (``bnlab.studies.recompute``);
* docs/studies.md and docs/report/report.md are exactly what ``bnlab report`` builds from the
  records (nothing in them is edited by hand).

The fix is always the same: ``make docs`` (reruns what changed, then rebuilds the pages).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bnlab.studies.base import arm_config
from bnlab.studies.probes import probe_files
from bnlab.studies.registry import STUDIES
from bnlab.studies.subject import Subject

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RECORDS = DOCS / "studies"
# Analysis and reporting code, listed file by file: everything else under src/ is training
# code (the sweep and its workers, the subject). The probes are training code study by study
# (``probe_files``, plus the package's shared ``probes/__init__.py`` for every study with a
# probe), so one study's new probe does not make every other study stale. base.py and
# options.py turn arms and seeds into runs: what they produce, every arm's config and the
# seeds, is compared with the record below, so they are listed here. The arguments a study
# module passes to its probes are not in the record, so a change to them is not caught here (a
# known gap).
_STUDIES = "src/bnlab/studies/"
ANALYSIS_ONLY = ("src/bnlab/report", "src/bnlab/cli.py", _STUDIES + "probes",
                 *(_STUDIES + f for f in ("base.py", "options.py",
                     "__init__.py", "chance.py", "claims.py", "exact.py", "stats.py",
                     "recompute.py",
                     "wording.py", "power.py", "publish.py", "registry.py",
                     "axes.py", "batch_size.py", "chapter.py", "ics.py", "inference_stats.py",
                     "landscape.py", "lr.py", "momentum.py", "placement.py", "reproduce.py",
                     "running_averages.py", "weight_decay.py", "why_lr.py")))
FIX = "run `make docs` (it retrains only what changed) and commit docs/"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    if shutil.which("git") is None or _git("rev-parse", "HEAD").returncode != 0:
        pytest.skip("not a git checkout: the docs' recorded commits cannot be compared")
    return {p.parent.name: json.loads(p.read_text()) for p in RECORDS.glob("*/study.json")}


def changed_since(root: Path, commit: str, paths: tuple[str, ...] = ("src",),
                  exclude: tuple[str, ...] = ()) -> list[str]:
    """Files under `paths` (less `exclude`) that differ between `commit` and the working tree
    of `root`, uncommitted and untracked (not ignored) files included."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=False)

    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        pytest.fail(f"recorded commit {commit} is not in this repository's history")
    if not paths:
        return []
    spec = ["--", *paths, *(f":(exclude){p}" for p in exclude)]
    changed = git("diff", "--name-only", commit, *spec).stdout.split()
    untracked = git("ls-files", "--others", "--exclude-standard", *spec).stdout.split()
    return sorted(set(changed) | set(untracked))


def _changed(commit: str, exclude: tuple[str, ...] = (), paths: tuple[str, ...] = ("src",)
             ) -> list[str]:
    return changed_since(ROOT, commit, paths, exclude)


def test_every_study_has_a_full_record(records):
    assert sorted(records) == sorted(STUDIES), f"studies without a record in docs/: {FIX}"
    for name, meta in records.items():
        assert meta["name"] == name and not meta["quick"], f"{name}: a --quick record; {FIX}"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_a_record_comes_from_the_current_code(records, name):
    meta = records.get(name)
    if meta is None:
        pytest.fail(f"{name}: no record in docs/studies; {FIX}")
    probes = probe_files(STUDIES[name].arms(False))
    if probes:
        probes = [*probes, _STUDIES + "probes/__init__.py"]
    analysis = meta["provenance"]["analysis"]["code"]
    assert analysis.get("clean"), f"{name}: analysed from an uncommitted tree; {FIX}"
    changed = _changed(analysis["commit"])
    assert not changed, f"{name}: src/ changed since its analysis ({changed[:5]}); {FIX}"
    for version in meta["provenance"]["runs"]:
        code = version["code"]
        assert isinstance(code, dict) and code.get("clean"), \
            f"{name}: runs trained from an uncommitted or unrecorded tree; {FIX}"
        changed = _changed(code["commit"], ANALYSIS_ONLY)
        assert not changed, f"{name}: training code changed since its runs ({changed[:5]}); {FIX}"
        changed = _changed(code["commit"], paths=tuple(probes))
        assert not changed, f"{name}: its probes changed since its runs ({changed}); {FIX}"
    study = STUDIES[name]
    now = {a.name: arm_config(a, Subject()).to_dict() for a in study.arms(False)}
    recorded = {a["name"]: a["config"] for a in meta["arms"]}
    assert recorded == now, f"{name}: the study's arms changed since its runs; {FIX}"
    assert meta["seeds"] == study.seeds, f"{name}: recorded with another seed count; {FIX}"


def test_pages_are_built_from_the_records(records, tmp_path):
    from bnlab.report.html import build_report
    from bnlab.report.studies_doc import write_studies_doc

    order = [RECORDS / n for n in STUDIES if (RECORDS / n).is_dir()]  # publish's order
    build_report(order, tmp_path / "report")
    write_studies_doc(order, tmp_path / "studies.md", tmp_path / "report" / "figures")
    for built, committed in ((tmp_path / "studies.md", DOCS / "studies.md"),
                             (tmp_path / "report" / "report.md", DOCS / "report" / "report.md")):
        assert built.read_text() == committed.read_text(), f"{committed} differs; {FIX}"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_published_comparison_recomputes_from_its_own_values(records, name):
    """Each primary judgement and exploratory comparison in the record, recomputed from the
    record's per-seed values by the current statistics (``bnlab.studies.recompute``)."""
    from bnlab.studies.recompute import differences

    meta = records.get(name)
    if meta is None:
        pytest.fail(f"{name}: no record in docs/studies; {FIX}")
    wrong = differences(meta)
    assert not wrong, f"{name}: {len(wrong)} published values differ ({wrong[:3]}); {FIX}"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_recorded_claims_and_texts_are_the_studys_own(records, name):
    """The record's claims are the ones the study module declares (a direction flipped with
    its wording in study.json fails), and its literature sentence and verdict carry exactly
    what the judged claims' wording gives."""
    from bnlab.studies.recompute import claim_differences, declared_claims, text_differences

    meta = records.get(name)
    if meta is None:
        pytest.fail(f"{name}: no record in docs/studies; {FIX}")
    wrong = claim_differences(meta, declared_claims(STUDIES[name].analyze))
    verdict = RECORDS / name / "verdict"
    wrong += text_differences(meta, verdict.read_text() if verdict.is_file() else "")
    assert not wrong, f"{name}: {wrong[:3]}; {FIX}"
