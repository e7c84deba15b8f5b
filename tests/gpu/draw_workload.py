"""Sampled, penalised and log-prob rows over an executor, two ways: drawn on the device
(`ScheduledSeq.draw`, the executor's kernel) or drawn on the host from the full logits row with
the same `DeviceDraw` (scheduler/sampling.py `host_draw`, the reference). Each sequence keeps
one kind of draw; every step draws a fresh uniform per sampled row from one seeded generator,
so both ways see the same uniforms."""

from __future__ import annotations

import numpy as np

from scheduler.logits_processors import banned_ids, has_penalties
from scheduler.plan import DeviceDraw, Executor, ScheduledSeq, StepPlan
from scheduler.request import SamplingParams
from scheduler.sampling import host_draw

KINDS: tuple[SamplingParams, ...] = (
    SamplingParams(temperature=0.8, top_p=0.9),
    SamplingParams(repetition_penalty=1.3, logprobs=True),  # greedy with a penalty
    SamplingParams(temperature=1.2, top_k=5, min_p=0.02, presence_penalty=0.4,
                   frequency_penalty=0.3, logprobs=True),
    SamplingParams(temperature=1.0, bad_words_ids=((7,), (3,))),  # no cut, two bans
    SamplingParams(logprobs=True),  # plain greedy with its log-prob
    SamplingParams(temperature=0.6, top_k=40, top_p=0.5, repetition_penalty=0.8),
)


def make_draw(params: SamplingParams, tokens: list[int], num_prompt: int, u: float) -> DeviceDraw:
    """The draw the scheduler would plan for a row with these params (scheduler/step_rows.py)."""
    greedy = params.temperature == 0.0
    return DeviceDraw(params.temperature, params.top_k, params.top_p, params.min_p,
                      0.0 if greedy else u, params.repetition_penalty, params.presence_penalty,
                      params.frequency_penalty, list(tokens) if has_penalties(params) else (),
                      num_prompt, tuple(sorted(banned_ids(params, tokens, num_prompt, ()))),
                      params.logprobs)


def drawn_tokens(ex: Executor, prompts: list[list[int]], *, block_size: int, steps: int,
                 on_device: bool, seed: int = 0, late: bool = False
                 ) -> tuple[list[list[int]], list[list[float | None]]]:
    """A prefill step of every prompt then `steps` decode steps; sequence i draws with
    KINDS[i % len(KINDS)]. `late`: the last prompt's prefill comes one step after the others'
    (a mixed step). Returns each sequence's tokens and log-probs."""
    rng = np.random.default_rng(seed)
    tables, start = [], 0
    for p in prompts:
        n = -(-(len(p) + steps + 1) // block_size)
        tables.append(list(range(start, start + n)))
        start += n
    tokens = [list(p) for p in prompts]
    computed = [0] * len(prompts)
    logprobs: list[list[float | None]] = [[] for _ in prompts]
    for step in range(steps + 1):
        draws = [make_draw(KINDS[i % len(KINDS)], t, len(prompts[i]), float(rng.random()))
                 for i, t in enumerate(tokens)]
        active = [i for i in range(len(prompts))
                  if not (late and i == len(prompts) - 1 and step == 0)
                  and len(tokens[i]) - len(prompts[i]) < steps + 1]
        rows = [ScheduledSeq(i, tokens[i][computed[i]:], computed[i], tables[i], True,
                             not on_device, (), draws[i] if on_device else None)
                for i in active]
        result = ex.execute(StepPlan(step, rows))
        if on_device:
            assert result.argmax is not None and result.logits.shape[0] == 0
            picks = [(int(result.argmax[k]), None if result.logprobs is None
                      or not draws[i].logprob else float(result.logprobs[k]))
                     for k, i in enumerate(active)]
        else:
            picks = [host_draw(row, draws[i]) for row, i in zip(result.logits, active,
                                                                 strict=True)]
        for i, (token, lp) in zip(active, picks, strict=True):
            computed[i] = len(tokens[i])
            tokens[i].append(token)
            logprobs[i].append(lp)
    return [t[len(p):] for t, p in zip(tokens, prompts, strict=True)], logprobs
