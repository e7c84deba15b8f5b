"""Drive a reference executor and a device executor in lockstep over the same plans: mixed
prefill (one chunked), decode steps, shuffled non-contiguous block tables, and one step that
moves a sequence to fresh blocks through block_copies. Tokens follow the reference's argmax."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler.plan import Executor, ScheduledSeq, StepPlan


@dataclass
class _Seq:
    seq_id: int
    tokens: list[int]
    table: list[int]
    computed: int = 0
    chunks: list[int] = field(default_factory=list)  # prefill chunk sizes still to run


def _plan(step_id: int, seqs: list[_Seq], copies: list[tuple[int, int]]) -> StepPlan:
    out = []
    for s in seqs:
        n = s.chunks.pop(0) if s.chunks else len(s.tokens) - s.computed
        out.append(ScheduledSeq(seq_id=s.seq_id, token_ids=s.tokens[s.computed:s.computed + n],
                                start_pos=s.computed, block_table=list(s.table),
                                want_logits=s.computed + n == len(s.tokens)))
    return StepPlan(step_id=step_id, seqs=out, block_copies=copies)


def single_sequence_plans(vocab: int, seed: int = 3) -> list[StepPlan]:
    """A fresh prompt of sequence 0, its next chunk after a past of 9, one decode token, a
    decode beside a prompt of sequence 1, then prompts of sequences 2 and 3 together (blocks
    0-13 of a pool of 4 tokens a block)."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.integers(0, vocab, n).tolist() for n in (13, 6, 5))
    t0 = list(range(0, 6))
    seqs = [[ScheduledSeq(0, a[:9], 0, t0, True)], [ScheduledSeq(0, a[9:], 9, t0, True)],
            [ScheduledSeq(0, [a[3]], 13, t0, True)],
            [ScheduledSeq(0, [a[4]], 14, t0, True),
             ScheduledSeq(1, b, 0, list(range(6, 10)), True)],
            [ScheduledSeq(2, c, 0, list(range(10, 12)), True),
             ScheduledSeq(3, b[:3], 0, list(range(12, 14)), True)]]
    return [StepPlan(step, s) for step, s in enumerate(seqs)]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-6))


def lockstep(ref: Executor, dut: Executor, *, vocab: int, block_size: int, num_blocks: int,
             decode_steps: int = 10, seed: int = 0, move_at_step: int = 4) -> list[float]:
    """Relative logits error of `dut` vs `ref` for every step (prefill + decode_steps)."""
    rng = np.random.default_rng(seed)
    lens = (7, 9, 3)
    need = -(-(max(lens) + decode_steps + 2) // block_size)
    free = rng.permutation(num_blocks).tolist()
    assert len(free) >= need * (len(lens) + 1), "pool too small for the workload"
    seqs = [_Seq(i, rng.integers(0, vocab, n).tolist(), [free.pop() for _ in range(need)])
            for i, n in enumerate(lens)]
    seqs[1].chunks = [5, 4]  # chunked prefill over the first two steps
    errors = []
    for step in range(decode_steps + 2):
        copies: list[tuple[int, int]] = []
        if step == move_at_step:  # copy-on-write style move of seq 0 to fresh blocks
            fresh = [free.pop() for _ in seqs[0].table]
            copies = list(zip(seqs[0].table, fresh, strict=True))
            seqs[0].table = fresh
        plan = _plan(step, seqs, copies)
        want = ref.execute(plan).logits
        got = dut.execute(plan).logits
        assert got.shape == want.shape and got.dtype == np.float32
        errors.append(relative_error(got, want))
        rows = iter(want.argmax(axis=-1).tolist())
        for s, sched in zip(seqs, plan.seqs, strict=True):
            s.computed += len(sched.token_ids)
            if sched.want_logits:
                s.tokens.append(next(rows))
    return errors


def greedy_tokens(ex: Executor, prompts: list[list[int]], *, block_size: int, steps: int,
                  first_block: int = 0, host_logits: bool = True
                  ) -> tuple[list[list[int]], list[np.ndarray]]:
    """One prefill step of every prompt, then `steps` greedy decode steps of all of them (pure
    decode plans: the CUDA-graph path); the tokens each sequence generated and every step's
    logits. Sequence i owns the contiguous blocks after those of sequences < i. With
    `host_logits` False the rows ask a device sampler for token ids only (the tokens are its
    `argmax`; the logits list then holds the empty host-row arrays)."""
    tables, start = [], first_block
    for p in prompts:
        n = -(-(len(p) + steps + 1) // block_size)
        tables.append(list(range(start, start + n)))
        start += n
    tokens = [list(p) for p in prompts]
    computed = [0] * len(prompts)
    logits_seen = []
    for step in range(steps + 1):
        plan = StepPlan(step, [ScheduledSeq(i, t[c:], c, tables[i], True, host_logits)
                               for i, (t, c) in enumerate(zip(tokens, computed, strict=True))])
        result = ex.execute(plan)
        logits_seen.append(result.logits)
        if host_logits:
            picks = result.logits.argmax(axis=-1).tolist()
        else:
            assert result.argmax is not None and result.logits.shape[0] == 0
            picks = result.argmax.tolist()
        for i, row in enumerate(picks):
            computed[i] = len(tokens[i])
            tokens[i].append(int(row))
    return [t[len(p):] for t, p in zip(tokens, prompts, strict=True)], logits_seen
