"""The notebooks' comparisons end to end: does BN help each of the chapter's networks?

LeNet without BN (the LeNet chapter's) vs LeNet-BN (the BN chapter's recipe), and the MNIST
notebook's MLP and small CNN with and without BN (its recipe: SGD lr 0.1, batch 32), all on
Fashion-MNIST by default. Each pair is tested on the final train loss (the claim, one per
network, ``CLAIMS``) and on test accuracy, with the running averages and with PreciseBN
statistics (exploratory; ``bnlab.studies.claims``). bnlab's BatchNorm against torch's is the
study ``reproduce`` (the same LeNet-BN from identical weights, per epoch; one seed unless
``--seeds`` says more) and the test suite's (per step, to float rounding), not an arm here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bnlab.report.figures import plot_accuracy_and_loss
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    accuracy_text,
    summarize,
)
from bnlab.studies.claims import Claim, exploratory, judge, literature_text
from bnlab.studies.stats import Comparison
from bnlab.studies.wording import fair_word
from bnlab.train import TrainConfig


def arms(quick: bool) -> list[Arm]:
    lenet = TrainConfig(model="lenet-bn", epochs=1 if quick else 5,
                        limit_train=2048 if quick else None, limit_test=1000 if quick else None)
    small = TrainConfig(epochs=1 if quick else 3, batch_size=32, lr=0.1,
                        limit_train=1024 if quick else None, limit_test=1000 if quick else None)
    spec = [
        ("lenet-none", "LeNet, no BN", replace(lenet, model="lenet", norm="none", lr=0.9)),
        ("lenet-bnlab", "LeNet-BN", replace(lenet, norm="bnlab")),
        ("mlp-none", "MLP, no BN", replace(small, model="mlp", norm="none")),
        ("mlp-bnlab", "MLP + BN", replace(small, model="mlp", norm="bnlab")),
        ("cnn-none", "small CNN, no BN", replace(small, model="cnn", norm="none")),
        ("cnn-bnlab", "small CNN + BN", replace(small, model="cnn", norm="bnlab")),
    ]
    return [Arm(name, label, config, {"model": config.model, "norm": config.norm})
            for name, label, config in spec]

PAIRS = [("LeNet", "lenet-none", "lenet-bnlab"), ("MLP", "mlp-none", "mlp-bnlab"),
         ("CNN", "cnn-none", "cnn-bnlab")]
# The literature claims tested, one per network (``bnlab.studies.claims``): BN trains faster,
# i.e. a lower training loss after the same epochs. Margin: 0.02 nats of cross-entropy, about
# a tenth of the gaps the chapter's notebooks print. Test accuracy is exploratory.
LOSS_MARGIN = 0.02
CLAIMS = {name: Claim(f"{name.lower()}-bn-trains-faster", f"With BN the {name} reaches a lower "
                      f"training loss in the same number of epochs", source, "train_loss", -1,
                      LOSS_MARGIN, "no BN", "BN")
          for name, source in (("LeNet", "d2l, Batch Normalization chapter"),
                               ("MLP", "Ioffe & Szegedy 2015"),
                               ("CNN", "Ioffe & Szegedy 2015"))}


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {r.arm.name: r for r in results}
    primary = judge([(CLAIMS[name], by[off].finals("train_loss"), by[on].finals("train_loss"),
                      by[off].paired_with(by[on])) for name, off, on in PAIRS])
    keyed: list[tuple[tuple[str, str], Comparison]] = []
    for name, off, on in PAIRS:
        keyed += [((name, c.metric), c)
                  for c in accuracy_comparisons(by[off], by[on], f"{name}: BN vs none")]
    tests = exploratory([c for _, c in keyed])
    t = {k: c for (k, _), c in zip(keyed, tests, strict=True)}
    t.update({(name, "train_loss"): j.comparison
              for (name, _, _), j in zip(PAIRS, primary, strict=True)})
    claim = {name: j.wording for (name, _, _), j in zip(PAIRS, primary, strict=True)}
    parts = []
    for name, _, _ in PAIRS:
        loss, acc, precise = (t[(name, "train_loss")], t[(name, "test_acc")],
                              t.get((name, "test_acc_precise")))
        parts.append(f"{name}: train loss {loss.a.mean:.3f} -> {loss.b.mean:.3f} "
                     f"({claim[name]}), {accuracy_text(acc, precise)}")
    # the fair accuracy: both evaluations, 'better'/'worse' only when they agree
    acc_words = {name: fair_word([t[(name, "test_acc")], t.get((name, "test_acc_precise"))])
                 for name, _, _ in PAIRS}
    headline = ("BN's final train loss vs none: " + ", ".join(
        f"{name} {t[(name, 'train_loss')].a.mean:.3f} -> {t[(name, 'train_loss')].b.mean:.3f} "
        f"({claim[name]})" for name, _, _ in PAIRS)
        + "; test accuracy (running averages and PreciseBN) "
        + ", ".join(f"{name} {acc_words[name]}" for name, _, _ in PAIRS))
    literature = literature_text(primary)
    verdict = ("With BN (exploratory: paired t over seeds, Holm over the exploratory family; "
               "'better' needs p < 0.05): "
               + "; ".join(parts) + ".")

    def plot(path: Path) -> None:
        plot_accuracy_and_loss(
            rows, path, f"The chapter's networks with and without BN (mean +- sample std, "
            f"{len(results[0].runs)} seeds)")

    return Findings(rows, verdict, plot, tests, headline, literature, primary)


STUDY = Study(
    "chapter", "Does BN help each of the chapter's networks?", arms, analyze,
    needs="it compares the chapter's networks themselves",
    setup="LeNet without BN (the LeNet chapter's: lr 0.9) against LeNet-BN with bnlab's "
    "BatchNorm (the BN chapter's recipe: lr 1.0), 5 epochs, batch 256, plain "
    "SGD, Xavier init; the MNIST notebook's MLP (784-100-10) and small ReLU CNN with and "
    "without BN (its recipe: SGD lr 0.1, batch 32), 3 epochs. Full Fashion-MNIST, 8 seeds; "
    "seed s of every arm sees the same batches, so the tests are paired. Compared per "
    "network: final train loss, and test accuracy with running averages and with PreciseBN "
    "statistics. bnlab's BatchNorm against torch's: the study reproduce.",
    caveats="Budgets are shorter than the notebooks' (5 and 3 epochs instead of 10) to fit "
    "the study in 10 minutes on two cores. The notebooks ran the MLP and CNN on "
    "MNIST digits, which are not installable here (`--data-dir` takes them where they "
    "exist).")
