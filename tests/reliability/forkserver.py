"""Run ``bnlab`` command lines, each in its own forked child process: the CLI tests' runner.

Started once per test session as ``python forkserver.py`` (environment inherited), it imports
bnlab and everything its subcommands import, then reads one JSON request per line on stdin:
``{"argv": [...], "cwd": ..., "env": {...}, "stdout": path, "stderr": path, "timeout": s,
...}``. For each it forks a child that runs the command through the entry point
(``bnlab.__main__.run``) as ``python -m bnlab`` does (an exception escaping it prints its
traceback and exits 1, as the interpreter would), with stdout and stderr going to the given
files, and
answers one JSON line: ``{"rc": ..., "timed_out": ...}``. rc is the exit status, or minus the
signal that ended the child: a crash is a test failure, never a crash of the test runner.
``interrupt_after`` sends the child SIGINT (Ctrl-C) that many seconds after it started;
``interrupt_when``, as soon as that path exists; ``interrupt_at_call: N``, at the exact moment
the command enters its N-th call of a function of bnlab (call 1 is the entry point itself;
the child interrupts itself from a ``sys.setprofile`` hook). With ``count_calls`` the answer
also holds ``calls``, how many calls of bnlab functions the command made: a sweep of N over
1..calls interrupts a command at every stage of its work, deterministically.

Forking after the imports makes a case cost what its command costs (milliseconds for a usage
error), not the two seconds of importing torch again; the imports happen before any tensor
work, so no thread pool exists yet when the children are forked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: 2 s per child)

import bnlab.__main__
import bnlab.cli
import bnlab.data.commands
import bnlab.demo
import bnlab.report.html
import bnlab.report.inspect
import bnlab.studies.registry
import bnlab.studies.reproduce
import bnlab.train.loop

bnlab.cli.build_parser()  # the parser's own imports
SRC = os.path.dirname(bnlab.__file__)


def call_counter(calls: list[int], interrupt_at: int | None):
    """A profile hook counting calls of bnlab functions, sending SIGINT at call `interrupt_at`."""
    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(SRC):
            calls[0] += 1
            if calls[0] == interrupt_at:
                sys.setprofile(None)
                os.kill(os.getpid(), signal.SIGINT)
    return profile


def child(case: dict) -> None:
    """In the forked child: run the command line; never returns."""
    code, calls = 1, [0]
    try:
        # Ctrl-C as at a terminal: a shell starts background jobs (a CI script's `make test &`)
        # with SIGINT ignored, and Python then leaves it ignored; these cases press Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(case["cwd"])
        os.environ.update(case.get("env", {}))
        for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
            target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        if case.get("count_calls") or case.get("interrupt_at_call"):
            sys.setprofile(call_counter(calls, case.get("interrupt_at_call")))
        sys.argv = ["bnlab", *case["argv"]]
        try:
            bnlab.__main__.run()  # the `bnlab` script's entry point; it exits
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:  # what the interpreter does with an escaping exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.setprofile(None)
            sys.stdout.flush()
            sys.stderr.flush()
            if case.get("count_calls"):
                with open(case["stdout"] + ".calls", "w") as f:
                    f.write(str(calls[0]))
        finally:
            os._exit(code if isinstance(code, int) else 1)


def wait(pid: int, timeout: float, after: float | None, when: str | None) -> tuple[int, bool]:
    start = time.monotonic()
    interrupted = after is None and when is None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        elapsed = time.monotonic() - start
        if not interrupted and ((after is not None and elapsed >= after)
                                or (when is not None and os.path.exists(when))):
            os.kill(pid, signal.SIGINT)
            interrupted = True
        if elapsed > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL, True
        time.sleep(0.002)


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of this process must not mix with the answers
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(case)
        rc, timed_out = wait(pid, case.get("timeout", 120), case.get("interrupt_after"),
                             case.get("interrupt_when"))
        answer = {"rc": rc, "timed_out": timed_out}
        if case.get("count_calls") and os.path.exists(case["stdout"] + ".calls"):
            with open(case["stdout"] + ".calls") as f:
                answer["calls"] = int(f.read())
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
