"""The why-higher-lr analysis on synthetic runs: per-seed measures by hand, the three primary
claims judged in both directions, the figure, and a --quick run end to end."""

import json
import math
import random
from dataclasses import dataclass, field, replace

import pytest

from bnlab.studies import why_lr
from bnlab.studies.base import ArmResult, run_study
from bnlab.studies.recompute import differences
from bnlab.studies.registry import STUDIES
from tests.studies.fakes import FakeRun

LAYERS = 5
STEPS = range(0, 30, 2)
SHARP_STEPS = (0, 10, 20)


@dataclass
class ProbedRun(FakeRun):
    probes: list[dict] = field(default_factory=list)


def probe_rows(norm: str, lr: float, noise: float, *, bn_sharper: bool) -> list[dict]:
    """BN: pre-BN norms grow (w = w0 (1 + sqrt(lr) t/10)), gradients equal across layers; no
    BN: norms fixed, gradients 10x smaller per layer towards the input. lr x lambda: BN
    below / above no BN by a factor of 4 (times e^noise)."""
    bn = norm == "bnlab"
    rows = []
    for t in STEPS:
        row: dict = {"step": t, "epoch": 1}
        for k in range(1, LAYERS + 1):
            w = (1.0 + k) * ((1 + lr ** 0.5 * t / 10) if bn else 1.0) * math.exp(0.01 * noise)
            row[f"weight_norm.layer{k}"] = w
            row[f"eff_step.layer{k}"] = lr / w ** 2
            row[f"feeds_norm.layer{k}"] = 1.0 if bn and k < LAYERS else 0.0
            row[f"grad_norm.layer{k}"] = (1.0 if bn else 10.0 ** (k - LAYERS)) \
                * math.exp(0.05 * noise * (k == 1))
        if t in SHARP_STEPS:
            level = 8.0 * (4.0 if bn == bn_sharper else 1.0) / (1 + t / 10)
            row.update(sharpness=level / lr * math.exp(0.1 * noise),
                       lr_sharpness=level * math.exp(0.1 * noise), loss=2.0, hvp_products=5.0,
                       sharpness_converged=1.0, sharpness_residual=1e-3 * level / lr)
        rows.append(row)
    return rows


def results(bn_sharper: bool, seeds: int = 7) -> list[ArmResult]:
    out = []
    for i, arm in enumerate(why_lr.arms(False)):
        runs = []
        for s in range(seeds):
            noise = random.Random(100 * i + s).gauss(0, 1)
            metrics = [{"epoch": 1, "train_loss": 1.0 + 0.01 * noise,
                        "test_acc": 0.6 + 0.01 * noise, "train_acc": 0.6}]
            runs.append(ProbedRun(replace(arm.config, seed=s), metrics,
                                  probe_rows(arm.tags["norm"], arm.tags["lr"], noise,
                                             bn_sharper=bn_sharper)))
        out.append(ArmResult(arm, runs))  # type: ignore[arg-type]
    return out


def test_per_seed_measures_by_hand():
    row = probe_rows("bnlab", 1.0, 0.0, bn_sharper=False)[1]  # step 2: w_k = (1 + k) * 1.2
    assert why_lr.depth(row) == LAYERS
    expected = sum(math.log(1.0 / ((1 + k) * 1.2) ** 2) for k in range(1, 5)) / 4
    assert why_lr.log_eff_step(row) == pytest.approx(expected, rel=1e-12)
    assert why_lr.balance(row) == pytest.approx(0.0, abs=1e-12)
    none = probe_rows("none", 10.0, 0.0, bn_sharper=False)
    assert math.isnan(why_lr.log_eff_step(none[0]))  # no layer feeds a norm
    assert why_lr.balance(none[0]) == pytest.approx(4 * math.log(10), rel=1e-12)
    rows = probe_rows("none", 10.0, 0.0, bn_sharper=False)
    levels = [8.0 * 4.0 / (1 + t / 10) for t in SHARP_STEPS]
    assert why_lr.sharpness_level(rows) == pytest.approx(
        sum(math.log(v) for v in levels) / 3, rel=1e-12)
    assert why_lr.sharpness_at(rows, 0) == pytest.approx(math.log(levels[0]))
    assert why_lr.sharpness_at(rows, -1) == pytest.approx(math.log(levels[-1]))
    # a probe whose Lanczos failed (NaN) or found a negative eigenvalue drops out
    rows[0]["lr_sharpness"], rows[5]["lr_sharpness"] = math.nan, -1.0
    assert why_lr.sharpness_level(rows) == pytest.approx(math.log(levels[2]))
    # so does an unconverged one, and one recorded before the flag existed
    rows = probe_rows("none", 10.0, 0.0, bn_sharper=False)
    rows[5]["sharpness_converged"] = 0.0
    del rows[10]["sharpness_converged"]
    assert why_lr.sharpness_level(rows) == pytest.approx(math.log(levels[0]))
    assert why_lr.unconverged(rows) == (2, 3)
    assert why_lr.sharpness_at(rows, 0) == pytest.approx(math.log(levels[0]))
    # the last two probes did not converge: the last converged one is the first
    assert why_lr.sharpness_at(rows, -1) == pytest.approx(math.log(levels[0]))
    for row in rows:
        row["sharpness_converged"] = 0.0
    assert math.isnan(why_lr.sharpness_at(rows, 0))  # no converged probe: no measurement


