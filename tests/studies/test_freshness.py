"""The checks of tests/test_docs_fresh.py, run on a synthetic record and a scratch repository
(the committed records are regenerated at the end, so these are what must hold now)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

from bnlab.studies import ics, placement
from bnlab.studies.base import Findings, lead_texts
from bnlab.studies.claims import exploratory, judge, literature_text
from bnlab.studies.recompute import (
    claim_differences,
    declared_claims,
    differences,
    text_differences,
)
from bnlab.studies.stats import compare
from bnlab.studies.subject import Subject
from tests.test_docs_fresh import ANALYSIS_ONLY, changed_since

A = [0.80, 0.82, 0.79, 0.81, 0.83, 0.80, 0.78, 0.82]
B = [0.84, 0.85, 0.83, 0.86, 0.85, 0.83, 0.82, 0.87]


# what the runner records about the call: a full run of bnlab's own network (no marks)
RUN = {"quick": False, "seeds": 8, "subject": Subject().record(),
       "ran": {"on": "bnlab's network on Fashion-MNIST"}}


def synthetic() -> tuple[dict, str]:
    """A placement record as the runner writes it (``base.lead_texts``), with its verdict."""
    judged = judge([(placement.CLAIM, B, A, True)])  # the claim: b - a < 0
    explored = exploratory([compare(A, B, metric="train_loss", label="x", paired=True,
                                    higher_is_better=False)])
    findings = Findings([], "The rest of the verdict.", lambda _: None, explored,
                        "Train loss is lower.", f"{literature_text(judged)}. More.", judged)
    verdict, headline, literature = lead_texts(findings)
    record = {"name": "placement", **RUN, "headline": headline, "literature": literature,
              "primary": [j.record() for j in judged], "not_judged": {},
              "exploratory": [c.record() for c in explored]}
    return json.loads(json.dumps(record)), verdict


def two_claims() -> tuple[dict, str, dict]:
    """An ics record judging both declared claims, its verdict and the declared claims."""
    a = [0.90, 0.91, 0.89, 0.92, 0.90, 0.91, 0.90, 0.92, 0.89, 0.91]
    judged = judge([(ics.LESS_SHIFT, a, [x - 0.2 for x in a], True),
                    (ics.NOISY_BEATS_NONE, a, [x + 0.001 * (i % 3) for i, x in enumerate(a)],
                     True)])
    verdict, headline, literature = lead_texts(Findings(
        [], "Drift is measured.", lambda _: None, [], "Drift falls.", "", judged))
    record = {"name": "ics", **RUN, "headline": headline, "literature": literature,
              "primary": [j.record() for j in judged], "not_judged": {}, "exploratory": []}
    return json.loads(json.dumps(record)), verdict, declared_claims(ics.analyze)


def caught(record: dict, verdict: str, declared: dict) -> list[str]:
    return differences(record) + claim_differences(record, declared) + \
        text_differences(record, verdict)


def test_a_comparison_without_a_good_direction_recomputes_and_a_flipped_one_is_caught():
    record, _ = synthetic()
    record["exploratory"] = json.loads(json.dumps([c.record() for c in exploratory(
        [compare(A, B, metric="drift", label="floor", paired=True, higher_is_better=None)])]))
    assert record["exploratory"][0]["verdict"] == "higher"
    assert differences(record) == []
    record["exploratory"][0]["higher_is_better"] = True  # now worded 'better': caught
    assert any("floor" in d for d in differences(record))
    record["exploratory"][0]["higher_is_better"] = "yes"
    assert any("cannot be recomputed" in d for d in differences(record))


def test_a_synthetic_record_passes_every_check():
    record, verdict = synthetic()
    assert record["primary"][0]["wording"] == "reproduces"
    assert caught(record, verdict, declared_claims(placement.analyze)) == []
    assert verdict.split("\n")[1] == "The rest of the verdict."
    assert record["literature"].endswith(". More.") and record["literature"].count(
        literature_text(judge([(placement.CLAIM, B, A, True)]))) == 1  # not repeated
    record, verdict, declared = two_claims()
    assert caught(record, verdict, declared) == []
    quick = "[quick mode: a small subset, not evidence] "
    marked = {**record, "quick": True, "headline": quick + record["headline"],
              "literature": quick + record["literature"]}
    assert text_differences(marked, quick + verdict) == []


def test_only_the_runners_own_marks_may_precede_the_claims():
    """The marks are the ones the record's own fields give (``claims.run_marks``): a quick
    mark on a full run, a bracketed opinion, or a missing mark on a quick run is caught."""
    record, verdict, declared = two_claims()
    quick = "[quick mode: a small subset, not evidence] "
    for prefix in (quick, "[BN contradicts Santurkar et al.] "):
        edited = {**record, "headline": prefix + record["headline"]}
        assert any("headline" in w for w in caught(edited, verdict, declared)), prefix
        assert any("verdict" in w for w in caught(record, prefix + verdict, declared))
    assert len(text_differences({**record, "quick": True}, verdict)) == 3  # marks missing
    one = {**record, "seeds": 1, "headline": "[1 seed: no difference can be tested] "
           + record["headline"], "literature": "[1 seed: no difference can be tested] "
           + record["literature"]}
    assert text_differences(one, "[1 seed: no difference can be tested] " + verdict) == []
    other = {**record, "subject": {**RUN["subject"], "model": "MyNet"},
             "ran": {"on": "MyNet on Fashion-MNIST"}}
    assert len(text_differences(other, verdict)) == 3  # a user's network must be named


def test_a_dropped_claim_is_caught():
    record, verdict, declared = two_claims()
    dropped = copy.deepcopy(record)
    dropped["primary"] = dropped["primary"][1:]
    assert any("neither judged nor listed" in w for w in caught(dropped, verdict, declared))
    # listing it as not judged keeps Holm's m at 2: the published p values no longer recompute
    dropped["not_judged"] = {ics.LESS_SHIFT.key: "its comparison did not run"}
    assert claim_differences(dropped, declared) == []
    assert any("p_holm" in w for w in differences(dropped))
    invented = copy.deepcopy(record)
    invented["not_judged"] = {"made-up": "x", ics.LESS_SHIFT.key: ""}
    assert len(claim_differences(invented, declared)) == 2


def test_an_edited_headline_is_caught():
    record, verdict, declared = two_claims()
    for headline in ("BN reduces internal covariate shift: reproduces.",
                     record["headline"].replace("does not reproduce", "reproduces"),
                     record["headline"].replace("Claims: ", "Claims: [x] reproduces; ")):
        edited = {**record, "headline": headline}
        assert any("headline" in w for w in caught(edited, verdict, declared)), headline


def test_an_extra_verdict_sentence_is_caught():
    record, verdict, declared = two_claims()
    first, rest = verdict.split("\n", 1)
    extra = f"{first} Exploratory: noisy BN vs BN, Holm p < 0.001: better.\n{rest}"
    assert any("verdict" in w for w in caught(record, extra, declared))
    assert any("verdict" in w for w in caught(record, rest, declared))  # claims part missing
    lit = {**record, "literature": record["literature"] + "x"}  # glued to the claims part
    assert any("literature" in w for w in caught(lit, verdict, declared))


def test_a_flipped_direction_is_caught():
    record, verdict = synthetic()
    flipped = copy.deepcopy(record)
    flipped["primary"][0]["claim"]["direction"] = -placement.CLAIM.direction
    flipped["primary"][0]["wording"] = "contradicts"
    assert differences(flipped) == []  # the record is consistent with itself...
    wrong = claim_differences(flipped, declared_claims(placement.analyze))
    assert placement.CLAIM.direction == -1
    assert len(wrong) == 1 and "direction recorded 1, declared -1" in wrong[0]  # ...not the study
    assert text_differences(flipped, verdict)  # and the texts no longer lead with its wording
    unknown = copy.deepcopy(record)
    unknown["primary"][0]["claim"]["key"] = "made-up"
    assert "not declared" in claim_differences(unknown, declared_claims(placement.analyze))[0]


def test_an_empty_primary_list_is_caught():
    record, _, declared = two_claims()
    empty = {**record, "primary": [], "literature": "reproduces"}
    wrong = caught(empty, "anything", declared)
    assert sum("neither judged nor listed" in w for w in wrong) == 2
    assert any("literature words a claim" in w for w in wrong)
    # every claim listed as not judged: each text leads with them and their reasons (as the
    # runner writes them), and still no text may word one
    nj = dict.fromkeys(declared, "its comparison did not run")
    verdict, headline, literature = lead_texts(Findings(
        [], "Drift is measured.", lambda _: None, [], "Drift falls.", "", [], nj))
    listed = {**empty, "literature": literature, "headline": headline, "not_judged": nj}
    assert headline.startswith(f"Claims: [{ics.LESS_SHIFT.key}] not judged (its comparison")
    assert caught(listed, verdict, declared) == []
    assert text_differences(listed, "Drift: contradicts.")[0] == (
        "ics: the verdict words a claim ('contradicts') but the record judges none")
    # a claim not judged that the texts do not name, or name with another reason, is caught
    bare = {**listed, "headline": "Drift falls.", "literature": ""}
    assert sorted(w.split(" does not")[0] for w in caught(bare, verdict, declared)) == [
        "ics: the headline", "ics: the literature"]
    other = {**listed, "not_judged": dict.fromkeys(declared, "both at chance")}
    assert len(caught(other, verdict, declared)) == 3  # headline, literature, verdict


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


def test_declared_claims_of_a_callable_without_a_module_is_empty():
    import functools
    assert declared_claims(functools.partial(placement.analyze)) == {}
    assert set(declared_claims(placement.analyze)) == {placement.CLAIM.key}


def test_a_reason_is_the_runners_text_not_a_claims_word():
    """With nothing judged, only the text outside the generated claims part may not word a
    claim: a reason that happens to contain a verdict word is not flagged; a reason on two
    lines would split the verdict's first line and is refused."""
    record, _, declared = two_claims()
    nj = dict.fromkeys(declared, "arm 'reproduces-x' did not run")
    verdict, headline, literature = lead_texts(Findings(
        [], "Drift is measured.", lambda _: None, [], "Drift falls.", "", [], nj))
    listed = {**record, "primary": [], "headline": headline, "literature": literature,
              "not_judged": nj}
    assert caught(listed, verdict, declared) == []
    assert caught({**listed, "headline": headline + " It reproduces."}, verdict, declared)
    two_lines = {**listed, "not_judged": dict.fromkeys(declared, "one\ntwo")}
    assert any("on one line" in w for w in claim_differences(two_lines, declared))
