"""GGUF Q4 blocks kept for the MatMulNBits graph: they reconstruct gguf's dequantized weights bit
for bit (real SmolLM2 tensors and synthetic ones), and the 4-bit linear subgraph computes
x @ W^T of those exact weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import onnxruntime as ort
import pytest
from gguf.quants import dequantize, quantize
from onnx import helper

from engine.graph.quant import block_sums, pack_nbits, q4_linear
from engine.graph.writer import GraphWriter, save_model
from engine.loaders.gguf import config_from_gguf, open_gguf, unpermute_qk
from engine.loaders.gguf_q4 import (
    HEAD,
    Q4Blocks,
    blocks_from_gguf,
    concat_rows,
    decode_blocks,
    decode_q8_0,
    head_parts,
)
from engine.registry import DEFAULT_MODEL, resolve_model

Q4 = gguf.GGMLQuantizationType


def bits(a: np.ndarray) -> np.ndarray:
    """float32 bit patterns, so that equality means bit for bit (and -0.0 != 0.0)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def reader() -> Any:
    return open_gguf(resolve_model(DEFAULT_MODEL).path)


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.7.attn_k.weight",
                                  "blk.13.attn_v.weight", "blk.29.attn_output.weight",
                                  "blk.3.ffn_gate.weight", "blk.21.ffn_up.weight",
                                  "blk.11.ffn_down.weight"])
