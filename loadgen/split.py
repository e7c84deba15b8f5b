"""How one run is divided among client processes: which prompts, streams and send times each
process gets. Pure functions; the union of the shares is the run that one process would make."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from loadgen.dataset import BenchPrompt
from loadgen.generator import poisson_schedule

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Share:
    """One client process's part of a run."""

    indices: tuple[int, ...]         # positions of its prompts in the run's prompt list
    prompts: tuple[BenchPrompt, ...]  # those prompts, in that order
    concurrency: int                 # closed loop: its streams; open loop: 0
    send_at: tuple[float, ...]       # open loop: seconds from the run start per prompt; else ()


def even_split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one, larger ones first."""
    base, extra = divmod(total, parts)
    return [base + (k < extra) for k in range(parts)]


def closed_loop_shares(prompts: Sequence[BenchPrompt], concurrency: int,
                       procs: int) -> list[Share]:
    """Streams split as evenly as possible; prompt i belongs to stream slot i % concurrency and
    goes to the process owning that slot, so each process gets prompts in proportion to its
    streams and every prompt is sent exactly once."""
    streams = even_split(min(concurrency, len(prompts)), procs)
    owner: list[int] = [k for k, n in enumerate(streams) for _ in range(n)]
    slots = len(owner)
    shares = []
    for k, n in enumerate(streams):
        idx = tuple(i for i in range(len(prompts)) if owner[i % slots] == k)
        shares.append(Share(idx, tuple(prompts[i] for i in idx), n, ()))
    return shares


def open_loop_shares(prompts: Sequence[BenchPrompt], rate: float, seed: int,
                     procs: int) -> list[Share]:
    """The one-process Poisson schedule, dealt round-robin: prompt i is sent by process
    i % procs at the same time as one process would send it."""
    schedule = poisson_schedule(len(prompts), rate, seed)
    shares = []
    for k in range(procs):
        idx = tuple(range(k, len(prompts), procs))
        shares.append(Share(idx, tuple(prompts[i] for i in idx), 0,
                            tuple(schedule[i] for i in idx)))
    return shares


def make_shares(prompts: Sequence[BenchPrompt], mode: str, value: float, seed: int,
                procs: int) -> list[Share]:
    """The shares of a run at sweep value `value` over `procs` processes (none empty)."""
    if mode == "concurrency":
        shares = closed_loop_shares(prompts, int(value), procs)
    else:
        shares = open_loop_shares(prompts, value, seed, procs)
    return [s for s in shares if s.indices]
