"""Greedy rows with min_tokens / bans / penalties: the few-ids path picks exactly the token the
full-row path (copy, process_row, argmax) picks, ties and banned argmaxes included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.logits_processors import greedy_processed_token, process_row
from scheduler.request import SamplingParams
from scheduler.sampling import SampleInput, choose_tokens


@st.composite
def _cases(draw: st.DrawFn) -> tuple[np.ndarray, SamplingParams, list[int], int, list[int]]:
    vocab = draw(st.integers(4, 40))
    values = st.floats(-8, 8, width=32) if draw(st.booleans()) else st.integers(-3, 3)
    row = np.asarray(draw(st.lists(values, min_size=vocab, max_size=vocab)), np.float32)
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12))
    num_prompt = draw(st.integers(0, len(ids)))
    kw: dict[str, object] = {"max_tokens": 64}
    if draw(st.booleans()):
        kw["repetition_penalty"] = draw(st.sampled_from([0.5, 1.3, 2.0]))
    if draw(st.booleans()):
        kw["presence_penalty"] = draw(st.sampled_from([-1.0, 0.5, 2.0]))
        kw["frequency_penalty"] = draw(st.sampled_from([-0.5, 0.0, 0.7]))
    if draw(st.booleans()):
        words = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3))
        kw["bad_words_ids"] = [[w] for w in words] + [[ids[-1], words[0]]]
    kw["min_tokens"] = draw(st.integers(0, 20))
    end_ids = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=2))
    return row, SamplingParams(**kw), ids, num_prompt, end_ids  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(_cases())
def test_few_ids_path_equals_full_row_path(case: tuple) -> None:
    row, params, ids, num_prompt, end_ids = case
    full = row.copy()
    process_row(full, params, ids, num_prompt, end_ids)
    got = greedy_processed_token(row, params, ids, num_prompt, end_ids, int(np.argmax(row)))
    assert got == int(np.argmax(full))


def test_min_tokens_rows_with_executor_argmax() -> None:
    """Greedy min_tokens rows: the executor argmax when it is not an end id, else the next best."""
    vocab = 50_000
    logits = np.zeros((2, vocab), np.float32)
    logits[:, 7] = 5.0
    logits.setflags(write=False)
    params = SamplingParams(max_tokens=8, min_tokens=8)
    rows = [(i, SampleInput(params, [1, 2, 3], 3, [0], None)) for i in range(2)]
    tokens, _ = choose_tokens(logits, np.array([7, 7]), rows, [])
    assert tokens == [7, 7]
    logits2 = logits.copy()
    logits2[:, 0] = 9.0  # the end id is the argmax: banned, the full path picks the next best
    tokens, _ = choose_tokens(logits2, np.array([0, 0]), rows, [])
    assert tokens == [7, 7]
