"""The batch-size study's analysis on synthetic runs: BN against GroupNorm (and Batch Renorm)
directly at the smallest batch as the primary claims, arms at chance never a reference and
never compared with each other, the rest exploratory."""

import math

import pytest
from scipy import stats as sps

from bnlab.studies import batch_size, chance
from bnlab.studies.base import check_families, lead_texts
from bnlab.studies.recompute import differences
from tests.studies.fakes import record, results

BN_LIKE = ("bnlab", "renorm-fixed", "ghost")
SEEDS = batch_size.SEEDS


def study(acc=None, seeds=SEEDS, nan_arm=None, chance=(), lagging=()):
    """Test accuracy 0.80 everywhere (plus shared noise), minus acc[(norm, batch, control)]
    where given ('both' for batch 128); arms named in `chance` sit at 0.10 on every seed."""
    acc = acc or {}

    def curve(arm, seed, noise):
        t = arm.tags
        value = 0.80 + 0.005 * noise - acc.get((t["norm"], t["batch"], t["control"]), 0.0)
        if arm.name in chance:
            value = 0.10 + 0.001 * noise
        row = {"epoch": 1, "train_loss": 0.6 - 0.01 * noise, "test_acc": value}
        if nan_arm == arm.name and seed == 0:
            row["train_loss"] = math.nan
            row["test_acc"] = 0.10
        if t["norm"] in BN_LIKE:
            row["test_acc_precise"] = value + 0.002
        if arm.name in lagging:  # running averages at chance, the weights trained
            row["test_acc"] = 0.10
        return [row]

    return batch_size.analyze(results(batch_size.arms(False), seeds, curve))


def find(f, label, metric="test_acc"):
    return next(c for c in f.comparisons if c.label == label and c.metric == metric)


def claims(f):
    return {j.claim.key: j for j in f.primary}


def test_bn_losing_at_small_batches_where_groupnorm_does_not_reproduces_wu_and_he():
    f = study({("bnlab", 2, "epochs"): 0.1})
    j = claims(f)
    gn, rn = j[batch_size.WU_HE.key], j[batch_size.IOFFE.key]
    assert gn.wording == "reproduces" and rn.wording == "reproduces"
    assert gn.comparison.diff == pytest.approx(0.1) and gn.paired
    a, b = gn.comparison.a.values, gn.comparison.b.values
    assert gn.comparison.p == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert f.literature.startswith('Wu & He 2018, "At small batches BN\'s accuracy falls below')
    assert f.literature.count(": reproduces") == 2 and "Ioffe 2017, " in f.literature
    check_families("batch-size", f)  # the runner's check
    # the primary comparison is not repeated in the exploratory family
    assert not any(c.label == "batch 2, equal epochs: GroupNorm vs BN" and
                   c.metric == "test_acc" for c in f.comparisons)
    assert find(f, "batch 2, equal epochs: GroupNorm vs BN", "test_acc_precise").word == "better"
    assert find(f, "batch 8, equal epochs: GroupNorm vs BN").word == "no clear difference"
    assert all(not math.isnan(c.p_holm) for c in f.comparisons if c.testable)


def test_groupnorm_below_bn_contradicts_and_equal_arms_are_not_reproduced():
    f = study({("group", 2, "epochs"): 0.1, ("renorm-fixed", 2, "epochs"): 0.1})
    assert {j.wording for j in f.primary} == {"contradicts"}
    f = study()  # equal arms, 8 seeds: within the +-0.02 margin
    assert {j.wording for j in f.primary} == {"does not reproduce"}
    assert all(j.p_tost < 0.05 for j in f.primary)


def test_a_reference_at_chance_is_never_used():
    """GroupNorm's batch-128 run at chance (as in the committed record): its batch 2 against
    it would read as a large gain; it is not testable instead."""
    f = study(chance={"group-b128"})
    assert not any(c.label.startswith("GroupNorm: batch 2 vs 128") for c in f.comparisons)
    assert ("Not compared, a floor: GroupNorm: batch 2 vs 128, equal epochs (its reference "
            "(GroupNorm, batch 128) at chance); GroupNorm: batch 2 vs 128, equal steps (its "
            "reference (GroupNorm, batch 128) at chance).") in f.verdict
    assert next(r for r in f.rows if r["arm"] == "GroupNorm, batch 128")["at chance"] == "yes"
    assert "GroupNorm, batch 128" in f.headline.split("At chance:")[1]
    # BN's own reference is not at chance: its comparison stands
    assert find(f, "BN: batch 2 vs 128, equal epochs").testable
    # the direct comparison at batch 128 (one arm at chance) is made
    assert find(f, "batch 128: GroupNorm vs BN").word == "worse"


def test_two_arms_at_chance_are_a_floor_not_a_comparison():
    """Under equal steps GroupNorm and (here) BN both sit at chance at batch 2: no comparison,
    and no 'does not reproduce' from two floors."""
    f = study(chance={"group-b2-steps", "bnlab-b2-steps"})
    assert not any(c.label == "batch 2, equal steps: GroupNorm vs BN" for c in f.comparisons)
    assert "batch 2, equal steps: GroupNorm vs BN (both at chance)" in f.verdict
    assert ("equal epochs (none), equal steps (BN, batch 2, equal steps; GroupNorm, batch 2, "
            "equal steps)") in f.verdict


