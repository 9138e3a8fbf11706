"""Write the chapter notebooks (English and Chinese) from one list of code cells.

Both notebooks share every code cell; only the prose differs. Edit here, then run
``python notebooks/build_notebooks.py`` (writes the cells without outputs) and execute them
(see the README's "Notebooks" section) to refresh the committed outputs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Each entry: ("md", english, chinese) or ("code", source).
CELLS: list[tuple[str, ...]] = []


def md(en: str, zh: str) -> None:
    CELLS.append(("md", en.strip(), zh.strip()))


def code(src: str) -> None:
    CELLS.append(("code", src.strip()))


md("""
# Batch normalization, from scratch to measurement

This notebook walks through the "Batch Normalization" chapter of *Dive into Deep Learning* with
bnlab: the layer written out in plain PyTorch and checked against `torch.nn.BatchNorm2d`,
LeNet with BatchNorm trained on Fashion-MNIST while its curves are drawn, the result of every
bnlab study read from the saved runs in `docs/`, and answers to the three questions learners ask
about the chapter.

**About the outputs stored in this file.** They come from a run with
`BNLAB_NOTEBOOK_BUDGET=small`: LeNet-BN sees 12 batches of 256 images instead of a full epoch,
so its curves show the start of training only. Without that variable the notebook trains one
full epoch (about 235 steps; a couple of minutes on a laptop CPU). The study results in part 3
are the saved full runs, never retrained here.

Run it from the repository (it finds `docs/` by walking up from the working directory):
`jupyter notebook notebooks/batch_norm_chapter.ipynb`, or headless as in the README.
""", """
# 批量归一化：从零实现到实验测量

本笔记本借助 bnlab 走一遍《动手学深度学习》的"批量规范化"一章：先用朴素的 PyTorch 写出这一层，并与
`torch.nn.BatchNorm2d` 逐项核对数值；再在 Fashion-MNIST 上训练带 BatchNorm 的 LeNet，边训练边画曲线；
然后从 `docs/` 中保存的实验结果里读出每项 bnlab 研究（study）的结论；最后回答学习者对这一章最常问的三个问题。

**关于本文件中保存的输出。** 这些输出来自设置了 `BNLAB_NOTEBOOK_BUDGET=small` 的一次运行：LeNet-BN
只训练 12 个大小为 256 的小批量，而不是一整轮，因此曲线只反映训练的开头。不设这个环境变量时，
笔记本会完整训练一轮（约 235 步，在普通笔记本电脑的 CPU 上需要几分钟）。第 3 部分的研究结果读自已保存的
完整运行，这里不会重新训练。

请在仓库内运行（笔记本从当前工作目录向上查找 `docs/`）：
`jupyter notebook notebooks/batch_norm_chapter.zh-CN.ipynb`，或按 README 中的命令无界面执行。
""")

code("""
%matplotlib inline
import inspect
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import bnlab
from bnlab.data import load_split
from bnlab.norm import BatchNorm1d, BatchNorm2d, reference, textbook
from bnlab.norm.variants import PerActivationBatchNorm
from bnlab.norm.variants.teaching import RunningStatsBatchNorm
from bnlab.train import TrainConfig, train

BUDGET = os.environ.get("BNLAB_NOTEBOOK_BUDGET", "full")
if BUDGET not in ("small", "full"):
    raise ValueError(f"BNLAB_NOTEBOOK_BUDGET must be 'small' or 'full', got {BUDGET!r}")
SMALL = BUDGET == "small"
torch.manual_seed(0)
print(f"bnlab {bnlab.__version__}, torch {torch.__version__}, budget: {BUDGET}")
""")

md("""
## 1. BatchNorm from scratch

For one channel, the "batch" is every value that channel takes in the mini-batch: for an input
of shape (N, C, H, W) that is M = N·H·W numbers. Training normalizes them with their own mean
and (biased) variance, then applies a learned scale γ and shift β:

$$\\hat x_i = \\frac{x_i - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad y_i = \\gamma \\hat x_i + \\beta.$$

Alongside, the layer keeps exponential moving averages of μ and σ² for prediction time.
bnlab's readable reference, `bnlab.norm.reference`, keeps the statistics apart from the
normalization. Here are both pieces (the variance takes two passes, never E[x²] − E[x]²,
which loses every digit when the mean is large):
""", """
## 1. 从零实现 BatchNorm

对某一个通道而言，"批量"指的是它在这个小批量里取到的全部数值：输入形状为 (N, C, H, W) 时共有
M = N·H·W 个数。训练时用这些数自己的均值和（有偏）方差做标准化，再乘上可学习的缩放 γ、加上偏移 β：

$$\\hat x_i = \\frac{x_i - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}}, \\qquad y_i = \\gamma \\hat x_i + \\beta.$$