def test_all_three_mechanisms_reproduce():
    findings = why_lr.analyze(results(bn_sharper=False))
    words = {j.claim.key: j.wording for j in findings.primary}
    assert words == {"effective-step-shrinks": "reproduces",
                     "sharpness-lower-with-bn": "reproduces",
                     "gradients-balanced-with-bn": "reproduces"}
    assert "contradict" not in findings.headline and "not decided" not in findings.headline
    assert findings.headline.endswith(
        "the data support auto-tuning, lower sharpness, balanced gradients.")


def test_a_sharper_bn_contradicts_the_smoothness_claim():
    findings = why_lr.analyze(results(bn_sharper=True))
    judged = {j.claim.key: j for j in findings.primary}
    sharp = judged["sharpness-lower-with-bn"]
    assert sharp.wording == "contradicts"
    assert sharp.comparison.diff == pytest.approx(math.log(4.0), abs=0.2)  # BN 4x sharper
    assert judged["effective-step-shrinks"].wording == "reproduces"
    assert "they contradict lower sharpness" in findings.headline
    # the effective step at lr 10 vs 0.1 at the last step: 100 x (g(0.1) / g(10))^2 apart,
    # g(lr) = 1 + sqrt(lr) 2.8 the norm growth, not the 100x of the nominal rates
    comp = [c for c in findings.exploratory if "compressed" in c.label]
    g = [1 + lr ** 0.5 * STEPS[-1] / 10 for lr in (0.1, 10.0)]
    assert len(comp) == 1
    assert comp[0].diff == pytest.approx(2 * math.log(g[0] / g[1]), abs=0.05)
    assert comp[0].word == "better"  # lower = compressed


