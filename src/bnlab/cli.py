"""The ``bnlab`` command. Every subcommand is a thin shell over a Python function.

Bad flag values are reported by argparse on one line with exit status 2; failures while running
(missing data, a run directory that cannot be resumed) on one line with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

from bnlab.data.registry import DATASETS
from bnlab.models import MODELS
from bnlab.norm.registry import norm_names
from bnlab.train.config import DEVICES, INITS, OPTIMIZERS, TrainConfig

Command = Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from bnlab.demo import main

    return main()


def _train(args: argparse.Namespace) -> int:
    from bnlab.train import train

    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    run = train(config, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"run directory: {run.path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from bnlab.studies.reproduce import reproduce

    result = reproduce(epochs=args.epochs, out=args.out, quick=args.quick, seed=args.seed,
                       data_dir=args.data_dir, threads=args.threads, device=args.device)
    print("\n" + result.table)
    print(f"report: {result.report}\ncurves: {result.curves}")
    return 0


def _study(args: argparse.Namespace) -> int:
    from bnlab.studies.base import run_study
    from bnlab.studies.registry import get_study

    study = get_study(args.name)
    out = args.out or f"runs/study-{args.name}{'-quick' if args.quick else ''}"
    run_study(study, out, quick=args.quick, seeds=args.seeds, analyze_only=args.analyze_only,
              data_dir=args.data_dir, threads=args.threads)
    print(f"study written to {out}: figure.png, table.md, table.csv, verdict, study.json")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bnlab.report.html import build_report

    page, text = build_report(args.directories, args.out)
    print(f"report: {page}\nmarkdown: {text}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from bnlab.report.inspect import bn_layers, format_layers, load_state

    layers = bn_layers(load_state(args.checkpoint))
    print(format_layers(layers, show=args.show) if layers else
          "no normalization layers with running statistics in this checkpoint")
    return 0


def _data(args: argparse.Namespace) -> int:
    from bnlab.data.commands import data_check, data_fetch, data_info

    if args.action == "info":
        print(data_info(args.dataset, args.data_dir))
        return 0
    if args.action == "check":
        return 0 if data_check(args.dataset, args.data_dir) else 1
    data_fetch(args.dataset, args.data_dir, force=args.force)
    return 0


def _kernels(args: argparse.Namespace) -> int:
    from bnlab.norm import kernels

    if args.action == "build":
        print(kernels.build(force=args.force))
        return 0
    print(kernels.status())
    return 0 if kernels.available() else 1


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--model", choices=sorted(MODELS), default=d.model, help="network "
                   "(default: %(default)s)")
    p.add_argument("--norm", choices=norm_names(), default=d.norm,
                   help="normalization layer (default: %(default)s)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=d.dataset,
                   help="dataset (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help="passes over the training set (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="examples per step (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=d.lr,
                   help="learning rate (default: %(default)s, the textbook's for LeNet-BN)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="optimizer (default: %(default)s, plain SGD as the textbook)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="L2 penalty (default: %(default)s)")
    p.add_argument("--init", choices=INITS, default=d.init,
                   help="xavier: Xavier-uniform conv/linear weights as the textbook; default: "
                        "PyTorch's own (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the initial weights and batch order (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="auto picks cuda when available (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--data-dir", help="directory holding the IDX files (else: auto)")
    p.add_argument("--normalize", action="store_true", help="standardize the input pixels")
    p.add_argument("--drop-last", action="store_true", help="drop the last partial batch")
    p.add_argument("--limit-train", type=positive_int, help="use the first N training examples")
    p.add_argument("--limit-test", type=positive_int, help="use the first N test examples")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="keep BatchNorm, sigmoid and pooling as separate layers (by default "
                        "they run fused where bnlab's fast kernels are available)")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronize BatchNorm statistics across data-parallel ranks (run "
                        "under torchrun --nproc_per_node=N -m bnlab train ...)")
    p.add_argument("--dist-timeout", type=positive_float, default=d.dist_timeout,
                   help="seconds a rank waits on the others before failing (default: "
                        "%(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="bnlab: a batch-normalization library and laboratory for PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("reproduce", help="the textbook's LeNet comparison: no BN vs bnlab BN "
                       "vs torch BN, with table, curves.png and REPORT.md",
                       description="Train LeNet without BN, with bnlab's BN and with torch's BN "
                       "on Fashion-MNIST (the textbook recipe), then write the comparison "
                       "table, curves.png and REPORT.md into --out. Finished runs are reused "
                       "and interrupted ones resumed.")
    p.add_argument("--epochs", type=positive_int, default=10,
                   help="epochs per run (default: %(default)s, as the textbook)")
    p.add_argument("--out", default="runs/reproduce", help="output directory "
                   "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="2 epochs on a 4096-example subset")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--data-dir", help="directory holding the IDX files (else: auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto picks cuda when available (default: %(default)s)")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("train", help="train one model into a run directory",
                       description="Train one configuration; writes config.json, "
                       "metrics.jsonl, checkpoint.pt and DONE into --out. Under torchrun "
                       "it is data-parallel (gloo on CPU, NCCL on CUDA); rank 0 writes.")
    _add_train_flags(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=_train)

    p = sub.add_parser("inspect", help="per-BN-layer gamma, beta and running statistics",
                       description="Print every normalization layer's gamma, beta, running "
                       "mean and running variance from a checkpoint or run directory.")
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--show", type=positive_int, default=6, help="values shown per vector")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("data", help="locate, validate or download datasets",
                       description="info: where the data would be read from; check: validate "
                       "every file (structure, counts, checksums); fetch: download a verified "
                       "copy into the cache when none is present.")
    p.add_argument("action", choices=("info", "check", "fetch"), help="what to do")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist",
                   help="dataset (default: %(default)s)")
    p.add_argument("--data-dir", help="directory to read from (fetch: to download into)")
    p.add_argument("--force", action="store_true", help="fetch: download even if present")
    p.set_defaults(func=_data)

    p = sub.add_parser("kernels", help="build or check the compiled fast BatchNorm kernels",
                       description="build: compile bnlab's fused CPU BatchNorm kernels (once "
                       "per machine; make setup does it); status: say whether they are in use. "
                       "Without them bnlab runs its reference implementation.")
    p.add_argument("action", choices=("build", "status"), help="what to do")
    p.add_argument("--force", action="store_true", help="build: recompile even if built")
    p.set_defaults(func=_kernels)

    from bnlab.studies.registry import STUDIES

    p = sub.add_parser("study", help="run an experiment that answers a learner's question",
                       description="Train every arm of a study for several seeds (finished runs "
                       "are reused), then write figure.png, table.md/csv, verdict and "
                       "study.json. Studies: " + "; ".join(
                           f"{n}: {s.question}" for n, s in STUDIES.items()))
    p.add_argument("name", choices=list(STUDIES), help="which study")
    p.add_argument("--quick", action="store_true",
                   help="one seed on small subsets: a smoke test, not evidence")
    p.add_argument("--out", help="output directory (default: runs/study-NAME)")
    p.add_argument("--seeds", type=positive_int, help="seeds per arm (default: 3, quick: 1)")
    p.add_argument("--analyze-only", action="store_true",
                   help="rebuild figure, table and verdict from the saved runs; train nothing")
    p.add_argument("--data-dir", help="directory holding the IDX files (else: auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.set_defaults(func=_study)

    p = sub.add_parser("report", help="one HTML page (and Markdown) from study directories",
                       description="Build a self-contained report.html (figures embedded, "
                       "tables, verdicts, every run's config) and report.md from study or "
                       "reproduce directories; reads the directories only.")
    p.add_argument("directories", nargs="+", help="study or reproduce directories")
    p.add_argument("--out", default="runs/report", help="where to write (default: %(default)s)")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="compare bnlab's BatchNorm with torch.nn's on LeNet shapes",
                       description="Train bnlab and torch.nn BatchNorm layers side by side on "
                       "the textbook LeNet's shapes and print the largest differences in "
                       "outputs, gradients and running statistics.")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except ValueError as e:  # a bad combination of flags (checked by TrainConfig)
        parser.error(str(e).splitlines()[0] if args.command == "train" else str(e))
    except (OSError, RuntimeError) as e:
        print(f"bnlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bnlab: interrupted (a run resumes with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