与此同时，这一层还维护 μ 和 σ² 的指数移动平均，留给预测时使用。bnlab 的可读参考实现
`bnlab.norm.reference` 把"求统计量"和"做标准化"分成两个函数。下面打印这两部分（方差分两遍计算，
不用 E[x²] − E[x]²，因为均值很大时后者会把有效数字全部抵消掉）：
""")

code("""
print(inspect.getsource(reference.batch_statistics))
print(inspect.getsource(reference.normalize))
print(inspect.getsource(reference.update_running_stats))
""")

md("""
The chapter itself writes the layer as one function that returns the new moving averages.
bnlab keeps that form too, as `bnlab.norm.textbook`, with the chapter's own conventions
(momentum 0.9 weighs the *old* average; the moving variance stores the biased variance):
""", """
教材本身把这一层写成一个函数，直接返回更新后的移动平均。bnlab 也保留了这种写法，即
`bnlab.norm.textbook`，并沿用教材的约定（动量 0.9 表示*旧*平均值所占的权重；移动方差存的是有偏方差）：
""")

code("""
print(inspect.getsource(textbook.textbook_batch_norm))
""")

md("""
### Checked against PyTorch

Same input, same parameters, same upstream gradient: bnlab's `BatchNorm2d` and
`torch.nn.BatchNorm2d` must agree on the output, on all three gradients, on the running buffers
after the step, and on the output in evaluation mode. In float32 "agree" means up to rounding: each
line prints the largest difference divided by the largest value, around 1e-7 here.
""", """
### 与 PyTorch 逐项核对

给定相同的输入、相同的参数和相同的上游梯度，bnlab 的 `BatchNorm2d` 与 `torch.nn.BatchNorm2d`
应当在以下各项上一致：输出、三个梯度、这一步之后的滑动统计量缓冲区，以及评估模式下的输出。
在 float32 下，"一致"指的是只差舍入误差：每行打印的是最大差值除以最大绝对值，这里大约是 1e-7。
""")

code("""
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    \"\"\"Largest difference relative to the largest value: float32 rounding is relative.\"\"\"
    return max_diff(a, b) / b.abs().max().item()


x = torch.randn(16, 6, 10, 10) * 3 + 2  # (N, C, H, W), off-centre on purpose
ours, theirs = BatchNorm2d(6), torch.nn.BatchNorm2d(6)
with torch.no_grad():  # a non-trivial gamma and beta, the same in both
    ours.weight.uniform_(0.5, 2.0)
    ours.bias.normal_()
theirs.load_state_dict(ours.state_dict())  # the parameter and buffer names are the same

xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
ya, yb = ours(xa), theirs(xb)
upstream = torch.randn_like(ya)
ya.backward(upstream)
yb.backward(upstream)
checks = {
    "output (train)": rel_diff(ya, yb),
    "grad input": rel_diff(xa.grad, xb.grad),
    "grad weight": rel_diff(ours.weight.grad, theirs.weight.grad),
    "grad bias": rel_diff(ours.bias.grad, theirs.bias.grad),
    "running_mean": rel_diff(ours.running_mean, theirs.running_mean),
    "running_var": rel_diff(ours.running_var, theirs.running_var),
}
ours.eval()
theirs.eval()
with torch.no_grad():
    checks["output (eval)"] = rel_diff(ours(x), theirs(x))
for name, d in checks.items():
    print(f"max |bnlab - torch| / max |torch|  {name:<15} {d:.1e}")
""")

md("""
The textbook form gives the same output. Its moving mean matches PyTorch's running mean
exactly once the momentum is translated (0.9 there is 0.1 here); its moving variance differs by
the factor M/(M − 1) on each batch folded in, because PyTorch stores the *unbiased* variance:
""", """
教材的写法给出同样的输出。把动量换算过来（教材的 0.9 就是这里的 0.1）之后，它的移动均值与 PyTorch 的
滑动均值完全一致；移动方差则在每折入一个批量时相差一个因子 M/(M − 1)，因为 PyTorch 存的是*无偏*方差：
""")

code("""
tb = textbook.TextbookBatchNorm(6, num_dims=4)  # momentum 0.9: the chapter's convention
torch_bn = torch.nn.BatchNorm2d(6)  # momentum 0.1: the same average
y_tb, y_torch = tb(x), torch_bn(x)
print(f"max |textbook - torch| output          {max_diff(y_tb, y_torch):.1e}")
print(f"max |textbook - torch| moving mean     "
      f"{max_diff(tb.moving_mean.flatten(), torch_bn.running_mean):.1e}")
