"""The per-step hot loops over the batch: plan rows out, sampled tokens in, deltas out.

Plain functions over `Sequence`s so the Scheduler keeps the decisions (who runs, status
transitions) and these stay cheap at batch 256: no per-row copies of block tables, finish checks
only when a token can finish the request, sampling inputs built only for rows that need them.
"""

from __future__ import annotations

from collections.abc import Callable

from scheduler.logits_processors import banned_ids, has_penalties, is_greedy
from scheduler.outputs import SampledTokens, delta_output
from scheduler.plan import DeviceDraw, ScheduledSeq, StepPlan, StepResult
from scheduler.request import RequestOutput, TopLogprobs
from scheduler.sampling import SampleInput, SampleStats, choose_tokens, top_logprobs
from scheduler.sequence import SeqStatus, Sequence
from scheduler.stop import finish_status

Finish = Callable[[Sequence, SeqStatus], RequestOutput]


MAX_DEVICE_BANS = 32  # a greedy row with more banned ids takes a draw (below) instead
MAX_DRAW_BANS = 64  # a row with more banned ids than a draw takes uses the host path
MAX_DEVICE_HISTORY = 2048  # a penalised row with more tokens than this uses the host path


def build_rows(chosen: list[tuple[Sequence, int]], device_sampling: bool = False
               ) -> tuple[list[ScheduledSeq], int, int, int]:
    """Plan rows for (sequence, tokens to run now) pairs; advances num_computed_tokens.
    Returns the rows, the number of context (prefill) and generation rows, and of tokens. Rows
    share the sequence's own block table list (the executor must not mutate it, see plan.py).
    `device_sampling`: the executor samples on the device, so each logits row says whether the
    host needs its logits and which ids the device argmax skips."""
    rows = []
    ctx = tokens = 0
    for seq, n in chosen:
        tokens += n
        start = seq.num_computed_tokens
        end = start + n
        ctx += start < seq.num_prompt_tokens
        row = ScheduledSeq(seq.seq_id, seq.tokens_slice(start, end), start, seq.block_table,
                           end == seq.num_tokens)
        if device_sampling and row.want_logits:
            row.host_logits, row.banned, row.draw = device_row(seq)
        rows.append(row)
        seq.num_computed_tokens = end
    return rows, ctx, len(rows) - ctx, tokens


def device_row(seq: Sequence) -> tuple[bool, tuple[int, ...], DeviceDraw | None]:
    """(host needs the full logits row, ids the device argmax skips, how the device draws the
    token instead) for seq's next token: plain greedy -> argmax on the device; greedy with bans
    only (min_tokens, bad words) -> argmax with the bans skipped; sampled, penalised or log-prob
    rows -> a `DeviceDraw` (the request's uniform is taken now); top_logprobs rows, rows with
    more than MAX_DRAW_BANS bans and penalised rows longer than MAX_DEVICE_HISTORY -> the host."""
    params = seq.request.params
    if params.top_logprobs:
        return True, (), None
    plain = seq.num_tokens >= seq.plain_greedy_from
    if plain and not params.logprobs:
        return False, (), None
    greedy, penalised = is_greedy(params), has_penalties(params)
    if plain:
        bans: tuple[int, ...] = ()
    elif not params.bad_words_ids:
        bans = seq.end_ids if seq.num_tokens - seq.num_prompt_tokens < params.min_tokens else ()
    else:
        bans = tuple(sorted(banned_ids(params, seq.token_view, seq.num_prompt_tokens,
                                       seq.end_ids)))
    if greedy and not params.logprobs and not penalised and len(bans) <= MAX_DEVICE_BANS:
        return False, bans, None
    if len(bans) > MAX_DRAW_BANS or (penalised and seq.num_tokens > MAX_DEVICE_HISTORY):
        return True, (), None
    if greedy:
        u = 0.0
    else:
        assert seq.rng is not None, "sampled row without a generator"
        u = float(seq.rng.random())
    return False, (), DeviceDraw(
        0.0 if greedy else params.temperature, params.top_k, params.top_p, params.min_p, u,
        params.repetition_penalty, params.presence_penalty, params.frequency_penalty,
        seq.token_view if penalised else (), seq.num_prompt_tokens, bans, params.logprobs)


