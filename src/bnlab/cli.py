"""The ``bnlab`` command. Every subcommand is a thin shell over a Python function.

Exit status, the same for every subcommand:

* 2, a usage error, found while parsing: a bad flag value (the flags of ``train``, ``study``
  and the run flags are generated from ``TrainConfig`` and ``StudyOptions`` by
  ``bnlab.settings``, and checked by the same rules as the dataclasses: finite, in range), an
  empty ``--out``, a ``--data-dir`` that is not a directory, or a combination of flags that
  TrainConfig refuses. argparse prints the usage and one ``bnlab COMMAND: error: ...`` line.
* 1, a problem found while running that the user can fix: a damaged or hostile file, data that
  do not fit, a run directory in use, a missing device. ``main`` is the one place that turns
  these (``bnlab.errors.UserError``, and the ``OSError``/``RuntimeError`` of the machine) into
  one line ``bnlab: error: ...`` that names the file and the fix; no traceback.
* 130, interrupted (Ctrl-C) at any moment after the interpreter has started: nothing heavy is
  imported at module level, so the imports of torch and of the subcommands run inside
  ``main``'s handler too.

Anything else that escapes is a bug in bnlab and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from bnlab.errors import UserError, one_line

Command = Callable[[argparse.Namespace], int]


# ---- checked flag types, shared by every subcommand -------------------------------------------

def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def out_dir(text: str) -> str:
    """A directory to write into: a non-empty name that is not an existing file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory name, got an empty one")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return text


def out_file(text: str) -> str:
    """A file to write: a non-empty name that is not an existing directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got an empty one")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file")
    return text


def dir_name(text: str) -> str:
    """A non-empty directory name that may not exist yet (data fetch --data-dir)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory name, got an empty one")
    return text


# ---- subcommands -------------------------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    from bnlab.demo import main

    return main()


