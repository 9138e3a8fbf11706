"""weight-decay-on-norm: the optimizer's groups, the probe, the analysis on synthetic runs (no
training) and a --quick run end to end."""

import math
import random
from dataclasses import replace

import pytest
import torch
from torch import nn

from bnlab.norm.renormalize import is_norm_layer
from bnlab.studies import weight_decay as wd
from bnlab.studies.base import ArmResult, run_study
from bnlab.studies.claims import EXACT_DISAGREES
from bnlab.studies.probes.weight_decay import PreNormProbe, pre_norm_norms
from bnlab.train import TrainConfig
from bnlab.train.build import make_model, make_optimizer
from tests.studies.fakes import FakeRun

SEEDS = wd.STUDY.seeds


def by_order(model: nn.Module) -> set[str]:
    """An oracle independent of the fx dataflow, for networks whose children are registered
    in the order they run (LeNet, bnlab's ResNet blocks): each conv/linear weight whose next
    conv/linear/norm module in ``named_modules`` order is a norm layer."""
    found, feeding = set(), None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            feeding = f"{name}.weight"
        elif is_norm_layer(m):
            if feeding is not None:
                found.add(feeding)
            feeding = None
    return found


@pytest.mark.parametrize("arm", wd.arms(False), ids=lambda a: a.name)
def test_each_arm_decays_exactly_what_its_label_says(arm):
    config = replace(arm.config, dataset="fake-fashion-mnist") \
        if arm.config.dataset == "fashion-mnist" else arm.config
    model = make_model(config)
    names = {id(p): n for n, p in model.named_parameters()}
    spared = {names[id(p)] for g in make_optimizer(config, model).param_groups
              if g["weight_decay"] == 0 for p in g["params"]}
    decayed = {names[id(p)] for g in make_optimizer(config, model).param_groups
               if g["weight_decay"] == config.weight_decay > 0 for p in g["params"]}
    norm = {f"{n}.{k}" for n, m in model.named_modules() if is_norm_layer(m)
            for k, _ in m.named_parameters(recurse=False)}
    before = by_order(model)
    assert len(before) == (4 if arm.tags["net"] == "lenet-bn" else 20)  # one per BN layer
    expect = (set() if arm.tags["decay_norm"] else norm) | (
        set() if arm.tags["decay_before"] else before)
    assert spared == expect
    assert decayed == set(names.values()) - expect
    assert any("bias" in n for n in decayed)  # biases always decay (only the factors vary)


