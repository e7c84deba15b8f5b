"""Decode steps padded to CUDA-graph buckets (engine/executors/cuda_graphs.py), on CPU over the
cuda-python fake device: onnxruntime CPU sessions with the same free-dimension overrides stand in
for the captured CUDA sessions. Padded decode steps give the uncaptured path's tokens, each
bucket's inputs and outputs stay at the same addresses, prefill steps stay uncaptured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.executors import cuda_graphs, ort_cuda
from engine.executors.cuda_graphs import decode_bucket, startup_buckets
from engine.executors.ort import session_options
from engine.limits import StepLimits
from engine.step_inputs import Bucket, pack_decode
from scheduler.plan import ScheduledSeq, StepPlan

from .tiny_model import BLOCK_SIZE, TINY, build_graph
from .workload import greedy_tokens

NUM_BLOCKS = 128


def test_decode_bucket_pads_batch_and_blocks() -> None:
    def seq(i: int, n: int, start: int) -> ScheduledSeq:
        return ScheduledSeq(i, [1] * n, start, list(range(10)), True)

    assert decode_bucket(StepPlan(0, [seq(0, 1, 9), seq(1, 1, 3), seq(2, 1, 0)]),
                         4, 64, 64) == Bucket(4, 16)  # 3 rows -> 4; 3 blocks -> MIN_BLOCKS
    assert decode_bucket(StepPlan(0, [seq(0, 1, 70)]), 4, 64, 64) == Bucket(1, 32)
    # a past of 64 tokens fills 16 blocks; the new token's block (the 17th) counts
    assert decode_bucket(StepPlan(0, [seq(0, 1, 64)]), 4, 64, 64) == Bucket(1, 32)
    assert decode_bucket(StepPlan(0, [seq(0, 1, 63)]), 4, 64, 64) == Bucket(1, 16)
    assert decode_bucket(StepPlan(0, [seq(0, 1, 0)]), 4, 64, 8) == Bucket(1, 8)  # context cap
    assert decode_bucket(StepPlan(0, [seq(0, 2, 0)]), 4, 64, 16) is None  # prefill
    assert decode_bucket(StepPlan(0, [seq(i, 1, 0) for i in range(5)]), 4, 6, 16) == Bucket(6, 16)
    assert startup_buckets(6, 64) == [Bucket(b, 16) for b in (1, 2, 4, 6)]
    assert startup_buckets(256, 8) == [Bucket(1 << i, 8) for i in range(9)]
    assert decode_bucket(StepPlan(0, [seq(i, 1, 0) for i in range(7)]), 4, 6, 16) is None
    no_logits = StepPlan(0, [ScheduledSeq(0, [1], 4, [0, 1], False)])
    assert decode_bucket(no_logits, 4, 64, 16) is None


def test_pack_decode_pad_rows_are_inert() -> None:
    """Each row's table holds its past's blocks and the new token's (a paged graph writes it
    there; row 2's token opens its second block); pad rows have slot -1."""
    seqs = [ScheduledSeq(0, [5], 6, [7, 3], True), ScheduledSeq(1, [9], 1, [2], True),
            ScheduledSeq(2, [4], 4, [6, 8], True)]
    feeds, slots = pack_decode(seqs, 4, Bucket(4, 2))
    assert feeds["input_ids"].tolist() == [5, 9, 4, 0]
    assert feeds["past_lens"].tolist() == [6, 1, 4, 0]
    assert feeds["block_tables"].tolist() == [[7, 3], [2, 0], [6, 8], [0, 0]]
    assert slots.tolist() == [3 * 4 + 2, 2 * 4 + 1, 8 * 4, -1]  # pad rows: no write
    assert feeds["pad_index"].shape == (4, 1) and feeds["logit_index"].tolist() == [0, 1, 2, 3]


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    pytest.importorskip("cuda.bindings", reason="the fake reuses cuda-python's enum types")
    from .fake_cuda import install_fake

    yield install_fake(monkeypatch, host_ort_cuda=True)