M = x.numel() // x.shape[1]
# After one step from 1: 0.9 + 0.1 * var, with var biased (textbook) or unbiased (torch).
ratio = (torch_bn.running_var - 0.9) / (tb.moving_var.flatten() - 0.9)
print(f"variance update ratio torch/textbook   {ratio.mean().item():.6f}"
      f"   (M/(M-1) = {M}/{M - 1} = {M / (M - 1):.6f})")
""")

md("""
## 2. LeNet-BN on Fashion-MNIST, with live curves

The chapter's recipe, through bnlab's Python API: LeNet with a BatchNorm after each
convolution and each hidden fully connected layer, sigmoid activations, plain SGD at learning
rate 1.0, batch 256. `train` writes a run directory (`config.json`, `metrics.jsonl`, a checkpoint);
a *probe* is called after every `every`-th backward pass, and here it records the batch's loss
and accuracy and redraws the figure while training runs. The probe restores the BatchNorm
buffers its extra forward pass touched, so the run trains exactly as it would without it.
""", """
## 2. 在 Fashion-MNIST 上训练 LeNet-BN，实时绘制曲线

沿用教材的配置，通过 bnlab 的 Python API 训练：在每个卷积层和每个隐藏全连接层之后加 BatchNorm，
激活函数用 sigmoid，普通 SGD，学习率 1.0，批量大小 256。`train` 会写出一个运行目录（`config.json`、
`metrics.jsonl` 和检查点）。每隔 `every` 次反向传播，训练循环会调用一次*探针*（probe）：这里的探针记录
当前批量的损失和准确率，并在训练过程中重画图像。探针额外做的那次前向传播会改动 BatchNorm 的缓冲区，
它会把缓冲区恢复原状，因此这次训练与不加探针时完全相同。
""")

code("""
config = TrainConfig(
    model="lenet-bn", norm="bnlab", lr=1.0, batch_size=256, epochs=1,
    limit_train=12 * 256 if SMALL else None,  # small: 12 steps; full: one epoch (235 steps)
    limit_test=1000 if SMALL else None,
    progress=False,
)
EVERY = 1 if SMALL else 5


class LiveCurves:
    \"\"\"A training probe: the batch's loss and accuracy, drawn while the run goes on.\"\"\"

    def __init__(self, every: int, label: str) -> None:
        self.every, self.label = every, label
        self.calls = 0
        self.last_draw = 0.0
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.acc: list[float] = []
        self.fig, (self.ax_loss, self.ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
        plt.close(self.fig)  # shown through the display handle only, not again at cell end
        self.handle = display(self.fig, display_id=True)

    def __call__(self, model, x, y) -> dict[str, float]:
        # A train-mode forward folds this batch into BN's running buffers a second time:
        # save them and put them back, so the probed run trains like an unprobed one.
        saved = {name: b.clone() for name, b in model.named_buffers()}
        with torch.no_grad():
            logits = model(x)
            for name, b in model.named_buffers():
                b.copy_(saved[name])
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(dim=1) == y).float().mean().item()
        self.steps.append(self.calls * self.every)
        self.loss.append(loss)
        self.acc.append(acc)
        self.calls += 1
        # Rendering the figure costs more than a LeNet step on a small CPU: redraw at most
        # every 2 seconds (draw_run draws the final state).
        if time.monotonic() - self.last_draw > 2:
            self.draw(self.steps, self.loss, self.acc)
            self.last_draw = time.monotonic()
        return {"loss": loss, "acc": acc}

    def draw(self, steps, loss, acc, test_acc=None, compare=None) -> None:
        self.ax_loss.clear()
        self.ax_acc.clear()
        if compare is not None:  # (label, steps, loss, acc) of another run, in grey
            label, c_steps, c_loss, c_acc = compare
            self.ax_loss.plot(c_steps, c_loss, color="0.6", ls=":", label=label)
            self.ax_acc.plot(c_steps, c_acc, color="0.6", ls=":", label=label)
            self.ax_loss.legend(loc="upper right")
        self.ax_loss.plot(steps, loss, color="C0")
        self.ax_loss.set(xlabel="step", ylabel="training loss (batch)", title=self.label)
        self.ax_acc.plot(steps, acc, color="C1", label="train (batch)")
        if test_acc is not None:
            self.ax_acc.axhline(test_acc, color="C2", ls="--", label=f"test {test_acc:.3f}")
        self.ax_acc.set(xlabel="step", ylabel="accuracy", ylim=(0, 1))
        self.ax_acc.legend(loc="upper left")
        self.fig.tight_layout()
        self.handle.update(self.fig)

    def draw_run(self, run, compare=None) -> None:
        \"\"\"The final figure from what the run directory saved (probes.jsonl, metrics.jsonl);
        `compare`: (label, another run) drawn alongside.\"\"\"
        def series(r):
            return ([p["step"] for p in r.probes], [p["loss"] for p in r.probes],
                    [p["acc"] for p in r.probes])
        other = None if compare is None else (compare[0], *series(compare[1]))
        self.draw(*series(run), test_acc=run.final["test_acc"], compare=other)


