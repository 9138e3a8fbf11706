"""Small batches: BN's statistics get noisy; which remedy holds up?

BN, Ghost BN, Batch Renorm (rmax = 3, dmax = 5 from the first step: these runs are far shorter
than the paper's 5k-step warm-up), GroupNorm, LayerNorm and no normalization on the chapter's
LeNet, at batch sizes B in {2, 8, 32, 128}, under two controls:

* **equal epochs** (Wu & He 2018's comparison): every batch size sees the same N examples once,
  with the learning rate scaled linearly, lr = B / 256. Small batches take N / B steps, many
  more than large ones: a layer that gains from more steps peaks at small B by design.
* **equal steps**: every batch size takes the same S = N / 128 steps at the same learning rate,
  0.5 (batch 128's in the first control; its arm is shared by both). Small batches then see
  fewer examples (S * B) with noisier gradients: a layer that gains from more data peaks at
  large B by design.

A loss of accuracy at small batches that only BN-like layers show, under *both* controls, is
the statistics' noise rather than the step or example budget. Ghost BN (Hoffer et al. 2017)
normalizes virtual batches of 32 (``GhostBatchNorm``'s default): at B <= 32 it is BN exactly
(same code path, same numbers), so it runs only at B = 128, where it isolates the statistics'
batch size (32 instead of 128) at the same steps, examples and gradients.

Verdict: each layer at the smallest batch against its own batch 128, under each control, on
test accuracy with the running averages and, for layers with running statistics, with PreciseBN
statistics (Welch t: the batch sizes see different batches); Ghost BN against BN at batch 128
(paired t). The literature's claims are about an interaction (BN loses *more* than GroupNorm;
Batch Renorm loses *less* than BN), so they are tested as one: per seed, each layer's drop
acc(batch 2) - acc(batch 128) under equal epochs against BN's drop, paired over seeds (arms at
the same batch size share seeds and batches). All comparisons Holm-corrected together; a layer
whose own drop is not clear is never read as "does not lose accuracy".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bnlab.report.figures import new_figure, save
from bnlab.studies.base import (
    Arm,
    ArmResult,
    Findings,
    Study,
    accuracy_comparisons,
    accuracy_text,
    ran_on,
    summarize,
)
from bnlab.studies.stats import Comparison, compare, holm
from bnlab.train import TrainConfig

NORMS = {"bnlab": "BN", "renorm-fixed": "Batch Renorm", "group": "GroupNorm",
         "layer": "LayerNorm", "none": "no norm"}
GHOST = "ghost"
BATCHES = (2, 8, 32, 128)
EXAMPLES = 6144  # N: equal epochs' training examples; equal steps: S = N / reference batch
CONTROLS = {"epochs": "equal epochs", "steps": "equal steps"}


def arms(quick: bool) -> list[Arm]:
    batches = (4, 64) if quick else BATCHES
    ref = batches[-1]
    n = 512 if quick else EXAMPLES
    steps = n // ref
    base = TrainConfig(model="lenet-bn", epochs=1, limit_test=1000 if quick else 5000)

    def arm(norm: str, b: int, control: str) -> Arm:
        label = "Ghost BN (virtual 32)" if norm == GHOST else NORMS[norm]
        if control == "epochs":
            kw = {"limit_train": n, "lr": b / 256}
        else:
            kw = {"limit_train": steps * b, "lr": ref / 256}
        cfg = TrainConfig(**{**base.to_dict(), "norm": norm, "batch_size": b, **kw})
        # batch `ref` is the same run under both controls: one arm, control "both"
        both = b == ref
        return Arm(f"{norm}-b{b}" + ("" if both else f"-{control}"),
                   f"{label}, batch {b}" + ("" if both else f", {CONTROLS[control]}"), cfg,
                   {"norm": norm, "batch": b, "control": "both" if both else control})

    out = []
    for norm in NORMS:
        out += [arm(norm, b, "epochs") for b in batches]
        out += [arm(norm, b, "steps") for b in batches[:-1]]
    out.append(arm(GHOST, ref, "epochs"))
    return out


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {(r.arm.tags["norm"], r.arm.tags["batch"], r.arm.tags["control"]): r
          for r in results}
    batches = sorted({k[1] for k in by})
    small, ref = batches[0], batches[-1]
    ran = [n for n in NORMS if (n, ref, "both") in by]  # a user's net: maybe BN only

    def at(norm: str, b: int, control: str) -> ArmResult:
        return by[(norm, b, "both" if b == ref else control)]

    groups: list[tuple[str, str, list[Comparison]]] = []  # (norm, control, its tests)
    for norm in ran:
        for control in CONTROLS:
            if (norm, small, control) in by:
                label = f"{NORMS[norm]}: batch {small} vs {ref}, {CONTROLS[control]}"
                groups.append((norm, control, accuracy_comparisons(
                    at(norm, ref, control), at(norm, small, control), label)))
    if (GHOST, ref, "both") in by and ("bnlab", ref, "both") in by:
        groups.append((GHOST, "both", accuracy_comparisons(
            by[("bnlab", ref, "both")], by[(GHOST, ref, "both")],
            f"batch {ref}: Ghost BN (virtual 32) vs BN")))
    # The interaction the literature is about: per seed, each layer's drop (batch `small`
    # minus batch `ref`, equal epochs) against BN's, paired (same seeds and batches).
    drops: dict[str, list[Comparison]] = {}
    if ("bnlab", small, "epochs") in by:
        for norm in ("group", "renorm-fixed"):
            if norm in ran and (norm, small, "epochs") in by:
                drops[norm] = drop_comparisons(
                    at("bnlab", small, "epochs"), at("bnlab", ref, "epochs"),
                    at(norm, small, "epochs"), at(norm, ref, "epochs"),
                    f"drop at batch {small} (vs {ref}), equal epochs: {NORMS[norm]} vs BN")
    flat = holm([c for _, _, cs in groups for c in cs] + [c for cs in drops.values() for c in cs])
    it = iter(flat)
    groups = [(n, c, [next(it) for _ in cs]) for n, c, cs in groups]
    drops = {n: [next(it) for _ in cs] for n, cs in drops.items()}

    parts: list[str] = []
    survives: dict[str, dict[str, bool]] = {}
    for norm, control, cs in groups:
        if norm == GHOST:
            continue
        running, precise = cs[0], (cs[1] if len(cs) > 1 else None)
        parts.append(f"{NORMS[norm]}, {CONTROLS[control]}: {accuracy_text(running, precise)}")
        survives.setdefault(norm, {})[control] = _worse(cs)
    verdict = (f"Test accuracy at batch {small} against the same layer at batch {ref} "
               f"(Welch t over seeds, Holm-corrected; 'worse' means batch {small} is clearly "
               f"lower): " + "; ".join(parts) + ".")
    verdict += " " + _survival(survives, small)
    ghost = next((cs for n, _, cs in groups if n == GHOST), None)
    if ghost:
        verdict += (f" Ghost BN (statistics of 32) against BN (statistics of {ref}) at batch "
                    f"{ref}: {accuracy_text(ghost[0], ghost[1] if len(ghost) > 1 else None)}.")
    headline = _survival(survives, small)
    literature = _literature(survives, small, all(c.testable for c in flat), drops)
    n_seeds = max(len(r.runs) for r in results)

    def plot(path: Path) -> None:
        _plot(by, ran, batches, path, n_seeds, ran_on(results))

    return Findings(rows, verdict, plot, flat, headline, literature)


def drop_comparisons(bn_small: ArmResult, bn_ref: ArmResult, small: ArmResult, ref: ArmResult,
                     label: str) -> list[Comparison]:
    """Per seed, drop = acc(small batch) - acc(reference batch) of the layer and of BN; the
    layer's drop against BN's, paired over seeds when the layer's arms share seeds and batches
    with BN's at each batch size (Welch otherwise), on test accuracy with the running averages
    and, where BN has them, with PreciseBN statistics. 'better': the layer loses clearly less
    than BN."""
    metrics = ["test_acc"] + (["test_acc_precise"] if bn_small.has("test_acc_precise") else [])
    # seed s's drops share their batches when the layer's arms share BN's at each batch size
    paired = bn_small.paired_with(small) and bn_ref.paired_with(ref)
    out = []
    for metric in metrics:
        bn = [s - r for s, r in zip(bn_small.fair_finals(metric), bn_ref.fair_finals(metric),
                                    strict=True)]
        other = [s - r for s, r in zip(small.fair_finals(metric), ref.fair_finals(metric),
                                       strict=True)]
        out.append(compare(bn, other, metric=metric, label=label, paired=paired))
    return out


def _drop_word(cs: list[Comparison] | None) -> str:
    """'smaller' (the layer's drop is clearly smaller than BN's on every accuracy), 'larger',
    'untestable', 'unclear' or 'absent' (not run)."""
    if cs is None:
        return "absent"
    if not all(c.testable for c in cs):
        return "untestable"
    if all(c.word == "better" for c in cs):
        return "smaller"
    if all(c.word == "worse" for c in cs):
        return "larger"
    return "unclear"


def _worse(cs: list[Comparison]) -> bool:
    """The small batch is clearly worse on every accuracy tested (running averages and, where
    the layer has them, PreciseBN statistics): the fair accuracy."""
    return all(c.word == "worse" for c in cs)


def _survival(survives: dict[str, dict[str, bool]], small: int) -> str:
    """Which layers lose accuracy at the smallest batch, and under which controls."""
    def names(pred: Callable[[dict[str, bool]], bool]) -> str:
        out = [NORMS[n] for n, s in survives.items() if pred(s)]
        return ", ".join(out) if out else "none"

    return (f"Clearly worse at batch {small} under both controls: "
            f"{names(lambda s: all(s.values()) and len(s) == 2)}; under equal epochs only: "
            f"{names(lambda s: bool(s.get('epochs')) and not s.get('steps'))}; under equal "
            f"steps only: {names(lambda s: bool(s.get('steps')) and not s.get('epochs'))}.")


def _literature(survives: dict[str, dict[str, bool]], small: int, testable: bool,
                drops: dict[str, list[Comparison]] | None = None) -> str:
    """Wu & He 2018: BN degrades at small batches, GroupNorm (and LayerNorm) do not; Ioffe
    2017: Batch Renorm reduces the degradation. Both are claims about the *difference* of
    drops (an interaction), so they are decided by the paired test of each layer's drop
    against BN's, never by a layer's own drop not being clear (absence of evidence)."""
    drops = drops or {}
    if "bnlab" not in survives:
        return "Not tested: BN did not run on this network."
    if not testable:
        return ("Not tested against Wu & He 2018 (BN loses accuracy at small batches, "
                "GroupNorm does not): fewer than two usable seeds per arm.")
    bn = survives["bnlab"].get("epochs", False)
    gn_own = survives.get("group", {}).get("epochs")
    gn = _drop_word(drops.get("group"))
    rn = _drop_word(drops.get("renorm-fixed"))
    claim = ("Wu & He 2018 (BN loses accuracy at small batches, GroupNorm does not) under "
             "their equal-epochs control")
    gn_self = ("GroupNorm is clearly worse there too" if gn_own else
               "GroupNorm's own drop is not clear (not shown to be absent)")
    if gn == "absent":
        head = (f"{'Partly agrees with' if bn else 'Does not reproduce'} {claim}: at batch "
                f"{small} BN is {'' if bn else 'not '}clearly worse; GroupNorm did not run")
    elif gn == "untestable":
        head = (f"Cannot test {claim}: GroupNorm's drop against BN's is not testable "
                f"({drops['group'][0].test})")
    elif bn and gn == "smaller":
        head = (f"Agrees with {claim}: at batch {small} BN is clearly worse, and its drop is "
                f"clearly larger than GroupNorm's ({gn_self})")
    elif bn:
        how = ("GroupNorm drops clearly more" if gn == "larger" else
               "no clear difference of the drops")
        head = (f"Partly agrees with {claim}: at batch {small} BN is clearly worse, but its "
                f"drop is not shown to be larger than GroupNorm's ({how}; {gn_self})")
    else:
        head = f"Does not reproduce {claim}: at batch {small} BN is not clearly worse"
    if rn == "absent":
        renorm = ""
    elif rn == "untestable":
        renorm = "; Batch Renorm's drop against BN's (Ioffe 2017) cannot be tested"
    elif rn == "smaller":
        renorm = "; Batch Renorm's drop is clearly smaller than BN's, as Ioffe 2017 claims"
    elif rn == "larger":
        renorm = "; Batch Renorm's drop is clearly larger than BN's, against Ioffe 2017"
    else:
        renorm = ("; Batch Renorm's drop is not shown to be smaller than BN's (Ioffe 2017's "
                  "claim not shown" + ("; it is clearly worse at that batch itself)"
                                       if survives.get("renorm-fixed", {}).get("epochs")
                                       else ")"))
    return head + renorm + "."


def _plot(by: dict[tuple[str, int, str], ArmResult], ran: list[str], batches: list[int],
          path: Path, n_seeds: int, subject: str) -> None:
    fig, axes = new_figure(1, 2, figsize=(11, 4.0))
    ref = batches[-1]
    for ax, control in zip(axes, CONTROLS, strict=True):
        for norm in ran:
            found = [(b, by.get((norm, b, "both" if b == ref else control))) for b in batches]
            pts = [(b, r.mean_std("test_acc")) for b, r in found if r is not None]
            ax.errorbar([b for b, _ in pts], [m for _, (m, _) in pts],
                        yerr=[s for _, (_, s) in pts], marker="o", ms=4, capsize=3,
                        label=NORMS[norm])
        ghost = by.get((GHOST, ref, "both"))
        if ghost is not None:
            m, s = ghost.mean_std("test_acc")
            ax.errorbar([ref], [m], yerr=[s], marker="*", ms=9, capsize=3, ls="none",
                        label="Ghost BN (virtual 32)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size" + (" (lr = B/256)" if control == "epochs" else
                                      f" (lr {ref / 256:g}, same steps)"))
        ax.set_ylabel("final test accuracy")
        ax.set_title(CONTROLS[control])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    save(fig, path, f"Small batches: BN and its remedies, {subject} (mean +- sample std, "
                    f"{seeds})")


SETUP = (
    "The chapter's sigmoid LeNet on Fashion-MNIST (5000 test images) with BN, Batch Renorm "
    "(rmax 3, dmax 5 from the first step), GroupNorm, LayerNorm or no normalization, at batch "
    "sizes 2, 8, 32 and 128, plain SGD, 5 seeds. Equal epochs: each batch size sees the same "
    "6144 training examples once at lr = B / 256. Equal steps: each takes the same 48 steps at "
    "lr 0.5 (so batch B sees 48 B examples); batch 128 is the same run in both. Ghost BN "
    "(virtual batches of 32) runs at batch 128 only: below 32 it is BN. Test accuracy is "
    "measured with the running averages and with PreciseBN statistics (10000 training "
    "examples). Each layer's smallest batch is tested against its own batch 128 under each "
    "control (Welch t over seeds), Ghost BN against BN at batch 128 (paired t), and, under "
    "equal epochs, GroupNorm's and Batch Renorm's drop (smallest batch minus 128, per seed) "
    "against BN's drop (paired t), all Holm-corrected together; a difference is clear at Holm "
    "p < 0.05.")
CAVEATS = (
    "Both controls are biased by design, in opposite directions: equal epochs gives small "
    "batches many more steps, equal steps gives them far fewer examples; only an effect under "
    "both is the normalization's. The runs are short (one pass over 6144 examples, or 48 "
    "steps), so the sigmoid LeNet without normalization may not leave its initial plateau at "
    "all; batch 128 is each layer's reference, not necessarily its best. Batch Renorm is run "
    "without the paper's warm-up; Ghost BN only at one virtual batch size (32). One network, "
    "one dataset.")

STUDY = Study("batch-size", "What happens to BN with small batches?", arms, analyze,
              setup=SETUP, caveats=CAVEATS)
