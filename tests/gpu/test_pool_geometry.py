"""DeviceKVPool's kernel arguments, checked on CPU by emulating the kernels' index math
against the plain numpy reference (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import ModelConfig
from engine.device_kv_pool import PoolGeometry, geometry_for
from engine.kv_sizing import blocks_that_fit

from .kv_reference import (
    emulate_block_copy,
    emulate_scatter,
    random_slots,
    reference_block_copy,
    reference_scatter,
)

GEOM = PoolGeometry(num_layers=3, num_kv_heads=2, num_blocks=7, block_size=4, head_dim=8,
                    dtype="float32")


def test_graph_shape_is_a_reshape_of_the_pool() -> None:
    """The graph's kv_cache view [L*2*KVH*NB, BS, D] has exactly the pool's elements."""
    assert int(np.prod(GEOM.graph_shape)) == GEOM.numel
    assert GEOM.nbytes == GEOM.numel * 4


@pytest.mark.parametrize("num_tokens", [1, 5, 11])
def test_scatter_args_match_reference(num_tokens: int) -> None:
    """kv_scatter with DeviceKVPool's strides writes what the plain-layout reference writes."""
    rng = np.random.default_rng(num_tokens)
    pool = rng.standard_normal(GEOM.shape).astype(np.float32)
    new_kv = rng.standard_normal((3, 2, 2, num_tokens, 8)).astype(np.float32)
    slots = random_slots(rng, GEOM.num_blocks, GEOM.block_size, num_tokens)
    want = reference_scatter(pool, new_kv, slots, GEOM.block_size)
    got = emulate_scatter(pool.reshape(-1), new_kv.reshape(-1), slots,
                          GEOM.scatter_args(0, 0, 0, num_tokens))
    np.testing.assert_array_equal(got.reshape(GEOM.shape), want)


def test_block_copy_args_match_reference() -> None:
    """kv_block_copy with DeviceKVPool's strides copies every layer, K and V, every head."""
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(GEOM.shape).astype(np.float32)
    pairs = [(1, 5), (6, 0), (2, 3)]
    want = reference_block_copy(pool, pairs)
    got = emulate_block_copy(pool.reshape(-1), np.array(pairs, dtype=np.int64),
                             GEOM.block_copy_args(0, 0, len(pairs)))
    np.testing.assert_array_equal(got.reshape(GEOM.shape), want)


def test_geometry_validation_and_sizing() -> None:
    """Bad dtypes/sizes are refused; the block budget rounds down but is at least one."""
    with pytest.raises(ValueError, match="int8"):
        PoolGeometry(1, 1, 1, 1, 2, "int8")
    with pytest.raises(ValueError, match="num_blocks"):
        PoolGeometry(1, 1, 0, 1, 2, "float16")
    cfg = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      intermediate_size=64, vocab_size=50)
    one = geometry_for(cfg, 1, 16, "float16").nbytes
    assert one == 2 * 2 * 2 * 16 * 8 * 2
    assert blocks_that_fit(cfg, 16, "float16", 10 * one + 1) == 10
    assert blocks_that_fit(cfg, 16, "float16", 0) == 1