def test_smollm2_blocks_reconstruct_gguf_dequantize(reader: Any, name: str) -> None:
    """(q, d, m) decoded from the raw Q4_1 bytes give gguf.quants.dequantize's float32 exactly."""
    tensor = next(t for t in reader.tensors if t.name == name)
    assert tensor.tensor_type == Q4.Q4_1
    blocks = decode_blocks(tensor.data, "Q4_1")
    n, k = blocks.shape
    assert blocks.q.dtype == np.uint8 and blocks.q.max() <= 15
    assert blocks.scale.shape == blocks.minimum.shape == (n, k // 32)
    np.testing.assert_array_equal(bits(blocks.dequantize()),
                                  bits(dequantize(tensor.data, tensor.tensor_type)))


def test_smollm2_blocks_follow_the_loader(reader: Any) -> None:
    """blocks_from_gguf has every layer linear under its HF name, Q/K rows un-permuted like the
    float32 loader does (rows of the reconstruction == unpermute_qk of gguf's dequantized)."""
    path = resolve_model(DEFAULT_MODEL).path
    config = config_from_gguf(reader, path)
    blocks = blocks_from_gguf(reader, config, path)
    assert blocks is not None and len(blocks) == 7 * config.num_layers + 2  # + the head's parts
    for gguf_name, hf, heads in (("blk.5.attn_q.weight", "self_attn.q_proj", config.num_heads),
                                 ("blk.5.attn_k.weight", "self_attn.k_proj",
                                  config.num_kv_heads)):
        tensor = next(t for t in reader.tensors if t.name == gguf_name)
        expect = unpermute_qk(dequantize(tensor.data, tensor.tensor_type), heads)
        np.testing.assert_array_equal(bits(blocks[f"model.layers.5.{hf}"].dequantize()),
                                      bits(expect))


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0"])
def test_synthetic_blocks_round_trip(kind: str) -> None:
    """gguf's own quantizer output decodes to blocks that reconstruct gguf's dequantize, and
    row permutation, concatenation and power-of-two scaling commute with reconstruction."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 96)).astype(np.float32)
    raw = quantize(w, Q4[kind])
    blocks = decode_blocks(raw, kind)
    ref = dequantize(raw, Q4[kind])
    np.testing.assert_array_equal(bits(blocks.dequantize()), bits(ref))
    assert (blocks.minimum is None) == (kind == "Q4_0")
    np.testing.assert_array_equal(bits(blocks.unpermute_qk(3).dequantize()),
                                  bits(unpermute_qk(ref, 3)))
    np.testing.assert_array_equal(bits(blocks.scaled(0.125).dequantize()), bits(ref * 0.125))
    both = concat_rows([blocks, blocks.scaled(0.5)])
    np.testing.assert_array_equal(bits(both.dequantize()),
                                  bits(np.concatenate([ref, ref * np.float32(0.5)])))


def test_q8_0_as_two_exact_4bit_parts() -> None:
    """A Q8_0 tensor (gguf's quantizer, extreme codes included) = 16d * (hi - 8) + d * lo, bit
    for bit against gguf's dequantize."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 64)).astype(np.float32)
    w[0, :32] = np.linspace(-1, 1, 32)  # codes -127..127 in one block
    raw = quantize(w, gguf.GGMLQuantizationType.Q8_0)
    hi, lo = decode_q8_0(raw)
    assert (hi.zero_point, lo.zero_point) == (8, 0) and hi.minimum is None is lo.minimum
    assert hi.q.max() <= 15 and lo.q.max() <= 15
    np.testing.assert_array_equal(bits(hi.dequantize() + lo.dequantize()),
                                  bits(dequantize(raw, gguf.GGMLQuantizationType.Q8_0)))


def test_smollm2_head_parts_reconstruct_the_q8_0_embedding(reader: Any) -> None:
    """The tied head (token_embd, Q8_0) is kept as two parts whose sum is gguf's dequantize."""
    path = resolve_model(DEFAULT_MODEL).path
    config = config_from_gguf(reader, path)
    blocks = blocks_from_gguf(reader, config, path)
    assert blocks is not None
    parts = head_parts(blocks)
    assert len(parts) == 2 and sorted(k for k in blocks if k.startswith(HEAD)) == [
        f"{HEAD}.0", f"{HEAD}.1"]
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert tensor.tensor_type.name == "Q8_0"
    np.testing.assert_array_equal(bits(parts[0].dequantize() + parts[1].dequantize()),
                                  bits(dequantize(tensor.data, tensor.tensor_type)))


def test_pack_nbits_layout() -> None:
    """MatMulNBits packing: byte i of a block = element 2i | element 2i+1 << 4; zero points two
    blocks per byte, padded to whole bytes per row."""
    q = np.arange(32 * 3, dtype=np.uint8).reshape(1, 96) % 16
    blocks = Q4Blocks(np.ones((1, 3), np.float32), None, q, zero_point=8)
    packed = pack_nbits(blocks)
    assert packed.packed.shape == (1, 3, 16)
    assert packed.packed[0, 0, 0] == 0 | 1 << 4 and packed.packed[0, 2, 15] == 14 | 15 << 4
    assert packed.zero_points.tolist() == [0x88, 0x88]


def random_blocks(rng: np.random.Generator, n: int, k: int, kind: str) -> Q4Blocks:
    """Random codes with fp16-representable scales (and minimums for Q4_1)."""
    def fp16(shape: tuple[int, int]) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (n, k), dtype=np.uint8)
    minimum = fp16((n, k // 32)) if kind == "Q4_1" else None
    return Q4Blocks(fp16((n, k // 32)), minimum, q, 0 if kind == "Q4_1" else 8)


def run_linear(blocks: Q4Blocks, x: np.ndarray, out_dir: Path) -> np.ndarray:
    """x through a saved graph of one q4_linear (MatMulNBits + block-sum correction)."""
    n, k = blocks.shape
    with open(out_dir / "q4.onnx.data", "wb") as data:
        g = GraphWriter(data, "q4.onnx.data")
        sums = block_sums(g, "x", k) if blocks.minimum is not None else None
        g.op_to("Identity", [q4_linear(g, "w", "x", blocks, sums)], "y")
    save_model(g, out_dir / "q4.onnx", inputs=[helper.make_tensor_value_info("x", 1, ["T", k])],
               outputs=[helper.make_tensor_value_info("y", 1, ["T", n])], opset=18,
               graph_name="q4")
    sess = ort.InferenceSession(str(out_dir / "q4.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_0"])
@pytest.mark.parametrize("tokens", [1, 3])
def test_q4_linear_equals_dense_matmul(kind: str, tokens: int, tmp_path: Path) -> None:
    """MatMulNBits + blocksum(x) @ m^T == x @ W^T of the dequantized W within 1e-5 relative."""
    rng = np.random.default_rng(tokens)
    blocks = random_blocks(rng, 80, 160, kind)
    x = rng.standard_normal((tokens, 160)).astype(np.float32)
    ref = x.astype(np.float64) @ blocks.dequantize().T.astype(np.float64)
    got = run_linear(blocks, x, tmp_path)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