def _train(args: argparse.Namespace) -> int:
    from bnlab.train import train

    run = train(args.config, args.out, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        print(f"run directory: {run.path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from bnlab.studies.reproduce import reproduce, textbook_line

    result = reproduce(epochs=args.epochs, out=args.out, quick=args.quick, seed=args.seed,
                       data_dir=args.data_dir, threads=args.threads, device=args.device,
                       sweep=_sweep(args))
    lines = [f"{name:>9}: {textbook_line(run)}" for name, run in result.runs.items()]
    print("\n" + "\n".join(lines) + "\n\n" + result.table)
    print(f"report: {result.report}\ncurves: {result.curves}\n"
          f"study: {result.out}: figure.png, table.md, table.csv, verdict, study.json")
    return 0


def _study(args: argparse.Namespace) -> int:
    from bnlab.studies.base import run_study
    from bnlab.studies.options import StudyOptions
    from bnlab.studies.registry import get_study

    opts = StudyOptions.from_args(args)
    out = opts.out_dir()
    run_study(get_study(opts.name), out, quick=opts.quick, seeds=opts.seeds,
              analyze_only=opts.analyze_only, data_dir=opts.data_dir, threads=opts.threads,
              model=opts.model, dataset=opts.dataset, sweep=_sweep(args))
    print(f"study written to {out}: figure.png, table.md, table.csv, verdict, study.json")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bnlab.report.html import build_report

    page, text = build_report(args.directories, args.out)
    print(f"report: {page}\nmarkdown: {text}")
    if args.docs:
        from pathlib import Path

        from bnlab.report.studies_doc import write_studies_doc

        doc = write_studies_doc(args.directories, args.docs, Path(args.out) / "figures")
        print(f"studies page: {doc}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bnlab.train.evaluate import EvaluateOptions, evaluate_run

    o = EvaluateOptions(**{k: getattr(args, k) for k in EvaluateOptions.__dataclass_fields__})
    result = evaluate_run(o.run, precise_bn=o.precise_bn, dataset=o.dataset,
                          data_dir=o.data_dir, model=o.model)
    print("\n".join(result.lines()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from bnlab.report.compare import compare

    result = compare(args.runs, args.out)
    print(f"figure: {result.figure}\ntable: {result.markdown}\npage: {result.html}")
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


# ---- the parser --------------------------------------------------------------------------------

class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, plus every flag's default: appended as ``(default: X)`` unless the text
    already says it. A flag whose default is None must state it in words (``(default: all)``);
    a switch shows ``(default: off)``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.required \
                or action.default is argparse.SUPPRESS or action.default is None:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose description may end with text computed only when help is shown
    (`describe`): the study list needs the studies, which ``bnlab --help`` must not import."""

    def __init__(self, *args: Any, describe: Callable[[], str] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.describe = describe

    def format_help(self) -> str:
        if self.describe is not None:
            self.description = f"{self.description or ''} {self.describe()}".strip()
            self.describe = None
        return super().format_help()


def _study_description() -> str:
    from bnlab.studies.registry import STUDIES

    return "Studies (seeds per arm): " + "; ".join(f"{n} ({s.seeds}): {s.question}"
                                                   for n, s in STUDIES.items())


def _run_flags() -> Parser:
    """--data-dir and --threads: the flags of every subcommand that trains (TrainConfig's)."""
    from bnlab.settings import add_flags
    from bnlab.train.config import TrainConfig

    p = Parser(add_help=False)
    add_flags(p, TrainConfig, ("data_dir", "threads"))
    return p


def _sweep(args: argparse.Namespace) -> Any:
    """Where a study's runs train (``bnlab.studies.sweep``), from StudyOptions' flags."""
    from bnlab.studies.sweep import Sweep

    return Sweep(workers=args.workers, address=args.address or os.environ.get("RAY_ADDRESS")
                 or None, debug=getattr(args, "debug", False))


def _export(args: argparse.Namespace) -> int:
    from bnlab.deploy import ExportOptions, export_onnx

    o = ExportOptions(**{k: getattr(args, k) for k in ExportOptions.__dataclass_fields__})
    report = export_onnx(o.run, o.onnx, dynamo=o.exporter == "dynamo", fold=o.fold,
                         precise_bn=o.precise_bn)
    print(report.summary())
    return 0


def _add_export(sub: Any) -> None:
    from bnlab.deploy import ExportOptions
    from bnlab.settings import add_flags

    p = sub.add_parser("export", help="write a run's model as ONNX, checked in onnxruntime",
                       description="Export the model of a run directory (its last checkpoint, "
                       "eval mode) to ONNX with standard operators and a dynamic batch size, "
                       "run it in onnxruntime on a batch of the run's test data and print the "
                       "largest difference from PyTorch. The file is written only if they "
                       "agree (float32: 1e-5 relative), atomically.")
    add_flags(p, ExportOptions)
    p.set_defaults(func=_export)


def build_parser() -> argparse.ArgumentParser:
    from bnlab import __version__
    from bnlab.settings import add_flags
    from bnlab.studies.options import StudyOptions
    from bnlab.train.config import TrainConfig

    parser = Parser(
        prog="bnlab",
        description="bnlab: a batch-normalization library and laboratory for PyTorch.")
    parser.add_argument("--version", action="version", version=f"bnlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the full traceback too (also BNLAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    run_flags = _run_flags()

    p = sub.add_parser("reproduce", parents=[run_flags],
                       help="the textbook's LeNet comparison: no BN vs bnlab BN "
                       "vs torch BN, with table, curves.png and REPORT.md",
                       description="Train LeNet without BN, with bnlab's BN and with torch's BN "
                       "on Fashion-MNIST (the textbook recipe), then write the comparison "
                       "table, curves.png and REPORT.md into --out, with the files of a study "
                       "(the `reproduce` study, one seed: table.md, verdict, study.json). "
                       "Finished runs are reused and interrupted ones resumed.")
    add_flags(p, TrainConfig, ("epochs", "seed", "device"))
    add_flags(p, StudyOptions, ("workers", "address"))  # where its runs train, as a study's
    p.add_argument("--out", type=out_dir, default="runs/reproduce", help="output directory "
                   "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="2 epochs on a 4096-example subset")
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("train", help="train one model into a run directory",
                       description="Train one configuration; writes config.json, "
                       "metrics.jsonl, checkpoint.pt and DONE into --out. Under torchrun "
                       "it is data-parallel (gloo on CPU, NCCL on CUDA); rank 0 writes. One "
                       "process writes a run directory at a time.")
    p.add_argument("--config", dest="config_file", metavar="FILE",
                   help="read settings from a JSON or YAML file (a run's config.json works); "
                        "flags given here win over it (default: none)")
    add_flags(p, TrainConfig)  # every setting's flag, generated from its declaration
    p.add_argument("--out", type=out_dir, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.set_defaults(func=_train, parser=p)

    p = sub.add_parser("inspect", help="per-BN-layer gamma, beta and running statistics",
                       description="Print every normalization layer's gamma, beta, running "
                       "mean and running variance from a checkpoint or run directory.")
    p.add_argument("checkpoint", help="checkpoint.pt or a run directory")
    p.add_argument("--show", type=positive_int, default=6,
                   help="values shown per vector (default: %(default)s)")
    p.set_defaults(func=_inspect)

    from bnlab.data.registry import DATASETS

    p = sub.add_parser("data", help="locate, validate or download datasets",
                       description="info: where the data would be read from; check: validate "
                       "every file (structure, counts, checksums); fetch: download a verified "
                       "copy into the cache when none is present.")
    p.add_argument("action", choices=("info", "check", "fetch"), help="what to do")
    p.add_argument("--dataset", choices=sorted(DATASETS), default="fashion-mnist",
                   help="dataset (default: %(default)s)")
    p.add_argument("--data-dir", type=dir_name,
                   help="directory to read from (fetch: to download into) (default: found "
                        "automatically; fetch: the cache)")
    p.add_argument("--force", action="store_true", help="fetch: download even if present")
    p.set_defaults(func=_data, parser=p)

    p = sub.add_parser("kernels", help="build or check the compiled fast BatchNorm kernels",
                       description="build: compile bnlab's fused CPU BatchNorm kernels (once "
                       "per machine; make setup does it); status: say whether they are in use. "
                       "Without them bnlab runs its reference implementation.")
    p.add_argument("action", choices=("build", "status"), help="what to do")
    p.add_argument("--force", action="store_true", help="build: recompile even if built")
    p.set_defaults(func=_kernels)
    _add_export(sub)

    p = sub.add_parser("study",
                       help="run an experiment that answers a learner's question",
                       description="Train every arm of a study for several seeds (finished "
                       "runs are reused), then write figure.png, table.md/csv, verdict and "
                       "study.json.", describe=_study_description)
    add_flags(p, StudyOptions)  # (--data-dir and --threads: TrainConfig's, as above)
    p.set_defaults(func=_study)

    p = sub.add_parser("report", help="one HTML page (and Markdown) from study directories",
                       description="Build a self-contained report.html (figures embedded, "
                       "tables, verdicts, every run's config) and report.md from study or "
                       "reproduce directories; reads the directories only, writes only "
                       "inside --out.")
    p.add_argument("directories", nargs="+", help="study or reproduce directories")
    p.add_argument("--out", type=out_dir, default="runs/report",
                   help="where to write (default: %(default)s)")
    p.add_argument("--docs", type=out_file, default=None, metavar="FILE",
                   help="also write the studies page (docs/studies.md) from the study "
                   "directories, its figures linked from OUT/figures (default: not written)")
    p.set_defaults(func=_report)

    p = sub.add_parser("compare", help="any runs side by side: one figure and one table",
                       description="Plot train loss, train accuracy and test accuracy per "
                       "epoch for every run given, and tabulate their differing settings "
                       "and final results: compare.png, compare.md and compare.html in "
                       "--out. Reads the run directories only.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (bnlab train)")
    p.add_argument("--out", type=out_dir, default="runs/compare",
                   help="where to write (default: %(default)s)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("evaluate", help="test accuracy and loss of a run's checkpoint",
                       description="Evaluate a run's last checkpoint on its test data (or "
                       "--dataset): accuracy and cross-entropy loss with the running "
                       "averages and, with --precise-bn N, with BatchNorm statistics "
                       "re-estimated over N training examples (PreciseBN). Reads the run "
                       "directory only.")
    from bnlab.train.evaluate import EvaluateOptions

    add_flags(p, EvaluateOptions)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("demo", help="compare bnlab's BatchNorm with torch.nn's on LeNet shapes",
                       description="Train bnlab and torch.nn BatchNorm layers side by side on "
                       "the textbook LeNet's shapes and print the largest differences in "
                       "outputs, gradients and running statistics.")
    p.set_defaults(func=_demo)
    for command in sub.choices.values():  # `bnlab train ... --debug` works as well
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, print the full traceback too (default: off)")
    return parser


def _check_combinations(args: argparse.Namespace) -> None:
    """What one flag cannot say alone, still at parse time (exit 2)."""
    if args.command == "train":
        from bnlab.train.config import TrainConfig

        names = {f.name for f in fields(TrainConfig)}
        try:
            args.config = TrainConfig(**{k: v for k, v in vars(args).items()
                                         if k in names and v is not None})
        except ValueError as e:
            args.parser.error(one_line(str(e)))
    if args.command == "data" and args.action != "fetch" and args.data_dir is not None \
            and not os.path.isdir(args.data_dir):
        args.parser.error(f"argument --data-dir: {args.data_dir!r} is not a directory")


def _with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Sequence[str] | None) -> argparse.Namespace:
    """`args` again, with --config FILE's settings as the defaults: explicit flags win."""
    if not getattr(args, "config_file", None):
        return args
    from bnlab.train.config_file import read_config_file

    args.parser.set_defaults(**read_config_file(args.config_file))
    return parser.parse_args(argv)


def _fail(e: BaseException, debug: bool = False) -> int:
    if debug:  # the whole story, the user's own frames and the chained cause included
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    print(f"bnlab: error: {one_line(str(e)) or type(e).__name__}", file=sys.stderr)
    return 1


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = _with_config_file(parser, args, argv)
    except (UserError, OSError) as e:  # the file is the user's to fix (exit 1, not usage's 2)
        return _fail(e)
    _check_combinations(args)
    func: Command = args.func
    try:
        from bnlab import memory

        # The command is an application: freed tensor memory is kept for the next tensor
        # (bnlab.memory; BNLAB_MEMORY=system leaves the C library as it is).
        if memory.policy_from_env() == "reuse":
            memory.set_policy("reuse")
        return func(args)
    except (UserError, OSError, RuntimeError) as e:  # the user's to fix: one line, no traceback
        return _fail(e, args.debug or os.environ.get("BNLAB_DEBUG") == "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the return value is the exit status (see the module docstring)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # A second Ctrl-C must not break the goodbye into a traceback (ValueError: not the
        # main thread, where no signal arrives anyway).
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("bnlab: interrupted (a run resumes with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