workdir = Path(tempfile.mkdtemp(prefix="bnlab-notebook-"))
curves = LiveCurves(EVERY, "LeNet-BN (bnlab)")
run = train(config, workdir / "lenet-bn", probe=curves)
curves.draw_run(run)
print({k: round(v, 4) for k, v in run.final.items()})
""")

md("""
## 3. What the studies measured

Each bnlab study trains several arms over several seeds and computes a table, a figure and a
one-line verdict from the run directories alone. Its record is committed in
`docs/studies/<name>/`: `study.json` (the question, the number of seeds, a computed headline,
the setup, the caveats, the *primary comparisons*, one per literature claim the study declared
before it ran, each worded by one fixed rule as "reproduces", "contradicts", "not shown" (with
the smallest effect the seeds could have detected) or "does not reproduce" (only when an
equivalence test says so), and the exploratory comparisons) and `verdict`; the figure is
`docs/report/figures/<name>.png`. No result is typed into this notebook: the cells below read
those records as files, so every number and every word shown is the committed run's, and
nothing is retrained here. First one line per study, with the number of seeds and the claims'
wording read from its record, then each verdict as the study wrote it:
""", """
## 3. 各项研究测到了什么

bnlab 的每项研究（study）都会用若干个随机种子训练若干组对照，再仅根据运行目录计算出一张表、一幅图和一句结论。
每项研究的记录提交在 `docs/studies/<name>/` 中：`study.json`（研究的问题、种子个数、计算得到的一句话总结、
实验设置、注意事项、*主要比较*（研究在运行前为每条文献论断声明一项比较，按同一条固定规则措辞：
"reproduces"（复现）、"contradicts"（相反）、"not shown"（未能显示，并给出这些种子能检出的最小效应）或
"does not reproduce"（不复现，仅当等价性检验成立时）以及探索性比较）和 `verdict`（结论）；图在
`docs/report/figures/<name>.png`。本笔记本里没有手写任何实验结果：下面的单元只把这些记录当作文件读取，
所以显示的每个数字和每个措辞都来自已提交的运行，这里不重新训练任何东西。先列出每项研究的一行总结
（种子个数和各论断的措辞读自其记录），再逐条给出研究写下的结论原文（这些记录是英文的）：
""")

code("""
def find_docs() -> Path:
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "docs" / "report" / "report.md").is_file():
            return d / "docs"
    raise FileNotFoundError("docs/report/report.md not found above the working directory: run "
                            "the notebook from inside the bnlab repository")


DOCS = find_docs()
# The studies this notebook quotes: a missing record stops here, naming the missing file.
QUOTED = ("chapter", "lr", "why-higher-lr", "batch-size", "train-with-running-averages",
          "momentum", "axes")


def study_record(name: str) -> tuple[dict, str]:
    \"\"\"docs/studies/NAME/study.json (parsed) and docs/studies/NAME/verdict, as committed.\"\"\"
    folder = DOCS / "studies" / name
    for path in (folder / "study.json", folder / "verdict"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the study {name!r} has no committed "
                                    f"record (publish its runs into {folder.parent} first)")
    meta = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    return meta, (folder / "verdict").read_text(encoding="utf-8").strip()


def seeds_text(meta: dict) -> str:
    return f"{meta['seeds']}" + (" (quick mode: not evidence)" if meta.get("quick") else "")


def claims_text(meta: dict) -> str:
    \"\"\"'key: wording; ...' from the record's primary comparisons (older records: none).\"\"\"
    return "; ".join(f"{p['claim']['key']}: {p['wording']}" for p in meta.get("primary", []))


