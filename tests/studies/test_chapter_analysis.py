"""The chapter study's analysis on synthetic runs: tests keyed by (pair, metric), both
evaluations in the headline."""

from bnlab.studies import chapter
from bnlab.studies.claims import EXACT_DISAGREES
from tests.studies.fakes import results


def study(seeds=5, precise=True, lag=0.0):
    """BN 0.05 better than none on both evaluations (unless `lag`: BN's running-average
    accuracy that much lower)."""
    def curve(arm, seed, noise):
        bn = arm.tags["norm"] != "none"
        acc = 0.80 + 0.005 * noise + (0.05 if bn else 0.0)
        row = {"epoch": 1, "train_loss": 0.6 - 0.01 * noise - (0.1 if bn else 0.0),
               "test_acc": acc - (lag if bn else 0.0)}
        if bn and (precise or arm.tags["model"] != "mlp"):
            row["test_acc_precise"] = acc
        return [row]

    return chapter.analyze(results(chapter.arms(False), seeds, curve))


def test_one_seed_tests_nothing_and_prints_no_nan():
    f = study(seeds=1)
    assert "+nan" not in f.verdict and "+nan" not in f.headline
    assert "(better)" not in f.verdict and "not testable" in f.verdict


def test_bnlab_against_torch_is_not_an_arm_here():
    """The twin is the study reproduce's (the same LeNet-BN from identical weights, per
    epoch): the chapter compares each network with and without BN only."""
    assert {a.config.norm for a in chapter.arms(False)} == {"none", "bnlab"}
    assert "torch" not in study().verdict and "torch" not in study().headline


def test_an_arm_without_precise_does_not_shift_the_labels():
    f = study(precise=False)
    mlp = f.verdict.split("MLP: ")[1].split("; CNN: ")[0]
    assert "PreciseBN" not in mlp and "train loss" in mlp
    cnn = f.verdict.split("CNN: ")[1]
    assert cnn.startswith("train loss") and "with PreciseBN statistics" in cnn


def test_headline_uses_both_evaluations():
    f = study(lag=0.05)  # running averages lag: level with no BN; PreciseBN: better
    assert ("LeNet the two evaluations disagree (running averages: no clear difference; "
            "PreciseBN: better)") in f.headline
    assert "LeNet better" not in f.headline
    assert "MLP better" not in study(lag=0.05).headline
    assert "CNN better" in study().headline


def test_claims_one_per_network_on_train_loss():
    f = study(seeds=10)
    assert [j.claim.key for j in f.primary] == ["lenet-bn-trains-faster",
                                               "mlp-bn-trains-faster", "cnn-bn-trains-faster"]
    assert all(j.comparison.metric == "train_loss" and j.claim.direction == -1
               for j in f.primary)
    assert [j.wording for j in f.primary] == ["reproduces"] * 3
    assert all(c.metric != "train_loss" for c in f.exploratory)  # accuracy only
    assert f.literature.count("reproduces") == 3
    # five paired seeds: the sign-flip floor (0.0625, times 3 claims) calls nothing
    assert {j.wording for j in study(seeds=5).primary} == {EXACT_DISAGREES}


def test_the_precise_comparison_says_an_arm_without_bn_counts_its_plain_accuracy():
    """BN's PreciseBN accuracy is compared with no BN's plain one (no statistics to
    re-estimate): the comparisons table says so; the arms table's column is PreciseBN's."""
    from bnlab.studies.base import comparisons_table, markdown_table

    f = study()
    table = comparisons_table(f.exploratory)
    assert "| LeNet: BN vs none | test acc (PreciseBN; plain for an arm without BN) |" in table
    assert "test acc (PreciseBN) (mean +- std)" in markdown_table(f.rows)
