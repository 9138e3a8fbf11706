"""The ``bnlab`` command. Every subcommand is a thin shell over a Python function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Command = Callable[[argparse.Namespace], int]


def _demo(args: argparse.Namespace) -> int:
    from bnlab.demo import main

    return main()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnlab",
        description="bnlab: a batch-normalization library and laboratory for PyTorch.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("demo", help="compare bnlab's BatchNorm with torch.nn's on LeNet shapes",
                       description="Train bnlab and torch.nn BatchNorm layers side by side on "
                                   "the textbook LeNet's shapes and print the largest "
                                   "differences in outputs, gradients and running statistics.")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
