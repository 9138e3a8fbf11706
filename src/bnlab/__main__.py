"""``python -m bnlab`` and the ``bnlab`` script: the command, with Ctrl-C covered from the start.

``run`` imports the command inside its own Ctrl-C handler, so an interrupt while the command's
modules load exits with status 130 and no traceback, as it does later (``bnlab.cli.main``).
Before this module runs, only the interpreter's start and ``import bnlab`` (which loads nothing
heavy) are outside any handler.
"""

import sys


def run() -> None:
    try:
        from bnlab.cli import main

        code = main()
    except KeyboardInterrupt:  # while bnlab.cli loads (main has its own handler after that)
        sys.stderr.write("bnlab: interrupted (a run resumes with --resume)\n")  # as main's
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