class _RecordingSession:
    """A CPU session with the bucket's dims fixed; records what each run has bound (the
    executor keeps a bucket's binding between runs)."""

    def __init__(self, path: Path, dims: dict[str, int]) -> None:
        import onnxruntime as ort

        opts = session_options(1)
        for name, value in dims.items():
            opts.add_free_dimension_override_by_name(name, value)
        self.dims = dims
        self._session = ort.InferenceSession(str(path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self.bound: list[tuple[tuple[str, int, tuple[int, ...]], ...]] = []
        self.bindings_made = 0

    def io_binding(self) -> object:
        self.bindings_made += 1
        return _RecordingBinding(self._session.io_binding())

    def run_with_iobinding(self, binding: _RecordingBinding) -> None:
        self.bound.append(tuple(sorted(binding.entries.values())))
        self._session.run_with_iobinding(binding.binding)


class _RecordingBinding:
    """An IOBinding that remembers each name's (name, address, shape)."""

    def __init__(self, binding: object) -> None:
        self.binding = binding
        self.entries: dict[str, tuple[str, int, tuple[int, ...]]] = {}

    def bind_input(self, name: str, dev: str, i: int, t: object, shape: list[int],
                   ptr: int) -> None:
        self.entries[name] = (name, ptr, tuple(shape))
        self.binding.bind_input(name, dev, i, t, shape, ptr)  # type: ignore[attr-defined]

    def bind_output(self, name: str, dev: str, i: int, t: object, shape: list[int],
                    ptr: int) -> None:
        self.entries[name] = (name, ptr, tuple(shape))
        self.binding.bind_output(name, dev, i, t, shape, ptr)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_graph(tmp_path_factory.mktemp("tiny") / "float16", "float16")


def test_padded_decode_gives_the_uncaptured_tokens(fake: object, graph: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches 1, 2, 3, 5, 6 (row buckets 1, 2, 4 and 8 capped to max_batch_size 6): the same
    greedy tokens as without graphs, logits within fp16 noise; every replay of a bucket binds
    the same addresses."""
    made: list[_RecordingSession] = []

    def factory(path: Path, device: int, dims: dict[str, int],
                capture: bool = True) -> _RecordingSession:
        made.append(_RecordingSession(path, dims | {"capture": int(capture)}))
        return made[-1]

    monkeypatch.setattr(ort_cuda, "_graph_session", factory)
    limits = StepLimits(64, 6, TINY.max_position_embeddings)

    def executor(graphs: bool) -> ort_cuda.OrtCudaExecutor:
        return ort_cuda.OrtCudaExecutor(graph, TINY, num_blocks=NUM_BLOCKS,
                                        block_size=BLOCK_SIZE,
                                        max_context=TINY.max_position_embeddings,
                                        limits=limits, cuda_graphs=graphs)

    rng = np.random.default_rng(1)
    for batch in (1, 2, 3, 5, 6):
        prompts = [rng.integers(1, TINY.vocab_size, 3 + 2 * i).tolist() for i in range(batch)]
        plain, captured = executor(False), executor(True)
        try:
            want, want_logits = greedy_tokens(plain, prompts, block_size=BLOCK_SIZE, steps=6)
            got, got_logits = greedy_tokens(captured, prompts, block_size=BLOCK_SIZE, steps=6)
            assert got == want, batch
            for a, b in zip(got_logits, want_logits, strict=True):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-2 * np.abs(b).max())
            assert captured.graph_replays == 6  # every decode step, not the prefill
        finally:
            plain.close()
            captured.close()
    buckets = [(s.dims["B"], s.dims["MB"]) for s in made]
    assert {b for b, _ in buckets} == {1, 2, 4, 6}, buckets  # 5 and 6 rows: capped at 6
    # without graphs the decode steps run the same fixed-shape sessions, uncaptured
    assert {s.dims["capture"] for s in made} == {0, 1}
    for session in made:
        assert len(set(session.bound)) == 1, session.dims  # same addresses and shapes
        assert session.bindings_made == 1, session.dims  # bound once, run many times
    assert fake.allocations == {}  # type: ignore[attr-defined]


def test_a_bucket_that_cannot_be_captured_runs_uncaptured(
        fake: object, graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, device: int, dims: dict[str, int], capture: bool = True) -> object:
        raise RuntimeError("This session cannot use the CUDA Graph feature")

    monkeypatch.setattr(ort_cuda, "_graph_session", refuse)
    ex = ort_cuda.OrtCudaExecutor(graph, TINY, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                                  max_context=TINY.max_position_embeddings,
                                  limits=StepLimits(64, 4, TINY.max_position_embeddings),
                                  cuda_graphs=True)
    try:
        tokens, _ = greedy_tokens(ex, [[1, 2, 3], [4, 5]], block_size=BLOCK_SIZE, steps=3)
        assert [len(t) for t in tokens] == [4, 4] and ex.graph_replays == 0
    finally:
        ex.close()
    assert cuda_graphs.MAX_SESSIONS >= 9  # 1..256 rows fit without evicting


def test_a_bucket_whose_capture_fails_at_run_time_runs_uncaptured(
        fake: object, graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime can refuse a kernel only when it captures (e.g. CUDA Concat with more than 32
    inputs): the step is rerun uncaptured and the bucket stays uncaptured; the engine goes on."""
    class _Refusing(_RecordingSession):
        def run_with_iobinding(self, binding: object) -> None:
            raise RuntimeError("CUDA Concat supports at most 32 inputs during CUDA Graph capture")

    made: list[_Refusing] = []

    def factory(path: Path, device: int, dims: dict[str, int], capture: bool = True
                ) -> _Refusing:
        made.append(_Refusing(path, dims | {"capture": int(capture)}))
        return made[-1]

    monkeypatch.setattr(ort_cuda, "_graph_session", factory)
    kwargs = dict(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                  max_context=TINY.max_position_embeddings,
                  limits=StepLimits(64, 4, TINY.max_position_embeddings))
    plain = ort_cuda.OrtCudaExecutor(graph, TINY, **kwargs)  # type: ignore[arg-type]
    ex = ort_cuda.OrtCudaExecutor(graph, TINY, cuda_graphs=True, **kwargs)  # type: ignore[arg-type]
    try:
        prompts = [[1, 2, 3], [4, 5]]
        want, _ = greedy_tokens(plain, prompts, block_size=BLOCK_SIZE, steps=5)
        got, _ = greedy_tokens(ex, prompts, block_size=BLOCK_SIZE, steps=5)
        assert got == want and ex.graph_replays == 0
        assert len({(s.dims["capture"], s.dims["B"], s.dims["MB"])
                    for s in made}) == len(made)  # never retried
        assert not any(s in ex._bindings for s in made)  # refused sessions are not kept
    finally:
        plain.close()
        ex.close()


def test_mixed_steps_split_into_captured_decodes_and_prefill(
        fake: object, graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step mixing decodes with prefill chunks runs its decodes through their bucket and the
    chunks alone; logits (and argmax) come back in plan order, equal to the unsplit step's."""
    monkeypatch.setattr(ort_cuda, "_graph_session",
                        lambda path, device, dims, capture=True: _RecordingSession(path, dims))
    kwargs = dict(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE,
                  max_context=TINY.max_position_embeddings,
                  limits=StepLimits(64, 8, TINY.max_position_embeddings))
    plain = ort_cuda.OrtCudaExecutor(graph, TINY, **kwargs)  # type: ignore[arg-type]
    ex = ort_cuda.OrtCudaExecutor(graph, TINY, cuda_graphs=True, **kwargs)  # type: ignore[arg-type]
    prefill = StepPlan(0, [ScheduledSeq(0, [1, 2, 3, 4, 5], 0, [0, 1], True),
                           ScheduledSeq(1, [6, 7, 8], 0, [2, 3], True)])
    mixed = StepPlan(1, [ScheduledSeq(2, [9, 10, 11, 12, 13, 14], 0, [4, 5], False),
                         ScheduledSeq(0, [20], 5, [0, 1], True),
                         ScheduledSeq(3, [15, 16], 0, [6], True),
                         ScheduledSeq(1, [21], 3, [2, 3], True)], [(2, 7)])
    try:
        for executor in (plain, ex):
            executor.execute(prefill)
        want, got = plain.execute(mixed), ex.execute(mixed)
        assert ex.graph_replays == 1  # the two decode rows, as one bucket
        assert got.logits.shape == want.logits.shape == (3, TINY.vocab_size)
        np.testing.assert_allclose(got.logits, want.logits, rtol=0,
                                   atol=2e-2 * np.abs(want.logits).max())
        assert got.argmax is not None and want.argmax is not None
        assert got.argmax.tolist() == want.argmax.tolist()
        pools = []
        for executor in (plain, ex):  # the block copy ran, and every new K/V landed
            pools.append(np.empty(executor.device_io.geometry.shape, np.float16))
            executor.device_io.pool.buffer.copy_to_host(pools[-1], executor.device_io.stream)
        np.testing.assert_allclose(pools[1].astype(np.float32), pools[0].astype(np.float32),
                                   rtol=0, atol=2e-2 * float(np.abs(pools[0]).max()))
        assert np.abs(pools[1][:, :, :, 7]).max() > 0
    finally:
        plain.close()
        ex.close()