def sample_rows(plan: StepPlan, result: StepResult, seqs: list[Sequence],
                stats: SampleStats | None = None) -> SampledTokens:
    """Choose the next token of every logits row of `plan` (`seqs`: one per row, plan order)."""
    if result.logits_rows is not None:
        return _sample_device_rows(plan, result, seqs, stats)
    n = len(seqs)
    if result.step_id != plan.step_id or result.logits.shape[0] != n:
        raise ValueError(f"step result {result.step_id} with {result.logits.shape[0]} rows "
                         f"does not match plan {plan.step_id} ({n} rows)")
    argmax = result.argmax
    if argmax is not None and argmax.shape != (n,):
        raise ValueError(f"step result argmax of shape {argmax.shape} for {n} logits rows")
    if not n:
        return SampledTokens(plan.step_id, seqs, [], [])
    special = [(i, SampleInput(s.params, s.token_view, s.num_prompt_tokens, s.end_ids, s.rng))
               for i, s in enumerate(seqs) if s.num_tokens < s.plain_greedy_from]
    want_logprobs = [i for i, s in enumerate(seqs) if s.request.params.logprobs]
    tokens, logprobs = choose_tokens(result.logits, argmax, special, want_logprobs, stats)
    top: list[TopLogprobs | None] | None = None
    for i in want_logprobs:  # usually none: no per-row cost otherwise
        k = seqs[i].request.params.top_logprobs
        if k:
            top = top or [None] * n
            top[i] = top_logprobs(result.logits[i], k)
    return SampledTokens(plan.step_id, seqs, tokens, logprobs, top)


def _sample_device_rows(plan: StepPlan, result: StepResult, seqs: list[Sequence],
                        stats: SampleStats | None) -> SampledTokens:
    """A result of an executor that sampled on the device: `argmax` (bans skipped, or the
    row's draw) is the token of every row, `logprobs` the log-probs draws asked for; the host
    rows (`logits_rows`, raw logits) are processed / sampled here."""
    n, host = len(seqs), result.logits_rows
    assert host is not None
    argmax = result.argmax
    if (result.step_id != plan.step_id or argmax is None or argmax.shape != (n,)
            or result.logits.shape[0] != len(host)
            or (result.logprobs is not None and result.logprobs.shape != (n,))):
        raise ValueError(f"step result {result.step_id} (argmax for "
                         f"{None if argmax is None else argmax.shape} rows, {len(host)} host "
                         f"rows, {result.logits.shape[0]} logits rows) does not match plan "
                         f"{plan.step_id} ({n} rows)")
    tokens: list[int] = argmax.tolist()
    logprobs: list[float | None] = [None] * n
    if result.logprobs is not None:
        for i, lp in enumerate(result.logprobs.tolist()):
            if seqs[i].request.params.logprobs:
                logprobs[i] = lp
    if not len(host):
        return SampledTokens(plan.step_id, seqs, tokens, logprobs)
    idx = host.tolist()
    sub = sample_rows(StepPlan(plan.step_id, []),
                      StepResult(plan.step_id, result.logits, argmax[host]),
                      [seqs[i] for i in idx], stats)
    top: list[TopLogprobs | None] | None = None if sub.top is None else [None] * n
    for k, i in enumerate(idx):
        tokens[i], logprobs[i] = sub.tokens[k], sub.logprobs[k]
        if top is not None and sub.top is not None:
            top[i] = sub.top[k]
    return SampledTokens(plan.step_id, seqs, tokens, logprobs, top)


def apply_tokens(sampled: SampledTokens, max_model_len: int,
                 finish: Finish) -> list[RequestOutput]:
    """Append each running row's token; `finish` the ones it ends (the caller then drops them
    from its running list), a delta for the others."""
    outputs = []
    if sampled.top is not None:
        for seq, top in zip(sampled.seqs, sampled.top, strict=True):
            if top is not None and seq.status is SeqStatus.RUNNING:
                seq.output_top_logprobs.append(top)
    for seq, tok, lp in zip(sampled.seqs, sampled.tokens, sampled.logprobs, strict=True):
        if seq.status is not SeqStatus.RUNNING:
            continue  # aborted while the step ran
        num_tokens = seq.append_token(tok, lp)
        if tok in seq.stop_ids or num_tokens >= seq.length_limit:
            status = finish_status(seq, seq.end_ids, max_model_len)
            if status is not None:
                outputs.append(finish(seq, status))
                continue
        outputs.append(delta_output(seq))
    return outputs