def show_study(name: str) -> None:
    \"\"\"Print one study's committed record: question, seeds, each claim's wording, headline,
    verdict, literature, caveats (the record's own English text).\"\"\"
    meta, verdict = study_record(name)
    print(f"[{meta['name']}] {meta['question']}\\n    seeds: {seeds_text(meta)}")
    for p in meta.get("primary", []):
        claim = p["claim"]
        print(textwrap.fill(f"claim {claim['key']} ({claim['source']}: {claim['statement']}): "
                            f"{p['wording']}" + (f" (MDE {p['mde_text']})"
                                                 if p["wording"] == "not shown" else ""),
                            width=100, initial_indent="    ", subsequent_indent="        "))
    for label, text in (("headline", meta.get("headline")), ("verdict", verdict),
                        ("against the literature", meta.get("literature")),
                        ("caveats", meta.get("caveats"))):
        if text:
            print(textwrap.fill(f"{label}: {text}", width=100, initial_indent="    ",
                                subsequent_indent="        "))
    print()


def cell(text: str) -> str:
    return text.replace("|", "\\\\|").replace("\\n", " ")


for name in QUOTED:
    study_record(name)
RECORDS = {d.name: study_record(d.name) for d in sorted((DOCS / "studies").iterdir())
           if (d / "study.json").is_file()}
rows = ["| study | seeds | finding | claims (primary comparisons) |", "|---|---|---|---|"]
for name, (meta, verdict) in RECORDS.items():
    rows.append(f"| `{name}` | {seeds_text(meta)} | {cell(meta.get('headline') or verdict)} | "
                f"{cell(claims_text(meta) or meta.get('literature') or 'not stated')} |")
display(Markdown("\\n".join(rows)))
for name, (meta, verdict) in RECORDS.items():
    print(f"[{name}] {meta['question']}\\n    verdict: {verdict}\\n")
""")

md("""
## 4. The learner's three questions

### 4.1 Why can the learning rate go up with BatchNorm?

**Measured** (study `lr`, figure `docs/report/figures/lr.png`): the study `lr` trains the same
LeNet with plain SGD at log-spaced learning rates, with and without BN, and judges each seed on
its own curve: which learning rates train, which make no progress and which diverge. Its
result, read from the committed record:
""", """
## 4. 学习者的三个问题

### 4.1 为什么加了 BatchNorm 之后学习率可以调大？

**测量结果**（研究 `lr`，图 `docs/report/figures/lr.png`）：研究 `lr` 用普通 SGD 在按对数间隔取的一组学习率上，
分别训练有 BN 和没有 BN 的同一个 LeNet，并根据每个种子自己的曲线判断：哪些学习率能训练起来，哪些没有进展，
哪些发散。它的结果读自已提交的记录（记录原文为英文）：
""")

code("""
show_study("lr")
""")

md("""
![lr study](../docs/report/figures/lr.png)

**Why.** Two effects, both visible in a few lines. (1) A layer followed by BN no longer cares
about the *scale* of its weights: BN(a·Wx) = BN(Wx) for any a > 0. The gradient with respect to
W shrinks as 1/a, so a step that grows the weights makes the next steps smaller: a too-large
learning rate is partly corrected by the network itself instead of blowing up. (2) The
pre-activations stay centred with unit spread, so the sigmoids after them do not saturate, and
the gradients do not vanish when a big step moves the weights far. Below: the same loss at
weight scales 1 and 10, and the gradient shrinking tenfold, with BN; without BN, both change.
""", """
![lr study](../docs/report/figures/lr.png)

**原因。** 有两个效应，都能用几行代码看到。(1) 后面接着 BN 的层不再在乎自身权重的*尺度*：对任意
a > 0，BN(a·Wx) = BN(Wx)。而损失对 W 的梯度按 1/a 缩小，所以一步更新若把权重放大，后续的步长就会自动变小：
学习率偏大时，网络自己会部分地纠正，而不是发散。(2) 激活函数之前的值始终保持居中、方差为 1，
后面的 sigmoid 不会饱和，即便一大步把权重推得很远，梯度也不会消失。下面的演示中，有 BN 时权重放大 10 倍后
损失不变、梯度缩小为十分之一；没有 BN 时两者都会变化。
""")

code("""
torch.manual_seed(0)
inputs, target = torch.randn(64, 20), torch.randn(64, 8)
w0 = torch.randn(8, 20) / 20**0.5
for with_bn in (True, False):
    for scale in (1.0, 10.0):
        w = (w0 * scale).requires_grad_()
        h = inputs @ w.T  # (64, 20) @ (20, 8) -> (64, 8)
        out = BatchNorm1d(8)(h) if with_bn else h
        loss = F.mse_loss(out, target)
        loss.backward()
        print(f"{'with BN' if with_bn else 'no BN  '}  weight scale {scale:>4}: "
              f"loss {loss.item():8.4f}, |grad W| {w.grad.norm().item():8.4f}")
""")

md("""
**Which mechanism the measurements support** (study `why-higher-lr`, figure
`docs/report/figures/why-higher-lr.png`): the study trains the same LeNet with and without BN
over a learning-rate sweep and records, per layer and step, the weight norms, the effective step
lr / ||W||^2 of the weights that feed a BN (effect (1) above: the auto-tuning of van Laarhoven
2017 and Arora et al. 2019), the gradient norms across depth (effect (2): balanced gradients)
and the largest eigenvalue of the loss's Hessian by the Lanczos iteration (the sharpness
argument of Bjorck et al. 2018 and Santurkar et al. 2018). Each mechanism is a declared claim;
the wording below is the committed record's, by the rule of part 3:
""", """
**测量结果支持哪种机制**（研究 `why-higher-lr`，图 `docs/report/figures/why-higher-lr.png`）：该研究在一组学习率上
分别训练有 BN 和没有 BN 的同一个 LeNet，逐层、逐步记录权重范数、接在 BN 之前的权重的有效步长 lr / ||W||^2
（上面的效应 (1)：van Laarhoven 2017 与 Arora 等人 2019 所说的自动调节）、各层的梯度范数（效应 (2)：梯度是否均衡），
以及用 Lanczos 迭代求得的损失函数 Hessian 的最大特征值（Bjorck 等人 2018 与 Santurkar 等人 2018 的"锐度"论证）。
每种机制都是一条事先声明的论断；下面的措辞读自已提交的记录，规则见第 3 部分：
""")

code("""
show_study("why-higher-lr")
""")

md("""
![why-higher-lr study](../docs/report/figures/why-higher-lr.png)
""", """
![why-higher-lr 研究](../docs/report/figures/why-higher-lr.png)
""")

md("""
### 4.2 Why not normalize with the moving averages during training?

