"""A study's primary judgements and exploratory comparisons, end to end: the runner checks the
two families, writes both into study.json, the table and the verdict, and the record
recomputes from its own per-seed values (``bnlab.studies.recompute``); a tampered record does
not."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bnlab.studies.base import Arm, ArmResult, Findings, Study, compare_arms, run_study
from bnlab.studies.claims import Claim, exploratory, judge
from bnlab.studies.recompute import differences
from bnlab.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=32, limit_train=96, limit_test=64, device="cpu",
                   threads=1, progress=False)
CLAIM = Claim("bn-helps", "BN improves test accuracy.", "Ioffe & Szegedy 2015", "test_acc", 1,
              0.01, "no BN", "BN")


def _analyze(results: list[ArmResult], split: bool = False, reword: bool = False) -> Findings:
    none, bn = results
    (j,) = judge([(CLAIM, none.finals("test_acc"), bn.finals("test_acc"), True)])
    if reword:
        j = replace(j, wording="reproduces" if j.wording != "reproduces" else "contradicts")
    loss = compare_arms(none, bn, "train_loss", "BN vs no BN", higher_is_better=False)
    acc = compare_arms(none, bn, "train_acc", "BN vs no BN")
    ex = exploratory([loss]) + exploratory([acc]) if split else exploratory([loss, acc])
    return Findings([{"arm": "x"}], "the rest of the verdict.", lambda path: None, ex,
                    "headline", "literature", [j])


def _study(analyze=_analyze) -> Study:  # type: ignore[no-untyped-def]
    return Study("tiny", "does BN help?", lambda quick: [
        Arm("none", "no BN", replace(TINY, model="lenet", norm="none")),
        Arm("bn", "BN", replace(TINY, model="lenet-bn", norm="bnlab"))], analyze, seeds=3)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("study")
    run_study(_study(), out, log=lambda m: None, progress=False)
    return out


def test_record_holds_both_families_and_recomputes(ran):
    meta = json.loads((ran / "study.json").read_text())
    assert [p["claim"]["key"] for p in meta["primary"]] == ["bn-helps"]
    p = meta["primary"][0]
    assert {"diff", "ci95", "mde", "p", "p_holm", "p_exact", "p_tost", "wording"} <= set(p)
    assert len(p["a"]) == 3 and p["paired"] is True
    assert [c["metric"] for c in meta["exploratory"]] == ["train_loss", "train_acc"]
    assert "comparisons" not in meta
    assert differences(meta) == []
    verdict = (ran / "verdict").read_text()
    assert verdict.startswith("Claims (1 primary comparison") and "[bn-helps]" in verdict
    assert p["wording"] in verdict and verdict.rstrip().endswith("the rest of the verdict.")
    table = (ran / "table.md").read_text()
    assert "| primary comparison (claim) |" in table and "Exploratory comparisons" in table


@pytest.mark.parametrize(("path", "value"), [(("primary", 0, "wording"), "reproduces?"),
                                             (("primary", 0, "p_holm"), 0.001234),
                                             (("primary", 0, "b", 0), 0.99),
                                             (("exploratory", 1, "p_holm"), 0.5),
                                             (("exploratory", 0, "verdict"), "better!")])
def test_a_tampered_record_is_caught(ran, path, value):
    meta = json.loads((ran / "study.json").read_text())
    target = meta
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    assert differences(meta), path


def test_an_old_record_is_refused():
    assert differences({"name": "x", "comparisons": []}) == [
        "x: the record has no primary/exploratory comparisons (an older format)"]


def test_runner_refuses_split_families_and_hand_wording(ran, tmp_path):
    with pytest.raises(AssertionError, match="one family"):
        run_study(_study(lambda r: _analyze(r, split=True)), ran, analyze_only=True,
                  log=lambda m: None, progress=False)
    with pytest.raises(AssertionError, match=r"one claims\.judge call"):
        run_study(_study(lambda r: _analyze(r, reword=True)), ran, analyze_only=True,
                  log=lambda m: None, progress=False)
