"""Run a function on W gloo processes on 127.0.0.1 and collect what each rank returns."""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple,
           out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        result = fn(rank, world, *args)
        torch.save({"ok": result}, Path(out) / f"rank{rank}.pt")
    except BaseException:  # report the failure to the parent instead of dying silently
        torch.save({"error": traceback.format_exc()}, Path(out) / f"rank{rank}.pt")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, tmp: Path, *args: Any,
              timeout: float = 60.0, dead: frozenset[int] = frozenset()) -> list[Any]:
    """Results of `fn(rank, world, *args)` per rank; ranks in `dead` must exit with nothing."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, str(tmp)))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} rank(s) still running after {timeout}s"
    results = []
    for r in range(world):
        if r in dead:
            assert not (tmp / f"rank{r}.pt").exists() and procs[r].exitcode != 0
            results.append(None)
            continue
        got = torch.load(tmp / f"rank{r}.pt", weights_only=False)
        assert "error" not in got, f"rank {r} failed:\n{got.get('error')}"
        results.append(got["ok"])
    return results