**Measured** (study `train-with-running-averages`, figure
`docs/report/figures/train-with-running-averages.png`): the study takes BatchNorm's training
step apart with four layers in the chapter's LeNet: BN itself; `batch-stats-detached` (the
batch's fresh statistics, but no gradient through them); `renorm-wide` (the running averages,
with the gradient through the statistics: Batch Renorm without clipping); and `running-stats`,
the learner's proposal (bnlab's teaching layer `RunningStatsBatchNorm`: it updates the averages
as BatchNorm does, then normalizes with them, and no gradient flows through them), over learning
rates and, for `running-stats`, BN momenta. It measures test accuracy and the drift of the
biases feeding the norm layers, and asks what breaks: the stale statistics or the missing
gradient. Its result, read from the committed record:
""", """
### 4.2 训练时为什么不直接用移动平均来做标准化？

**测量结果**（研究 `train-with-running-averages`，图 `docs/report/figures/train-with-running-averages.png`）：
这项研究在本章的 LeNet 中用四种层把 BatchNorm 的训练步骤拆开：BN 本身；`batch-stats-detached`（用当前批量的新鲜统计量，
但梯度不穿过它们）；`renorm-wide`（用移动平均，但梯度穿过统计量：不做截断的 Batch Renorm）；以及
`running-stats`，即学习者提出的做法（bnlab 的教学用层 `RunningStatsBatchNorm`：它像 BatchNorm 一样更新移动平均，
然后用这些平均值做标准化，梯度不穿过它们）。每种层都在多个学习率上训练，`running-stats` 还扫描了 BN 的动量。
研究测量测试准确率以及送入归一化层的偏置的漂移，并回答究竟是什么出了问题：是过时的统计量，还是缺失的梯度。
它的结果读自已提交的记录（记录原文为英文）：
""")

code("""
show_study("train-with-running-averages")
""")

md("""
![train-with-running-averages study](../docs/report/figures/train-with-running-averages.png)

**Why.** With batch statistics, μ and σ are functions of the weights, and the gradient flows
through them: the loss "knows" that shifting or scaling the layer's input changes nothing, so
the optimizer has no reason to push the input around. With moving averages the statistics are
constants to the gradient. The optimizer then sees a plain affine layer, and a step can move the
input's mean and scale freely, while the averages trail behind the weights (they start at 0
and 1 and forget slowly). The normalization no longer normalizes. The first demonstration shows
the missing gradient: the derivative of the mean output with respect to a common shift of the
input is 0 with BatchNorm and not with the running-average layer. The second trains both layers
in LeNet under the same budget as part 2.
""", """
![train-with-running-averages study](../docs/report/figures/train-with-running-averages.png)

