"""Greedy sampling on the device (engine/device/sampling.py), on CPU over the cuda-python fake
device (its `logits_pick` emulation) with onnxruntime CPU standing in for the CUDA EP: rows that
need only a token id get the argmax with their banned ids skipped and no logits copy; host rows
come back raw, in plan order, through plain, bucketed and split mixed steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.device.draw_kernel import DRAW_SOURCE, draw_arrays
from engine.device.sampling import PICK_SOURCE, ban_matrix, host_rows, row_runs
from engine.executors import ort_cuda
from engine.limits import StepLimits
from scheduler.plan import DeviceDraw, ScheduledSeq, StepPlan

from .draw_workload import drawn_tokens
from .test_decode_graphs_cpu import _RecordingSession
from .tiny_model import BLOCK_SIZE, TINY
from .workload import greedy_tokens

NUM_BLOCKS = 64


def _row(seq_id: int, tokens: list[int], start: int, table: list[int], want: bool = True,
         host: bool = True, banned: tuple[int, ...] = ()) -> ScheduledSeq:
    return ScheduledSeq(seq_id, tokens, start, table, want, host, banned)


def test_ban_matrix_host_rows_and_runs() -> None:
    rows = [_row(0, [1], 0, [0], host=False, banned=(3, 9)), _row(1, [1, 2], 0, [1], want=False),
            _row(2, [1], 0, [2], host=True), _row(3, [1], 0, [3], host=False, banned=(4,))]
    assert ban_matrix(rows).tolist() == [[3, 9], [-1, -1], [4, -1]]
    assert ban_matrix(rows[1:3]).shape == (1, 0)
    assert host_rows(rows).tolist() == [1]
    assert row_runs(np.array([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 1), (7, 2)]
    assert row_runs(np.array([], dtype=np.int64)) == []
    assert "logits_pick_f32" in PICK_SOURCE and "%" not in PICK_SOURCE


def _executor(graph: Path, graphs: bool, sampling: bool) -> ort_cuda.OrtCudaExecutor:
    return ort_cuda.OrtCudaExecutor(graph, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                    max_context=TINY.max_position_embeddings,
                                    limits=StepLimits(64, 8, TINY.max_position_embeddings),
                                    cuda_graphs=graphs, device_sampling=sampling)


@pytest.mark.parametrize("graphs", [False, True])
def test_device_picks_equal_host_argmax_with_bans(fake_host_ort: object, tiny_fp16_graph: Path,
                                                  graphs: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    graph = tiny_fp16_graph
    monkeypatch.setattr(ort_cuda, "_graph_session",
                        lambda path, device, dims, capture=True: _RecordingSession(path, dims))
    ref, dut = _executor(graph, graphs, False), _executor(graph, graphs, True)
    assert dut.samples_on_device and not ref.samples_on_device
    try:
        prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
        want, _ = greedy_tokens(ref, prompts, block_size=BLOCK_SIZE, steps=4)
        got, seen = greedy_tokens(dut, prompts, block_size=BLOCK_SIZE, steps=4, host_logits=False)
        assert got == want and all(s.shape == (0, TINY.vocab_size) for s in seen)
        # one more step, mixed: a prefill chunk, a banned greedy row, a host row, a plain row
        tables, first = [], 0  # the blocks greedy_tokens gave each sequence
        for p in prompts:
            n = -(-(len(p) + 4 + 1) // BLOCK_SIZE)
            tables.append(list(range(first, first + n)))
            first += n
        steps = [_row(3, [10, 11, 12], 0, [40, 41], want=False)]
        for i, t in enumerate(want):
            p = prompts[i] + t[:-1]
            steps.append(_row(i, [t[-1]], len(p), tables[i], host=i == 1))
        wanted = ref.execute(StepPlan(9, [ScheduledSeq(s.seq_id, s.token_ids, s.start_pos,
                                                       s.block_table, s.want_logits)
                                          for s in steps])).logits
        top2 = np.argsort(-wanted[0])[:2].tolist()
        steps[1].banned = (top2[0], 10_000)  # the best id and one past the vocabulary
        result = dut.execute(StepPlan(9, steps))
        assert result.logits_rows is not None and result.logits_rows.tolist() == [1]
        np.testing.assert_array_equal(result.logits, wanted[1:2])
        assert result.argmax is not None
        assert result.argmax.tolist() == [top2[1], int(wanted[1].argmax()),
                                          int(wanted[2].argmax())]
    finally:
        ref.close()
        dut.close()
    assert fake_host_ort.allocations == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("graphs", [False, True])
def test_device_draws_equal_host_draws(fake_host_ort: object, tiny_fp16_graph: Path,
                                       graphs: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampled, penalised and log-prob rows (draw_workload.KINDS) drawn through the executor's
    draw kernel (here its fake: the host reference) equal those drawn on the host from the full
    logits, through plain, bucketed and split mixed steps: the staging, the row mapping and the
    log-prob plumbing."""
    monkeypatch.setattr(ort_cuda, "_graph_session",
                        lambda path, device, dims, capture=True: _RecordingSession(path, dims))
    ref, dut = _executor(tiny_fp16_graph, graphs, False), _executor(tiny_fp16_graph, graphs, True)
    try:
        rng = np.random.default_rng(3)
        prompts = [rng.integers(1, TINY.vocab_size, 2 + i).tolist() for i in range(7)]
        want = drawn_tokens(ref, prompts, block_size=BLOCK_SIZE, steps=5, on_device=False,
                            late=True)
        got = drawn_tokens(dut, prompts, block_size=BLOCK_SIZE, steps=5, on_device=True,
                           late=True)
        assert got == want
        assert fake_host_ort.draws >= 6 * 6  # type: ignore[attr-defined]
        assert any(lp is not None for lps in got[1] for lp in lps)
    finally:
        ref.close()
        dut.close()


def test_draw_arrays_pack_each_drawn_row() -> None:
    a = DeviceDraw(0.5, 3, 0.9, 0.1, 0.25, 1.5, 0.25, -0.5, [4, 9, 4], 2, (7,), logprob=True)
    b = DeviceDraw(0.0, 0, 1.0, 0.0, 0.0)
    rows = [_row(0, [1], 0, [0], host=False), _row(1, [1, 2], 0, [1], want=False),
            ScheduledSeq(2, [1], 0, [2], True, False, (), a),
            ScheduledSeq(3, [1], 0, [3], True, False, (), b)]
    packed = draw_arrays(rows)
    assert packed.rows.tolist() == [1, 2] and packed.logprobs
    assert packed.params.tolist() == [
        [2.0, 3, 0.9, 0.1, 0.25, 1.0, 1.5, 0.25, -0.5, 2, 3],
        [0.0, 0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0, 0]]
    assert packed.history.tolist() == [[4, 9, 4], [0, 0, 0]]
    assert packed.history.dtype == np.int32 and packed.bans.tolist() == [[7], [-1]]
    assert "logits_draw_f32" in DRAW_SOURCE and "#define MAX_HISTORY 2048" in DRAW_SOURCE
    none = draw_arrays(rows[:2])
    assert none.rows.shape == (0,) and none.history.shape == (0, 0) and not none.logprobs
