"""A claim's statement, and a setup's rule, say exactly what the code tests: no more."""

from __future__ import annotations

import math

import pytest

from bnlab.studies import lr
from bnlab.studies import weight_decay as wd
from bnlab.train.build import make_model, make_optimizer

LN10 = math.log(10)


def test_no_decay_on_gamma_beta_says_the_biases_still_decay():
    """The arm that spares the norm layers decays every bias (the optimizer's groups), so the
    claim names gamma and beta only and says the biases decay."""
    (arm,) = [a for a in wd.arms(True) if a.name == "lenet-no-norm"]
    model = make_model(arm.config)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = [names[id(p)] for g in make_optimizer(arm.config, model).param_groups
              if g["weight_decay"] == 0 for p in g["params"]]
    decayed = [names[id(p)] for g in make_optimizer(arm.config, model).param_groups
               if g["weight_decay"] > 0 for p in g["params"]]
    assert spared and any(n.endswith(".bias") for n in decayed)
    statement = {c.key: c.statement for c in wd.CLAIMS}
    assert "every bias still decays" in statement["no-decay-on-gamma-beta"]
    assert "(and the biases)" not in statement["no-decay-on-gamma-beta"]


def test_weight_decay_claims_state_only_what_is_measured():
    statement = {c.key: c.statement for c in wd.CLAIMS}
    assert statement["decay-shrinks-w"] == \
        "Weight decay on the weights before a BN shrinks their norm."
    assert statement["decay-before-norm-helps"] == \
        "Weight decay on the weights before a BN improves test accuracy."
    for text in statement.values():
        assert "only" not in text and "effective" not in text and "through" not in text


def test_lr_setup_states_the_rule_classify_applies():
    rule = (f"final train loss at least ln 10 - {lr.PLATEAU_MARGIN:g} and at most ln 10 + "
            f"{lr.DIVERGED_MARGIN:g}, and test accuracy at most {lr.FAILED_ACCURACY:g}")
    assert rule in lr.SETUP and "within" not in lr.SETUP
    assert f"above ln 10 + {lr.DIVERGED_MARGIN:g}" in lr.SETUP


@pytest.mark.parametrize(("loss", "acc", "state"), [
    (LN10 + lr.DIVERGED_MARGIN - 1e-9, lr.FAILED_ACCURACY, "stuck"),  # far above ln 10: stuck
    (LN10 + lr.DIVERGED_MARGIN + 1e-9, 0.9, "blew up"),
    (LN10 - lr.PLATEAU_MARGIN, lr.FAILED_ACCURACY, "stuck"),  # the lower bound is included
    (LN10 - lr.PLATEAU_MARGIN - 1e-9, lr.FAILED_ACCURACY, "trains"),
    (LN10, lr.FAILED_ACCURACY + 1e-9, "trains"),
    (math.nan, 0.1, "diverged")])
def test_classify_follows_the_stated_rule(loss: float, acc: float, state: str):
    assert lr.classify([loss], acc) == state