**原因。** 用批量统计量时，μ 和 σ 是权重的函数，梯度会穿过它们传回去：损失函数"知道"把这一层的输入
整体平移或缩放不会改变任何结果，于是优化器没有理由去推动输入的分布。用移动平均时，统计量对梯度而言只是常数，
优化器看到的只是一个普通的仿射层，每一步都可以随意改变输入的均值和尺度，而移动平均却总是落后于权重
（它从 0 和 1 开始，遗忘得很慢）。标准化也就不再起标准化的作用。第一个演示展示缺失的那部分梯度：
把输入整体平移时，平均输出对平移量的导数在 BatchNorm 下为 0，在移动平均层下不为 0。第二个演示在 LeNet 中
以第 2 部分相同的预算分别训练这两种层。
""")

code("""
torch.manual_seed(0)
h = torch.randn(32, 4) * 2 + 3
for layer in (BatchNorm1d(4), RunningStatsBatchNorm(4)):
    shift = torch.zeros(1, requires_grad=True)  # one common shift of every input value
    layer(h + shift).mean().backward()
    print(f"{type(layer).__name__:<22} d mean(output) / d shift = {shift.grad.item():+.1e}")
""")

code("""
runs = {"BatchNorm (batch statistics)": run}
probe_rs = LiveCurves(EVERY, "LeNet, RunningStatsBatchNorm")
runs["RunningStatsBatchNorm (moving averages)"] = train(
    TrainConfig(**{**config.to_dict(), "norm": "running-stats"}), workdir / "running-stats",
    probe=probe_rs)
probe_rs.draw_run(runs["RunningStatsBatchNorm (moving averages)"], compare=("BatchNorm", run))
for label, r in runs.items():
    losses = [p["loss"] for p in r.probes]
    print(f"{label:<40} batch loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
          f"test accuracy {r.final['test_acc']:.3f}")
""")

md("""
BatchNorm itself uses the moving averages at inference, and there their lag costs something
too: trained with the chapter's recipe, the test accuracy swings from epoch to epoch. The study
`momentum` (figure `docs/report/figures/momentum.png`) measures how BN's running-average
momentum changes the test accuracy, and whether the running averages explain those
epoch-to-epoch swings: it compares, on the very same weights, the accuracy with the running
averages and with statistics re-estimated exactly (PreciseBN). Its result, read from the
committed record:
""", """
BatchNorm 自己在推理时也使用移动平均，而在那里它们的滞后同样有代价：按本章的做法训练时，测试准确率在相邻两轮之间
来回波动。研究 `momentum`（图 `docs/report/figures/momentum.png`）测量 BN 移动平均的动量如何改变测试准确率，
以及移动平均能否解释这种逐轮的波动：它在完全相同的权重上，比较用移动平均和用精确重新估计的统计量（PreciseBN）
得到的准确率。它的结果读自已提交的记录（记录原文为英文）：
""")

code("""
show_study("momentum")
""")

md("""
### 4.3 Which axes should the statistics be averaged over?

**Measured** (study `axes`, figure `docs/report/figures/axes.png`): the study `axes` trains the
same LeNet with each member of the normalization-axes family (per-channel BatchNorm,
per-activation BatchNorm, InstanceNorm on the convolutions with BN after the linear layers,
GroupNorm, LayerNorm) and without normalization, and compares each with per-channel BatchNorm
on test accuracy, paired over seeds. The `batch-size` study adds the other side: how BatchNorm,
its small-batch remedies and the per-sample layers (GroupNorm, LayerNorm) hold up as the batch
shrinks. Their results, read from the committed records:
""", """
### 4.3 统计量应该在哪些轴上求平均？

**测量结果**（研究 `axes`，图 `docs/report/figures/axes.png`）：研究 `axes` 用归一化轴族中的每一种层
（按通道的 BatchNorm、按激活位置的 BatchNorm、用于卷积层的 InstanceNorm（线性层后仍用 BN）、GroupNorm、LayerNorm）
以及不做归一化，分别训练同一个 LeNet，并在测试准确率上把每一种与按通道的 BatchNorm 做按种子配对的比较。
研究 `batch-size` 补上了另一面：批量变小时，BatchNorm、针对小批量的改进方法以及按样本计算统计量的层
（GroupNorm、LayerNorm）各自表现如何。它们的结果读自已提交的记录（记录原文为英文）：
""")

code("""
show_study("axes")
show_study("batch-size")
""")

md("""
![axes study](../docs/report/figures/axes.png)

**Why.** For a fully connected layer (N, C) the rule is one mean per feature, over the batch.
A convolution applies the same filter at every position, so a channel is one feature seen H·W
times: averaging over (N, H, W) gives one statistic per channel, estimated from N·H·W values,
and it normalizes every position the same way, which keeps the layer a convolution. Averaging
over N alone (per activation) keeps C·H·W statistics, each from only N values: noisier, and it
also erases whatever all images share at a position. Below, on a batch of 64 Fashion-MNIST images
(one channel): the statistics' shapes, how much each fluctuates between two batches, and the
batch's mean image after each normalization.
""", """
![axes study](../docs/report/figures/axes.png)

