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

Ghost BN (Hoffer et al. 2017) normalizes virtual batches of 32 (``GhostBatchNorm``'s
default): at B <= 32 it is BN exactly, so it runs only at B = 128.

**At chance** (``bnlab.studies.chance``: most seeds diverged or at most 0.15 test accuracy
with the running averages, the one metric the claims are judged on). Short budgets put whole
arms there (the sigmoid LeNet without normalization never leaves its plateau; under equal
steps GroupNorm and LayerNorm do not either). The floor rule holds for every comparison here:
the primary ones (BN is their reference), each layer's own batches (a layer's small batch is
not compared with its own batch 128 when that run is at chance) and Ghost BN against BN. A
primary claim whose arms are both at chance, or whose reference is, is reported as not judged
(the record's ``not_judged``, with the reason).

**Primary comparisons** (``bnlab.studies.claims``; wording from ``claims.judge``), both at
the smallest batch under equal epochs, the control of the papers, on test accuracy with the
running averages (as the papers evaluate), paired over seeds (arms at one batch size share
seeds and batches):

* ``WU_HE``: GroupNorm against BN directly (Wu & He 2018: at small batches BN falls below
  GroupNorm);
* ``IOFFE``: Batch Renorm against BN (Ioffe 2017: Batch Renorm keeps more accuracy than BN at
  small batches).

Exploratory (one Holm family of their own, never a verdict on a paper): GroupNorm against BN
at every batch size under both controls (running averages and PreciseBN statistics for BN),
Batch Renorm against BN at the smallest batch under equal steps, each layer's smallest batch
against its own batch 128 under each control (Welch t: different batches), and Ghost BN
against BN at batch 128 (paired).
"""

from __future__ import annotations

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
from bnlab.studies.chance import at_chance, floor
from bnlab.studies.claims import Claim, Judgement, exploratory, judge, literature_text
from bnlab.studies.stats import Comparison
from bnlab.train import TrainConfig

NORMS = {"bnlab": "BN", "renorm-fixed": "Batch Renorm", "group": "GroupNorm",
         "layer": "LayerNorm", "none": "no norm"}
GHOST = "ghost"
BATCHES = (2, 8, 32, 128)
EXAMPLES = 6144  # N: equal epochs' training examples; equal steps: S = N / reference batch
CONTROLS = {"epochs": "equal epochs", "steps": "equal steps"}
SEEDS = 8  # paired primaries: from 8 seeds the t-test decides alone (claims.EXACT_BELOW)
MARGIN = 0.02  # two points of test accuracy: the smallest gap either paper would call a loss

WU_HE = Claim(
    key="groupnorm-beats-bn-small-batch",
    statement="At small batches BN's accuracy falls below GroupNorm's",
    source="Wu & He 2018", metric="test_acc", direction=+1,
    margin=MARGIN, a="BN", b="GroupNorm")
IOFFE = Claim(
    key="renorm-beats-bn-small-batch",
    statement="At small batches Batch Renormalization keeps more accuracy than BN",
    source="Ioffe 2017", metric="test_acc", direction=+1, margin=MARGIN, a="BN",
    b="Batch Renorm")
CLAIMS = {"group": WU_HE, "renorm-fixed": IOFFE}


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


def primary_judgements(bn: ArmResult, others: dict[str, ArmResult]
                       ) -> tuple[list[Judgement], dict[Claim, str]]:
    """The declared claims (``CLAIMS``) at the smallest batch, equal epochs, for the layers
    that ran, judged together (one Holm family over every declared claim); a claim whose
    reference (BN) is at chance, or whose two arms both are, is not judged (a floor, not
    evidence): returned second, with why (``floor``)."""
    keyed = [(CLAIMS[n], bn, r) for n, r in others.items() if n in CLAIMS]
    why = {c: floor(a, b, reference=True) for c, a, b in keyed}
    return judge([(c, a.finals(c.metric), b.finals(c.metric), a.paired_with(b))
                  for c, a, b in keyed if not why[c]], family=len(CLAIMS)), \
        {c: w for c, w in why.items() if w}


def analyze(results: list[ArmResult]) -> Findings:
    rows = summarize(results)
    by = {(r.arm.tags["norm"], r.arm.tags["batch"], r.arm.tags["control"]): r
          for r in results}
    for row, res in zip(rows, results, strict=True):
        row["at chance"] = "yes" if at_chance(res) else "no"
    batches = sorted({k[1] for k in by})
    small, ref = batches[0], batches[-1]
    ran = [n for n in NORMS if (n, ref, "both") in by]  # a user's net: maybe BN only

    def at(norm: str, b: int, control: str) -> ArmResult:
        return by[(norm, b, "both" if b == ref else control)]

    def has(norm: str, b: int, control: str) -> bool:
        return (norm, b, "both" if b == ref else control) in by

    primary: list[Judgement] = []
    floored: dict[Claim, str] = {}
    if has("bnlab", small, "epochs"):
        primary, floored = primary_judgements(at("bnlab", small, "epochs"), {
            n: at(n, small, "epochs") for n in CLAIMS if n in ran and has(n, small, "epochs")})
    raw: list[tuple[str, Comparison]] = []  # (group, comparison)
    skipped: list[str] = []  # comparisons not made, with why

    def add(group: str, a: ArmResult, b: ArmResult, cs: list[Comparison],
            reference: bool = False) -> None:
        why = floor(a, b, reference=reference)
        if why:
            skipped.append(f"{cs[0].label} ({why})")
        else:
            raw.extend((group, c) for c in cs)
    direct = [(b, control) for control in CONTROLS for b in batches
              if not (b == ref and control == "steps")]
    for b, control in direct:
        if has("bnlab", b, control) and has("group", b, control):
            bn, gn = at("bnlab", b, control), at("group", b, control)
            where = f"batch {b}" + ("" if b == ref else f", {CONTROLS[control]}")
            add("direct", bn, gn, [
                c for c in accuracy_comparisons(bn, gn, f"{where}: GroupNorm vs BN")
                if not (b == small and control == "epochs" and c.metric == WU_HE.metric)],
                reference=True)  # BN is what GroupNorm is measured from
    if has("bnlab", small, "steps") and has("renorm-fixed", small, "steps"):
        bn, rn = at("bnlab", small, "steps"), at("renorm-fixed", small, "steps")
        add("renorm", bn, rn, accuracy_comparisons(
            bn, rn, f"batch {small}, equal steps: Batch Renorm vs BN"), reference=True)
    own: dict[tuple[str, str], list[Comparison]] = {}
    for norm in ran:
        for control in CONTROLS:
            if has(norm, small, control):
                r, s = at(norm, ref, control), at(norm, small, control)
                label = f"{NORMS[norm]}: batch {small} vs {ref}, {CONTROLS[control]}"
                n_raw = len(raw)
                add("own", r, s, accuracy_comparisons(r, s, label), reference=True)
                if len(raw) > n_raw:
                    own[(norm, control)] = [c for _, c in raw[n_raw:]]
    if (GHOST, ref, "both") in by and ("bnlab", ref, "both") in by:
        bn, gh = by[("bnlab", ref, "both")], by[(GHOST, ref, "both")]
        add("ghost", bn, gh, accuracy_comparisons(bn, gh, f"batch {ref}: Ghost BN (virtual 32) "
                                                           f"vs BN"), reference=True)
    flat = exploratory([c for _, c in raw])
    groups: dict[str, list[Comparison]] = {}
    for (g, _), c in zip(raw, flat, strict=True):
        groups.setdefault(g, []).append(c)
    it = iter(groups.get("own", []))
    own = {k: [next(it) for _ in cs] for k, cs in own.items()}
    chance = {control: [r.arm.label for k, r in by.items()
                        if k[2] in (control, "both") and at_chance(r)] for control in CONTROLS}
    verdict = _verdict(groups, own, chance, skipped, small, ref)
    headline = _headline(primary, own, chance, small)
    literature = _literature(primary, floored, small, "bnlab" in ran)
    n_seeds = max(len(r.runs) for r in results)

    def plot(path: Path) -> None:
        _plot(by, ran, batches, path, n_seeds, ran_on(results))

    return Findings(rows, verdict, plot, flat, headline, literature, primary=primary,
                    not_judged={c.key: f"at batch {small}, equal epochs: {w}"
                                for c, w in floored.items()})


def _worse(cs: list[Comparison]) -> bool:
    """The small batch is clearly worse on every accuracy tested (running averages and, where
    the layer has them, PreciseBN statistics): the fair accuracy."""
    return bool(cs) and all(c.word == "worse" for c in cs)


def _chance_text(chance: dict[str, list[str]]) -> str:
    """'equal epochs (none), equal steps (GroupNorm, batch 2, equal steps; no norm, ...)'."""
    return ", ".join(f"{CONTROLS[k]} ({'; '.join(v) if v else 'none'})"
                     for k, v in chance.items())


def _verdict(groups: dict[str, list[Comparison]],
             own: dict[tuple[str, str], list[Comparison]], chance: dict[str, list[str]],
             skipped: list[str], small: int, ref: int) -> str:
    # a claim not judged is named, with its reason, by the claims part that leads the text
    text = (f"At chance (most seeds failed; never a reference, two such arms never "
             f"compared): {_chance_text(chance)}.")
    if skipped:
        text += f" Not compared, a floor: {'; '.join(skipped)}."
    direct = [f"{c.label.split(': ')[0]} {c.text()}" for c in groups.get("direct", [])
              if c.metric == "test_acc"]
    if direct:
        text += (" Exploratory (own Holm family), GroupNorm vs BN at each batch size, test "
                 "accuracy: " + "; ".join(direct) + ".")
    parts = [f"{NORMS[n]}, {CONTROLS[k]}: {accuracy_text(cs[0], cs[1] if len(cs) > 1 else None)}"
             for (n, k), cs in own.items()]
    if parts:
        text += (f" Each layer at batch {small} against its own batch {ref} (Welch t): "
                 + "; ".join(parts) + ".")
    ghost = groups.get("ghost")
    if ghost:
        text += (f" Ghost BN (statistics of 32) against BN (statistics of {ref}) at batch "
                 f"{ref}: {accuracy_text(ghost[0], ghost[1] if len(ghost) > 1 else None)}.")
    return text


def _headline(primary: list[Judgement],
              own: dict[tuple[str, str], list[Comparison]], chance: dict[str, list[str]],
              small: int) -> str:
    claims = "; ".join(f"{j.comparison.label}: {j.wording}" for j in primary)
    worse = {k: [NORMS[n] for (n, c), cs in own.items() if c == k and _worse(cs)]
             for k in CONTROLS}
    judged = f"At batch {small}, equal epochs: {claims}. " if claims else ""
    return (f"{judged}Clearly worse at "
            f"batch {small} than at its own reference: "
            + "; ".join(f"{CONTROLS[k]}: {', '.join(v) or 'none'}" for k, v in worse.items())
            + f". At chance: {_chance_text(chance)}.")


def _literature(primary: list[Judgement], floor: dict[Claim, str], small: int,
                bn_ran: bool) -> str:
    if not bn_ran:
        return "Not tested: BN did not run on this network."
    if not primary and not floor:
        return "Not tested: neither GroupNorm nor Batch Renorm ran at the smallest batch."
    # the claims not judged lead the sentence with their reasons (``base.lead_texts``)
    return (f"{literature_text(primary)}. Claims judged at batch {small}, equal epochs, on "
            f"test accuracy." if primary else "")


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
    f"The chapter's sigmoid LeNet on Fashion-MNIST (5000 test images) with BN, Batch Renorm "
    f"(rmax 3, dmax 5 from the first step), GroupNorm, LayerNorm or no normalization, at batch "
    f"sizes {', '.join(map(str, BATCHES))}, plain SGD, {SEEDS} seeds. Equal epochs: each batch "
    f"size sees the same {EXAMPLES} training examples once at lr = B / 256. Equal steps: each "
    f"takes the same {EXAMPLES // BATCHES[-1]} steps at lr {BATCHES[-1] / 256:g} (so batch B "
    f"sees {EXAMPLES // BATCHES[-1]} B examples); batch {BATCHES[-1]} is the same run in both. "
    f"Ghost BN (virtual batches of 32) runs at batch {BATCHES[-1]} only: below 32 it is BN. "
    f"Test accuracy is measured with the running averages and with PreciseBN statistics "
    f"(10000 training examples). An arm is at chance when most of its seeds failed (test "
    f"accuracy, PreciseBN's where the arm has running statistics, <= 0.15, or diverged); it "
    f"is never a reference, and two arms at chance are not compared. Primary (the wording "
    f"rule of bnlab.studies.claims: t-test and exact sign-flip test, TOST against "
    f"+-{MARGIN:g}), at batch {BATCHES[0]} under equal epochs, test accuracy with the running "
    f"averages, paired over seeds: GroupNorm against BN (Wu & He 2018) and Batch Renorm "
    f"against BN (Ioffe 2017). Exploratory, a Holm family of its own: GroupNorm against BN at "
    f"every batch size under both controls, Batch Renorm against BN at batch {BATCHES[0]} "
    f"under equal steps, each layer's smallest batch against its own batch {BATCHES[-1]} "
    f"under each control (Welch t), Ghost BN against BN at batch {BATCHES[-1]} (paired t).")
CAVEATS = (
    "Both controls are biased by design, in opposite directions: equal epochs gives small "
    "batches many more steps, equal steps gives them far fewer examples; only an effect under "
    "both is the normalization's. The runs are short (one pass over 6144 examples, or 48 "
    "steps): the sigmoid LeNet without normalization does not leave its initial plateau, and "
    "under equal steps GroupNorm and LayerNorm may not either, so a difference from such an arm "
    "is the budget's floor (the study names the arms at chance). Batch 128 is each layer's "
    "reference, not necessarily its best. Batch Renorm is run without the paper's warm-up; "
    "Ghost BN only at one virtual batch size (32). One network, one dataset.")

STUDY = Study("batch-size", "What happens to BN with small batches?", arms, analyze,
              seeds=SEEDS, setup=SETUP, caveats=CAVEATS)