def test_probe_reads_the_norms_and_changes_nothing():
    torch.manual_seed(0)
    model = make_model(TrainConfig(model="lenet-bn", dataset="fake-fashion-mnist"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = PreNormProbe(1)(model, torch.rand(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))
    params = dict(model.named_parameters())
    weights = sorted(by_order(model), key=list(params).index)
    for i, name in enumerate(weights):
        assert out[f"w_norm_{i}"] == pytest.approx(float(params[name].detach().norm()), rel=1e-6)
    assert out["w_norm"] == pytest.approx(math.sqrt(sum(
        float(params[n].detach().double().square().sum()) for n in weights)), rel=1e-12)
    gammas = [m.weight for m in model.modules() if is_norm_layer(m)]
    assert out["gamma_norm"] == pytest.approx(float(torch.cat(
        [g.detach().flatten() for g in gammas]).norm()), rel=1e-6)
    assert out == pre_norm_norms(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_decay_on_a_weight_before_bn_only_shrinks_it():
    """The premise, in float64: the gradient of a weight before BN is orthogonal to it, so one
    SGD step with decay gives ||W'||^2 = (1 - lr wd)^2 ||W||^2 + lr^2 ||g||^2 exactly, and the
    network's output does not change when W is rescaled. (BN's eps breaks the invariance by
    about eps / Var[Wx]: a tiny eps shows the exact premise.)"""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 5, padding=2).double()
    bn = nn.BatchNorm2d(6, eps=1e-14).double()
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    out = bn(conv(x))
    (out * torch.randn_like(out)).sum().backward()  # (mean(out^2) would be constant: 1)
    w, g = conv.weight.detach(), conv.weight.grad
    assert float((w * g).sum()) == pytest.approx(0.0, abs=1e-12 * float(w.norm() * g.norm()))
    lr, decay = 1.0, 1e-2
    stepped = (1 - lr * decay) * w - lr * g
    assert float(stepped.square().sum()) == pytest.approx(
        (1 - lr * decay) ** 2 * float(w.square().sum()) + lr ** 2 * float(g.square().sum()),
        rel=1e-12)
    with torch.no_grad():
        conv.weight.mul_(3.0)
        conv.bias.mul_(3.0)
    assert torch.allclose(bn(conv(x)), out, atol=1e-9)


def fake(w_norm, acc, seeds=SEEDS):
    """`w_norm(tags)` / `acc(tags)`: each arm's final W-norm and test accuracy; seeds scatter
    by a shared offset plus a small per-arm jitter (paired differences have a spread)."""
    out = []
    for k, arm in enumerate(wd.arms(False)):
        rng = random.Random(k)
        runs = []
        for s in range(seeds):
            shared = 0.01 * (s - seeds // 2)
            a = acc(arm.tags) + shared + 0.002 * rng.uniform(-1, 1)
            w = w_norm(arm.tags) * (1 + shared + 0.003 * rng.uniform(-1, 1))
            probes = [{"step": step, "epoch": 1, "w_norm": v, "w_norm_0": v / 2,
                       "w_norm_1": v * math.sqrt(3) / 2, "gamma_norm": 15.0, "beta_norm": 0.1}
                      for step, v in ((0, 16.0), (3, w))]
            metrics = [{"epoch": 1, "train_loss": 0.5, "test_acc": a}]
            runs.append(FakeRun(replace(arm.config, seed=s), metrics, probes))
        out.append(ArmResult(arm, runs))  # type: ignore[arg-type]
    return out


def words(results):
    return {j.claim.key: j.wording for j in wd.primary(results)}


def test_decay_shrinks_w_and_accuracy_equal_within_the_margin(tmp_path):
    results = fake(lambda t: 10.0 if t["decay_before"] else 14.0, lambda t: 0.80)
    assert words(results) == {"decay-shrinks-w": "reproduces",
                              "decay-before-norm-helps": "does not reproduce",
                              "no-decay-on-gamma-beta": "does not reproduce"}
    findings = wd.analyze(results)
    assert [j.wording for j in findings.primary] == ["reproduces", "does not reproduce",
                                                     "does not reproduce"]
    assert findings.literature.startswith('van Laarhoven 2017, "Weight decay on the weights')
    assert findings.literature.count(": does not reproduce") == 2
    assert findings.headline and "Exploratory" in findings.verdict
    assert "reproduce" not in findings.verdict  # exploratory comparisons are never worded so
    findings.plot(tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["arm"]: r for r in findings.rows}
    assert rows["LeNet-BN, decay on all"]["W-norm before norm"] == pytest.approx(10.0, rel=0.02)
    # lr / ||W_l||^2, geometric mean over the layers: ||W_0|| = w/2, ||W_1|| = w*sqrt(3)/2
    step = rows["LeNet-BN, no decay before norm"]["lr / W-norm^2"]
    assert step == pytest.approx(1.0 / (14.0 ** 2 * math.sqrt(3) / 4), rel=0.05)


def test_the_claims_flip_when_the_data_go_the_other_way():
    results = fake(lambda t: 14.0 if t["decay_before"] else 10.0,
                   lambda t: 0.80 - 0.05 * t["decay_before"] - 0.05 * (not t["decay_norm"]))
    assert words(results) == {"decay-shrinks-w": "contradicts",
                              "decay-before-norm-helps": "contradicts",
                              "no-decay-on-gamma-beta": "contradicts"}
    better = fake(lambda t: 10.0, lambda t: 0.80 + 0.05 * t["decay_before"]
                  + 0.05 * (not t["decay_norm"]))
    assert words(better)["decay-before-norm-helps"] == "reproduces"
    assert words(better)["no-decay-on-gamma-beta"] == "reproduces"


def test_too_few_seeds_is_not_shown_never_a_verdict():
    # 5 seeds: the exact sign-flip test cannot pass Holm over three claims (3 * 2/32 > 0.05)
    results = fake(lambda t: 10.0 if t["decay_before"] else 14.0, lambda t: 0.80, seeds=5)
    assert set(words(results).values()) <= {"not shown", EXACT_DISAGREES,
                                            "does not reproduce"}
    assert words(results)["decay-shrinks-w"] == EXACT_DISAGREES


def test_exploratory_family_is_separate_from_the_claims():
    results = fake(lambda t: 10.0 if t["decay_before"] else 14.0, lambda t: 0.80)
    explored = wd.exploratory_comparisons(results)
    assert {c.label.split(",")[0] for c in explored} == {"LeNet-BN", "ResNet-18"}
    assert len(explored) == 3 * 3 + 1 * 3  # 3 LeNet arms and 1 ResNet arm vs decay on all
    resnet_w = [c for c in explored if c.label.startswith("ResNet")
                and c.metric == wd.W_METRIC + wd.LARGER]
    assert resnet_w[0].diff > 0 and resnet_w[0].clear  # no decay before norm: a larger norm
    verdict = wd.verdict_text(results, explored)
    assert "ResNet-18, no decay before norm vs ResNet-18, decay on all: log10 W-norm before " \
        "norm +0." in verdict and ", larger;" in verdict and "better" not in verdict


def test_quick_run_end_to_end(tmp_path):
    """--quick into tmp (Fashion-MNIST's synthetic twin stands in for LeNet's data, so the test
    runs offline). One step in, the arms that differ in one factor differ exactly there: the
    decayed W is smaller, and gamma is the same where only the decay before norm differs."""
    def arms(quick):
        return [replace(a, config=replace(a.config, dataset="fake-fashion-mnist"))
                if a.config.dataset == "fashion-mnist" else a for a in wd.arms(quick)]

    study = replace(wd.STUDY, arms=arms)
    findings = run_study(study, tmp_path, quick=True, threads=2, progress=False,
                         log=lambda m: None)
    for name in ("figure.png", "table.md", "verdict", "study.json"):
        assert (tmp_path / name).is_file()
    assert findings.verdict.startswith("[quick mode")
    from bnlab.train import Run

    def second(arm):  # the probe after one update (probes every step in quick mode)
        return Run(tmp_path / "runs" / f"{arm}-s0").probes[1]

    for net, layers in (("lenet", 4), ("resnet", 20)):
        all_, no_pre = second(f"{net}-all"), second(f"{net}-no-pre")
        assert sum(k.startswith("w_norm_") for k in all_) == layers
        assert all_["w_norm"] < no_pre["w_norm"]
        assert all_["gamma_norm"] == pytest.approx(no_pre["gamma_norm"], rel=1e-6)
    no_norm = second("lenet-no-norm")
    assert no_norm["w_norm"] == pytest.approx(second("lenet-all")["w_norm"], rel=1e-6)
    assert no_norm["gamma_norm"] != pytest.approx(second("lenet-all")["gamma_norm"], rel=1e-6)
