"""Builds the one ONNX graph per model: a Llama decoder step over packed tokens and a paged KV pool.

Graph I/O (T packed tokens of this step, B sequences, Tq = most new tokens of any sequence,
MB = most *past* blocks of any sequence (>= 1), R rows that want logits, L layers, KVH KV heads,
D head dim, BS block size, NB pool blocks; every one of these dims is dynamic):

inputs
  input_ids    int64 [T]          this step's tokens, sequences back to back (plan order)
  positions    int64 [T]          absolute position of each token
  kv_cache     dtype [L*2*KVH*NB, BS, D]  the KV pool, read-only: the executor's array of layout
               [L, 2 (K, V), KVH, NB, BS, D] bound as is (a free reshape of the same memory)
  block_tables int64 [B, MB]      physical ids of each sequence's past blocks; pad with any id
  past_lens    int64 [B]          tokens already in the pool per sequence (= start_pos)
  pad_index    int64 [B, Tq]      packed row of query slot (b, t); pad slots repeat a valid row
  unpad_index  int64 [T]          padded slot b * Tq + t of each packed token
  logit_index  int64 [R]          packed rows whose logits are wanted (plan order)
outputs
  logits       float32 [R, vocab]
  argmax       int64 [R]          argmax of each row (first on ties, like numpy); half-precision
                                  (GPU) graphs only: the CPU ArgMax is one thread, slower than numpy
  new_kv       dtype [L, 2, KVH, T, D]  roped K and V of this step's tokens; the executor writes
               them into the pool at slot (block_table[pos // BS], pos % BS) after the run

The graph never mutates its inputs. Weights are written once to `model.onnx.data` (external
data); the Q/K/V projections are fused into one MatMul, 1/sqrt(D) is folded into
the query weights, and the RoPE inverse frequencies (Llama-3 scaling included) are constants.

Beside it, reading the weights both hold from model.onnx.data: `model_q4.onnx` (fp32, given the
GGUF Q4 blocks): layer linears (and a Q8_0/Q4 head) as com.microsoft MatMulNBits over those
blocks (engine/graph/quant.py), for the CPU executor's single-sequence decode steps (T = 1, its
own I/O: the past as per-layer buffers it reads and appends to, engine/graph/single_token.py;
head dims that are multiples of 16); `cpu_precision` "exact" | "fast": fp32 or int8
activations. `model_decode.onnx` (the ONNX Runtime CUDA builds): same I/O, the layers of
engine/graph/gqa.py (GroupQueryAttention, RoPE inside, fused norms): what the CUDA executor's
single-sequence steps run, and its decode buckets where `model_paged.onnx` cannot.
`model_paged.onnx` (with it): the same layers with com.microsoft PagedAttention reading and
writing the pool in place, its own I/O (engine/graph/paged.py): the CUDA executor's decode
buckets; `model_paged_prefill.onnx`: the same over any step (host-made pair arrays), its
other steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from engine.config import ModelConfig, ModelError
from engine.dtypes import CPU_PRECISIONS, EXACT, NUMPY_DTYPES
from engine.graph.attention import ATTENTION_IMPLS, DECOMPOSED, ONNX_ATTENTION
from engine.graph.general import STEP_INPUTS, GeneralGraph, general_decoder
from engine.graph.gqa import DECODE_DATA_FILE, DECODE_MODEL_FILE, decode_decoder, gqa_step
from engine.graph.layers import onnx_type, rms_norm
from engine.graph.linears import HeadFn, LinearsFactory, dense_linears, q4_head, q4_linears
from engine.graph.paged import (
    PAGED_DATA_FILE,
    PAGED_MODEL_FILE,
    PREFILL_DATA_FILE,
    PREFILL_MODEL_FILE,
    paged_decoder,
    paged_io,
    paged_step,
    prefill_step,
    supports_paged,
)
from engine.graph.single_token import (
    LayerRefs,
    single_token_decoder,
    single_token_io,
    supports_gqa_rope,
)
from engine.graph.writer import GraphWriter, save_model
from engine.loaders.gguf_q4 import Q4Blocks
from engine.loaders.shapes import check_weights

BUILDER_VERSION = "13"  # bump whenever the graph, its I/O or its weights layout changes
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
Q4_MODEL_FILE = "model_q4.onnx"
Q4_DATA_FILE = "model_q4.onnx.data"
INPUT_NAMES = ("input_ids", "positions", "kv_cache", "block_tables", "past_lens", "pad_index",
               "unpad_index", "logit_index")
OUTPUT_NAMES = ("logits", "new_kv", "argmax")
KV_LAYOUT = "L,2,KVH,NB,BS,D"


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """What the manifest records about a built graph and what executors need to bind it."""

    model_file: str  # relative to the build directory
    dtype: str  # "float32" | "float16" | "bfloat16": weights, activations, KV pool
    opset: int
    attention: str  # one of ATTENTION_IMPLS
    rotary_op: bool  # RoPE as the opset-23 RotaryEmbedding op (else Mul/Slice decomposition)
    block_size: int  # tokens per KV block the graph was built for
    kv_layout: str = KV_LAYOUT
    input_names: tuple[str, ...] = INPUT_NAMES
    output_names: tuple[str, ...] = OUTPUT_NAMES
    builder_version: str = BUILDER_VERSION
    q4_model_file: str | None = None  # MatMulNBits linears, single-sequence decode steps
    cpu_precision: str = EXACT  # the q4 graph's activations: "exact" float32, "fast" int8
    decode_model_file: str | None = None  # same I/O, decode steps only (engine/graph/gqa.py)
    paged_model_file: str | None = None  # decode buckets, KV read and written in place
    prefill_model_file: str | None = None  # other steps, KV read and written in place


@dataclass(frozen=True, slots=True)
class _Options:
    """How both graphs of one build are written."""

    dtype: np.dtype  # weights, activations, KV pool
    block_size: int
    attention: str  # one of ATTENTION_IMPLS
    rotary_op: bool
    opset: int
    argmax: bool  # emit the `argmax` output
    single_token: bool = False  # T = 1 only: engine/graph/single_token.py's layers (CPU ops)
    decode: bool = False  # decode steps only: GroupQueryAttention (engine/graph/gqa.py)
    paged: str = ""  # "decode" | "prefill": PagedAttention on the pool (engine/graph/paged.py)


def default_attention(dtype: str) -> str:
    """fp32 -> the opset-18 decomposition (CPU, and TensorRT's only fp32 route); fp16 / bf16 ->
    opset-23 Attention (TensorRT IAttention)."""
    return DECOMPOSED if dtype == "float32" else ONNX_ATTENTION


def build_model_graph(config: ModelConfig, weights: Mapping[str, np.ndarray], out_dir: Path, *,
                      dtype: str = "float32", block_size: int = 16,
                      attention_impl: str | None = None, rotary_op: bool | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      blocks: Mapping[str, Q4Blocks] | None = None,
                      cpu_precision: str = EXACT, decode_graph: bool | None = None) -> GraphSpec:
    """Writes out_dir/model.onnx + model.onnx.data and returns their GraphSpec; with `blocks`
    (engine/loaders/gguf_q4.py) and fp32, model_q4.onnx too; with `decode_graph` (default: fp16 /
    bf16 with `rotary_op`, the ONNX Runtime CUDA graphs) model_decode.onnx. Defaults: fp32 ->
    decomposed attention + RotaryEmbedding op (onnxruntime CPU, opset 23); fp16 / bf16 -> opset-23
    Attention + decomposed RoPE (RMSNorm, RoPE tables, logits in float32, bf16 weights rounded
    to nearest even). attention_impl="decomposed", rotary_op=False: a pure opset-18 graph."""
    if dtype not in NUMPY_DTYPES:
        raise ModelError(f"unsupported graph dtype {dtype!r}; one of {sorted(NUMPY_DTYPES)}")
    impl = attention_impl or default_attention(dtype)
    if impl not in ATTENTION_IMPLS:
        raise ModelError(f"unknown attention {impl!r}; one of {ATTENTION_IMPLS}")
    if cpu_precision not in CPU_PRECISIONS:
        raise ModelError(f"unknown cpu precision {cpu_precision!r}; one of {CPU_PRECISIONS}")
    rotary = impl == DECOMPOSED if rotary_op is None else rotary_op
    opts = _Options(dtype=NUMPY_DTYPES[dtype], block_size=block_size, attention=impl,
                    rotary_op=rotary, opset=23 if rotary or impl == ONNX_ATTENTION else 18,
                    argmax=dtype != "float32")
    check_weights(weights, config, "the graph builder's weights")
    out_dir.mkdir(parents=True, exist_ok=True)
    graphs: list[tuple[str, str, LinearsFactory, HeadFn | None, _Options]] = [
        (MODEL_FILE, DATA_FILE, dense_linears(config, weights, opts.dtype), None, opts)]
    if blocks is not None and dtype == "float32" and rotary and supports_gqa_rope(config):
        graphs.append((Q4_MODEL_FILE, Q4_DATA_FILE,
                       q4_linears(config, blocks, cpu_precision, one_row=True),
                       q4_head(blocks, cpu_precision), replace(opts, single_token=True)))
    if supports_gqa_rope(config) and (decode_graph or (decode_graph is None and rotary
                                                    and dtype != "float32")):
        graphs.append((DECODE_MODEL_FILE, DECODE_DATA_FILE, graphs[0][2], None,
                       replace(opts, decode=True)))
        if supports_paged(dtype, block_size):
            graphs += [(PAGED_MODEL_FILE, PAGED_DATA_FILE, graphs[0][2], None,
                        replace(opts, paged="decode")),
                       (PREFILL_MODEL_FILE, PREFILL_DATA_FILE, graphs[0][2], None,
                        replace(opts, paged="prefill"))]
    tick = _ticker(progress, len(graphs) * (config.num_layers + 1))
    shared: dict[str, TensorProto] = {}  # external tensors written so far, by name
    for model_file, data_file, linears, head, graph_opts in graphs:
        shared = _write_graph(out_dir, model_file, data_file, config, weights, (linears, head),
                              graph_opts, tick, shared)
    files = {graph[0] for graph in graphs}
    return GraphSpec(model_file=MODEL_FILE, dtype=dtype, opset=opts.opset, attention=impl,
                     rotary_op=rotary, block_size=block_size, cpu_precision=cpu_precision,
                     output_names=OUTPUT_NAMES if opts.argmax else OUTPUT_NAMES[:2],
                     q4_model_file=Q4_MODEL_FILE if Q4_MODEL_FILE in files else None,
                     decode_model_file=DECODE_MODEL_FILE if DECODE_MODEL_FILE in files else None,
                     paged_model_file=PAGED_MODEL_FILE if PAGED_MODEL_FILE in files else None,
                     prefill_model_file=PREFILL_MODEL_FILE if PREFILL_MODEL_FILE in files
                     else None)


def _ticker(progress: Callable[[int, int], None] | None, total: int) -> Callable[[], None]:
    done = itertools.count(1)
    return lambda: None if progress is None else progress(next(done), total)


def _write_graph(out_dir: Path, model_file: str, data_file: str, config: ModelConfig,
                 weights: Mapping[str, np.ndarray],
                 linears: tuple[LinearsFactory, HeadFn | None], opts: _Options,
                 tick: Callable[[], None], shared: dict[str, TensorProto]
                 ) -> dict[str, TensorProto]:
    """Writes one graph; returns its external tensors plus `shared` (for the next graph)."""
    with open(out_dir / data_file, "wb") as data:
        g = GraphWriter(data, data_file, shared)
        elem = onnx_type(opts.dtype)
        inputs, outputs = (single_token_io(config, elem) if opts.single_token
                           else paged_io(config, elem, opts.argmax, opts.paged == "prefill")
                           if opts.paged
                           else _io(config, elem, opts.argmax))
        _body(g, config, weights, linears, opts, tick)
    save_model(g, out_dir / model_file, inputs=inputs, outputs=outputs, opset=opts.opset,
               graph_name=f"trtserve_{config.architecture}")
    return {**shared, **g.external}


def _io(config: ModelConfig, elem: int, argmax: bool) -> tuple[list, list]:
    i64 = TensorProto.INT64
    vi = helper.make_tensor_value_info
    inputs = [vi("input_ids", i64, ["T"]), vi("positions", i64, ["T"]),
              vi("kv_cache", elem, ["pool_rows", "BS", config.head_dim]),
              vi("block_tables", i64, ["B", "MB"]), vi("past_lens", i64, ["B"]),
              vi("pad_index", i64, ["B", "Tq"]), vi("unpad_index", i64, ["T"]),
              vi("logit_index", i64, ["R"])]
    outputs = [vi("logits", TensorProto.FLOAT, ["R", config.vocab_size]),
               vi("new_kv", elem, [config.num_layers, 2, config.num_kv_heads, "T",
                                   config.head_dim])]
    if argmax:
        outputs.append(vi("argmax", i64, ["R"]))
    return inputs, outputs


def _body(g: GraphWriter, config: ModelConfig, weights: Mapping[str, np.ndarray],
          linears: tuple[LinearsFactory, HeadFn | None], opts: _Options,
          tick: Callable[[], None]) -> None:
    """The decoder; `linears` = (each layer's linears, the lm_head (None: dense))."""
    layer_linears, head = linears
    dtype = opts.dtype
    embed = g.weight("model.embed_tokens.weight", weights["model.embed_tokens.weight"]
                     .astype(dtype))
    x = g.op("Gather", [embed, "input_ids"], axis=0)  # [T, hidden]
    norm_w = g.weight("model.norm.weight", weights["model.norm.weight"].astype(dtype))
    layers = _layers(g, config, weights, layer_linears, dtype, tick)
    if opts.single_token:  # its own I/O: the K/V go into the present buffers
        rows = single_token_decoder(g, config, x, layers, norm_w)  # [1, hidden]
    elif opts.decode:  # its own layers; writes new_kv
        step = gqa_step(g, config, STEP_INPUTS, opts.block_size, dtype)
        rows = decode_decoder(g, config, step, x, layers, norm_w)  # [T, hidden]
    elif opts.paged:  # its own layers and I/O; the K/V go into the pool in place
        step = (prefill_step(g, config, dtype) if opts.paged == "prefill"
                else paged_step(g, config, opts.block_size, dtype))
        rows = paged_decoder(g, config, step, x, layers, norm_w)  # [T, hidden]
    else:
        rows = general_decoder(g, config, GeneralGraph(dtype, opts.block_size, opts.attention,
                                                       opts.rotary_op), x, layers)
    rows = g.op("Gather", [rows, "logit_index"], axis=0)  # [R, hidden]
    if not (opts.single_token or opts.decode or opts.paged):
        rows = rms_norm(g, rows, norm_w, config.rms_norm_eps, dtype)
    _lm_head(g, config, weights, dtype, rows, opts.argmax, head)
    tick()


def _layers(g: GraphWriter, config: ModelConfig, weights: Mapping[str, np.ndarray],
            layer_linears: LinearsFactory, dtype: np.dtype, tick: Callable[[], None]
            ) -> Iterator[LayerRefs]:
    """(index, (input, post-attention norm weights), linears) of each layer; ticks after each."""
    for index in range(config.num_layers):
        p = f"model.layers.{index}."
        a, b = f"{p}input_layernorm.weight", f"{p}post_attention_layernorm.weight"
        norms = (g.weight(a, weights[a].astype(dtype)), g.weight(b, weights[b].astype(dtype)))
        yield index, norms, layer_linears(g, index)
        tick()


def _lm_head(g: GraphWriter, config: ModelConfig, weights: Mapping[str, np.ndarray],
             dtype: np.dtype, rows: str, argmax: bool, head: HeadFn | None) -> None:
    """The lm_head over the R wanted rows only (final-normed, [R, hidden]).

    The head is stored transposed ([hidden, vocab], a second copy when tied): onnxruntime
    prepacks a constant MatMul operand once, whereas Gemm(transB) over the shared [vocab, hidden]
    embedding repacked 113 MB on every SmolLM2 step (15 ms of a 35 ms batch-16 decode step).
    """
    if head is None:
        key = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
        w = g.weight("lm_head.weight_t", weights[key].T.astype(dtype))  # [hidden, vocab]
        logits = g.op("MatMul", [rows, w])  # [R, vocab]
    else:
        logits = head(g, rows)
    if dtype == np.float32:
        g.op_to("Identity", [logits], "logits")
    else:
        g.op_to("Cast", [logits], "logits", to=TensorProto.FLOAT)
    if argmax:
        g.op_to("ArgMax", ["logits"], "argmax", axis=-1, keepdims=0)  # on the float32 logits