**原因。** 对全连接层 (N, C) 而言，规则是每个特征在批量维上求一个均值。卷积在每个位置上使用同一个卷积核，
所以一个通道就是同一个特征在 H·W 个位置上被看到：在 (N, H, W) 上求平均，每个通道得到一组统计量，
由 N·H·W 个数估计出来，并且对每个位置做同样的变换，这一层仍然是卷积。只在 N 上求平均（按激活位置）
则要维护 C·H·W 组统计量，每组只由 N 个数估计：噪声更大，而且会抹掉所有图像在同一位置上的共同特征。
下面用 64 张 Fashion-MNIST 图片（单通道）演示：统计量的形状、它们在两个批量之间波动的大小，
以及两种标准化之后这个批量的平均图像。
""")

code("""
test_images = load_split("fashion-mnist", "test", log=lambda _: None).images
batch_a = test_images[:64].float().div(255).unsqueeze(1)  # (N, H, W) -> (64, 1, 28, 28)
batch_b = test_images[64:128].float().div(255).unsqueeze(1)

def per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=(0, 2, 3))  # (N, C, H, W) -> (C,)


def per_activation(t: torch.Tensor) -> torch.Tensor:
    return t.mean(dim=0)  # (N, C, H, W) -> (C, H, W)


for name, stat in (("per channel", per_channel), ("per activation", per_activation)):
    a = stat(batch_a)
    values_each = batch_a.numel() // a.numel()
    wobble = max_diff(a, stat(batch_b))
    print(f"{name:<15} mean shape {tuple(a.shape)!s:<12} {a.numel():>4} statistics, "
          f"{values_each:>5} values each; largest change between two batches {wobble:.3f}")

bn_c, bn_a = BatchNorm2d(1), PerActivationBatchNorm(1, (28, 28))
with torch.no_grad():
    shown = {"input": batch_a, "per-channel BN": bn_c(batch_a),
             "per-activation BN": bn_a(batch_a)}
fig, axes = plt.subplots(1, 3, figsize=(8, 3))
for ax, (title, t) in zip(axes, shown.items(), strict=True):
    # One colour scale for both normalized panels, so a flat zero shows as flat grey.
    limits = (0, 1) if title == "input" else (-1.5, 1.5)
    ax.imshow(t.mean(dim=0)[0], cmap="gray", vmin=limits[0], vmax=limits[1])
    ax.set(title=title, xticks=[], yticks=[])
fig.suptitle("the batch's mean image")
fig.tight_layout()
plt.show()
""")

md("""
Per-channel BatchNorm keeps the average garment visible (it shifts and scales every pixel
alike); per-activation BatchNorm turns the batch's mean image into a flat zero, and estimates
each of its 784 statistics from 64 values.

## Where to go next

* `bnlab study NAME` reruns a study (`bnlab study --help` lists them); `docs/studies.md` explains
  each table and its caveats.
* `bnlab reproduce` trains the chapter's comparison (no BN, bnlab BN, torch BN) for 10 epochs.
* Without `BNLAB_NOTEBOOK_BUDGET=small`, part 2 and 4.2 train a full epoch each.
""", """
按通道的 BatchNorm 保留了"平均衣物"的轮廓（它对每个像素做相同的平移和缩放）；按激活位置的 BatchNorm
则把这个批量的平均图像变成一片零，而且它的 784 组统计量每组只由 64 个数估计。

## 接下来可以做什么

* `bnlab study NAME` 重新运行一项研究（`bnlab study --help` 列出全部研究）；`docs/studies.md`
  解释了每张表及其注意事项。
* `bnlab reproduce` 按本章的对比（无 BN、bnlab 的 BN、torch 的 BN）训练 10 轮。
* 不设置 `BNLAB_NOTEBOOK_BUDGET=small` 时，第 2 部分和 4.2 节各训练完整的一轮。
""")


def build(lang: str) -> nbformat.NotebookNode:
    cells = []
    for kind, *texts in CELLS:
        if kind == "md":
            cells.append(new_markdown_cell(texts[0] if lang == "en" else texts[1]))
        else:
            cells.append(new_code_cell(texts[0]))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


NOTEBOOKS = {"en": HERE / "batch_norm_chapter.ipynb", "zh": HERE / "batch_norm_chapter.zh-CN.ipynb"}

if __name__ == "__main__":
    for lang, path in NOTEBOOKS.items():
        nbformat.write(build(lang), path)
        print(f"wrote {path}")