def test_figure_is_drawn(tmp_path):
    findings = why_lr.analyze(results(bn_sharper=False, seeds=2))
    findings.plot(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered():
    assert STUDIES["why-higher-lr"] is why_lr.STUDY


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    findings = run_study(why_lr.STUDY, tmp_path, quick=True, threads=2, log=lambda m: None,
                         progress=False)
    meta = json.loads((tmp_path / "study.json").read_text())
    assert [a["name"] for a in meta["arms"]] == [a.name for a in why_lr.arms(True)]
    assert (tmp_path / "figure.png").exists() and findings.verdict.startswith("[quick mode")
    run = next((tmp_path / "runs").iterdir())
    rows = [json.loads(line) for line in (run / "probes.jsonl").read_text().splitlines()]
    assert rows and "weight_norm.layer1" in rows[0] and "lr_sharpness" in rows[0]
    assert [p["claim"]["key"] for p in meta["primary"]] == [
        c.key for c in why_lr.CLAIMS.values()]
    assert differences(meta) == []  # every published comparison recomputes from the record


def test_sharpness_is_averaged_over_the_steps_both_runs_share():
    """A step one run could not measure drops out of both arms' means (not only its own), and a
    run that diverged (a non-finite loss, or sharpness probes missing after it) makes the seed
    NaN, so the claim is untestable instead of comparing early steps with a whole run."""
    off = probe_rows("none", 10.0, 0.0, bn_sharper=False)
    on = probe_rows("bnlab", 10.0, 0.0, bn_sharper=False)
    lv = {t: 8.0 / (1 + t / 10) for t in SHARP_STEPS}  # BN's level; no BN's is 4x
    a, b = why_lr.sharpness_pair(off, on)
    assert a == pytest.approx(sum(math.log(4 * v) for v in lv.values()) / 3, rel=1e-12)
    assert b == pytest.approx(sum(math.log(v) for v in lv.values()) / 3, rel=1e-12)
    off[10]["lr_sharpness"] = math.nan  # step 20 of the no-BN run failed
    a, b = why_lr.sharpness_pair(off, on)
    assert a == pytest.approx((math.log(4 * lv[0]) + math.log(4 * lv[10])) / 2, rel=1e-12)
    assert b == pytest.approx((math.log(lv[0]) + math.log(lv[10])) / 2, rel=1e-12)
    off[10]["loss"] = math.inf  # it diverged there
    assert all(math.isnan(v) for v in why_lr.sharpness_pair(off, on))
    cut = [r for r in probe_rows("none", 10.0, 0.0, bn_sharper=False) if r["step"] < 20]
    assert all(math.isnan(v) for v in why_lr.sharpness_pair(cut, on))  # stopped probing


def test_a_diverged_no_bn_seed_makes_the_sharpness_claim_untestable():
    res = results(bn_sharper=False)
    top = max(r.arm.tags["lr"] for r in res)
    off = next(r for r in res if r.arm.tags == {**r.arm.tags, "norm": "none", "lr": top})
    off.runs[0].probes[-5]["loss"] = math.nan
    findings = why_lr.analyze(res)
    words = {j.claim.key: j.wording for j in findings.primary}
    assert words["sharpness-lower-with-bn"].startswith("not testable (1 of 7 seeds")
    assert words["effective-step-shrinks"] == "reproduces"


def test_unconverged_sharpness_drops_out_of_both_arms_and_is_counted():
    off = probe_rows("none", 10.0, 0.0, bn_sharper=False)
    on = probe_rows("bnlab", 10.0, 0.0, bn_sharper=False)
    lv = {t: 8.0 / (1 + t / 10) for t in SHARP_STEPS}
    on[5]["sharpness_converged"] = 0.0  # step 10 of the BN run did not converge
    a, b = why_lr.sharpness_pair(off, on)
    assert a == pytest.approx((math.log(4 * lv[0]) + math.log(4 * lv[20])) / 2, rel=1e-12)
    assert b == pytest.approx((math.log(lv[0]) + math.log(lv[20])) / 2, rel=1e-12)
    for p in off:
        p.pop("sharpness_converged", None)  # nothing converged: nothing shared
    assert all(math.isnan(v) for v in why_lr.sharpness_pair(off, on))


def test_the_verdict_and_table_count_the_unconverged_probes():
    res = results(bn_sharper=False)
    top = max(r.arm.tags["lr"] for r in res)
    off = next(r for r in res if r.arm.tags["norm"] == "none" and r.arm.tags["lr"] == top)
    low = next(r for r in res if r.arm.tags["norm"] == "bnlab" and r.arm.tags["lr"] != top)
    for run in off.runs[:2]:  # two seeds lose their first sharpness probe at the top rate
        run.probes[0]["sharpness_converged"] = 0.0
    low.runs[3].probes[5]["sharpness_converged"] = 0.0  # one more at a lower rate
    findings = why_lr.analyze(res)
    measured = len(SHARP_STEPS) * 7 * len(res)
    assert (f"left out as unconverged (Lanczos residual bound above the tolerance within the "
            f"product budget): 3 of {measured}, 2 of {measured // 3} at lr {top:g}."
            ) in findings.verdict
    table = {row["arm"]: row["unconverged sharpness probes"] for row in findings.rows}
    assert table[off.arm.label] == f"2 of {3 * 7}" and table[low.arm.label] == f"1 of {3 * 7}"
    assert sum(int(v.split()[0]) for v in table.values()) == 3
    # the claim still has all seven seeds (two over steps 10 and 20 only, in both arms)
    sharp = next(j for j in findings.primary if j.claim.key == "sharpness-lower-with-bn")
    assert sharp.wording == "reproduces"
    assert sharp.comparison.diff == pytest.approx(-math.log(4.0), abs=0.2)
    assert all(math.isfinite(v) for v in sharp.comparison.a.values + sharp.comparison.b.values)
    assert sharp.comparison.a.n == sharp.comparison.b.n == 7