def test_primary_arms_at_chance_are_not_judged_with_the_reason():
    f = study(chance={"group-b2-epochs", "bnlab-b2-epochs"})
    assert f.primary == []  # BN, the reference of both, is at chance
    why = "at batch 2, equal epochs: both at chance"
    assert f.not_judged[batch_size.WU_HE.key] == why
    # the published texts (the runner's lead_texts) lead with each claim not judged and why
    verdict, headline, literature = lead_texts(f)
    named = f"[{batch_size.WU_HE.key}] not judged ({why})"
    assert literature.startswith(f"claim [{batch_size.WU_HE.key}]: not judged ({why})")
    assert headline.startswith(f"Claims: {named}")
    assert verdict.startswith(f"Claims (2 declared, none judged): {named}")
    # said once, by the claims part: the study's own texts do not repeat it
    for text in (verdict, headline, literature):
        assert text.count("not judged") == 2  # the two claims, each once
    # GroupNorm alone at chance: BN is the reference, not GroupNorm, so the claim is judged
    g = study(chance={"group-b2-epochs"})
    assert set(claims(g)) == {batch_size.WU_HE.key, batch_size.IOFFE.key}
    assert claims(g)[batch_size.WU_HE.key].wording == "contradicts"


def test_a_reference_bn_at_chance_judges_no_claim():
    """BN at chance at batch 2 is the reference of both claims: neither is judged (a gain over
    chance is not the papers' claim); Holm's m stays 2 for what is judged."""
    f = study(chance={"bnlab-b2-epochs"})
    assert f.primary == []
    assert set(f.not_judged) == {batch_size.WU_HE.key, batch_size.IOFFE.key}
    assert all("its reference (BN, batch 2, equal epochs) at chance" in w
               for w in f.not_judged.values())
    assert "reproduces" not in f.literature and "reproduces" not in f.headline
    check_families("batch-size", f)


def test_ghost_bn_is_not_measured_from_bn_at_chance():
    f = study(chance={"bnlab-b128"})
    assert not any("Ghost BN" in c.label for c in f.comparisons)
    assert "batch 128: Ghost BN (virtual 32) vs BN (its reference (BN, batch 128) at chance)" \
        in f.verdict


def test_at_chance_uses_the_claims_metric_the_running_averages():
    """One metric for the at-chance rule and the claims: running-average test accuracy.
    Running averages at chance with trained weights (PreciseBN 0.80): the arm is at chance,
    so it is no reference."""
    assert chance.CHANCE_METRIC == batch_size.WU_HE.metric == batch_size.IOFFE.metric
    f = study(lagging={"bnlab-b128"})
    assert next(r for r in f.rows if r["arm"] == "BN, batch 128")["at chance"] == "yes"
    assert not any(c.label.startswith("BN: batch 2 vs 128") for c in f.comparisons)


def test_a_failed_seed_is_counted():
    f = study(nan_arm="group-b2-epochs")
    row = next(r for r in f.rows if r["arm"] == "GroupNorm, batch 2, equal epochs")
    assert row["failed"] == 1 and row["diverged"] == 1 and row["at chance"] == "no"


def test_one_seed_is_never_clear():
    f = study({("bnlab", 2, "epochs"): 0.1}, seeds=1)
    assert all(not c.clear for c in f.comparisons)
    assert all(j.wording.startswith("not testable") for j in f.primary)


def test_arms_share_the_reference_batch_and_match_the_controls():
    arms = {a.name: a for a in batch_size.arms(False)}
    ref = arms["bnlab-b128"].config
    assert ref.limit_train == batch_size.EXAMPLES and ref.lr == 0.5
    steps = ref.limit_train // ref.batch_size
    for b in (2, 8, 32):
        eq_epochs, eq_steps = arms[f"bnlab-b{b}-epochs"].config, arms[f"bnlab-b{b}-steps"].config
        assert eq_epochs.limit_train == batch_size.EXAMPLES and eq_epochs.lr == b / 256
        assert eq_steps.limit_train // b == steps and eq_steps.lr == ref.lr
    assert arms["ghost-b128"].config.batch_size == 128  # Ghost BN is BN at batch <= 32
    assert batch_size.STUDY.seeds == SEEDS and f"{SEEDS} seeds" in batch_size.SETUP
    assert "48 steps at lr 0.5" in batch_size.SETUP


def test_every_comparison_recomputes_from_its_per_seed_values():
    """What test_docs_fresh checks on the published record (``studies.recompute``); arms at
    chance included."""
    f = study({("bnlab", 2, "epochs"): 0.1},
              chance={"group-b128", "group-b2-steps", "bnlab-b2-steps"})
    assert "Not compared, a floor" in f.verdict
    assert differences(record("batch-size", f)) == []
