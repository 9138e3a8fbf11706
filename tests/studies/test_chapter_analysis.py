"""The chapter study's analysis on synthetic runs: tests keyed by (pair, metric), both
evaluations in the headline, bnlab vs torch worded with its direction."""

from bnlab.studies import chapter
from bnlab.studies.claims import EXACT_DISAGREES
from tests.studies.fakes import results


def study(seeds=5, precise=True, lag=0.0, twin=0.0):
    """BN 0.05 better than none on both evaluations (unless `lag`: BN's running-average
    accuracy that much lower), bnlab `twin` above torch."""
    def curve(arm, seed, noise):
        bn = arm.tags["norm"] != "none"
        acc = 0.80 + 0.005 * noise + (0.05 if bn else 0.0) + \
            (twin if arm.name == "lenet-bnlab" else 0.0)
        row = {"epoch": 1, "train_loss": 0.6 - 0.01 * noise - (0.1 if bn else 0.0),
               "test_acc": acc - (lag if bn else 0.0)}
        if bn and (precise or arm.tags["model"] != "mlp"):
            row["test_acc_precise"] = acc
        return [row]

    return chapter.analyze(results(chapter.arms(False), seeds, curve))


def test_one_seed_names_the_direction_and_no_nan():
    f = study(seeds=1)
    assert "+nan" not in f.verdict and "+nan" not in f.headline
    assert "bnlab - torch = " in f.verdict and "(better)" not in f.verdict
    assert "bnlab - torch = +0.0000 in test accuracy (not testable" in f.headline


def test_twin_difference_names_which_is_higher():
    f = study(twin=0.02)
    assert "bnlab - torch = +0.0200 in test accuracy (bnlab's clearly higher" in f.verdict


def test_an_arm_without_precise_does_not_shift_the_labels():
    f = study(precise=False)
    mlp = f.verdict.split("MLP: ")[1].split("; CNN: ")[0]
    assert "PreciseBN" not in mlp and "train loss" in mlp
    cnn = f.verdict.split("CNN: ")[1]
    assert cnn.startswith("train loss") and "with PreciseBN statistics" in cnn
    assert "bnlab - torch = +0.0000" in f.verdict


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
    assert all(c.metric != "train_loss" for c in f.exploratory)  # accuracy and the twin
    assert f.literature.count("reproduces") == 3
    # five paired seeds: the sign-flip floor (0.0625, times 3 claims) calls nothing
    assert {j.wording for j in study(seeds=5).primary} == {EXACT_DISAGREES}
