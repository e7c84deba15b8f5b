"""ONNX Runtime's com.microsoft PagedAttention over our KV pool layout, one layer, on the GPU:
does it read and write the pool in place, replay as a CUDA graph, and beat the decode graph's
attention (past gathered from the pool + GroupQueryAttention + the new K/V read back)?

The pool is [L, 2, KVH, NB, BS, D]: one layer's K (or V) is [KVH, NB, BS, D], which the op sees
as a cache of KVH * NB blocks with ONE kv head ([KVH*NB, BS, 1, D]). Each (row, kv head) pair is
then its own sequence with `group` query heads: block table row + head * NB, slot + head * NB *
BS (-1 for pad rows: no write). With Q/K/V columns grouped by kv head ([Q_h | K_h | V_h] per
head h) the pairs' packed QKV is a pure reshape of the projection's output.

    python3 bench/gpu_paged_attention.py [--batches 1,64,256] [--context 160] [--iters 50]

Prints, per batch: max error against a numpy reference (uncaptured, then replayed with moved
inputs), and the captured median ms of PagedAttention against the gather + GroupQueryAttention
layer. GPU machine only (onnxruntime-gpu).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from onnx import TensorProto, helper

KVH, GROUP, D, BS, NB = 3, 3, 64, 16, 4096
H = KVH * GROUP
MAXPOS = 8192
F16 = TensorProto.FLOAT16
I32, I64 = TensorProto.INT32, TensorProto.INT64


def rope_tables() -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / (100000.0 ** (np.arange(0, D, 2) / D))
    ang = np.arange(MAXPOS)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float16), np.sin(ang).astype(np.float16)


def _model(nodes: list, inputs: list, outputs: list, inits: list) -> bytes:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def paged_model() -> bytes:
    cos, sin = rope_tables()
    vi = helper.make_tensor_value_info
    inputs = [vi("qkv", F16, ["N", (GROUP + 2) * D]), vi("key_cache", F16, [KVH * NB, BS, 1, D]),
              vi("value_cache", F16, [KVH * NB, BS, 1, D]), vi("cu", I32, ["N1"]),
              vi("past", I32, ["N"]), vi("table", I32, ["N", "MB"]), vi("slots", I32, ["N"])]
    inits = [helper.make_tensor("cos", F16, list(cos.shape), cos.tobytes(), raw=True),
             helper.make_tensor("sin", F16, list(sin.shape), sin.tobytes(), raw=True),
             helper.make_tensor("meta", I32, [2], [1, 0])]
    node = helper.make_node(
        "PagedAttention", ["qkv", "", "", "key_cache", "value_cache", "cu", "past", "table",
                           "cos", "sin", "slots", "", "", "", "", "", "meta"], ["out"],
        domain="com.microsoft", num_heads=GROUP, kv_num_heads=1, scale=1.0, do_rotary=1,
        rotary_interleaved=0)
    return _model([node], inputs, [vi("out", F16, ["N", GROUP * D])], inits)


def gqa_model() -> bytes:
    """The decode graph's attention of one layer: past gathered from the pool rows, GQA, the new
    K/V read back out of present."""
    cos, sin = rope_tables()
    vi = helper.make_tensor_value_info
    inputs = [vi("qkv", F16, ["B", 1, (H + 2 * KVH) * D]), vi("pool", F16, [2 * KVH * NB, BS, D]),
              vi("kidx", I64, ["B", KVH, "MB"]), vi("vidx", I64, ["B", KVH, "MB"]),
              vi("seqlens", I32, ["B"]), vi("total", I32, []), vi("pshape", I64, [4]),
              vi("newidx", I64, ["B", KVH, 1, D])]
    inits = [helper.make_tensor("cos", F16, list(cos.shape), cos.tobytes(), raw=True),
             helper.make_tensor("sin", F16, list(sin.shape), sin.tobytes(), raw=True)]
    nodes = []
    for kv, idx in (("k", "kidx"), ("v", "vidx")):
        nodes += [helper.make_node("Gather", ["pool", idx], [f"g{kv}"], axis=0),
                  helper.make_node("Reshape", [f"g{kv}", "pshape"], [f"past_{kv}"])]
    nodes.append(helper.make_node(
        "GroupQueryAttention", ["qkv", "", "", "past_k", "past_v", "seqlens", "total", "cos",
                                "sin"], ["out", "pk", "pv"], domain="com.microsoft",
        num_heads=H, kv_num_heads=KVH, scale=1.0, do_rotary=1, rotary_interleaved=0))
    nodes += [helper.make_node("GatherElements", [p, "newidx"], [f"n{p}"], axis=2)
              for p in ("pk", "pv")]
    outputs = [vi("out", F16, ["B", 1, H * D]), vi("npk", F16, ["B", KVH, 1, D]),
               vi("npv", F16, ["B", KVH, 1, D])]
    return _model(nodes, inputs, outputs, inits)


def rotate(x: np.ndarray, pos: int, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    c, s = cos[pos].astype(np.float32), sin[pos].astype(np.float32)
    a, b = x[..., :D // 2], x[..., D // 2:]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)


def reference(qkv: np.ndarray, kc: np.ndarray, vc: np.ndarray, past: np.ndarray,
              table: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pseudo-sequence attention in float32; returns (out, new key cache, new value cache)."""
    cos, sin = rope_tables()
    kc, vc = kc.astype(np.float32).copy(), vc.astype(np.float32).copy()
    out = np.zeros((qkv.shape[0], GROUP * D), np.float32)
    x = qkv.astype(np.float32)
    for n in range(qkv.shape[0]):
        pos = int(past[n])
        q = rotate(x[n, :GROUP * D].reshape(GROUP, D), pos, cos, sin)
        k = rotate(x[n, GROUP * D:(GROUP + 1) * D], pos, cos, sin)
        v = x[n, (GROUP + 1) * D:]
        if slots[n] >= 0:
            kc[slots[n] // BS, slots[n] % BS, 0] = k
            vc[slots[n] // BS, slots[n] % BS, 0] = v
        rows = [(table[n, t // BS], t % BS) for t in range(pos + 1)]
        keys = np.stack([kc[b, o, 0] for b, o in rows])
        vals = np.stack([vc[b, o, 0] for b, o in rows])
        w = q @ keys.T
        w = np.exp(w - w.max(-1, keepdims=True))
        out[n] = ((w / w.sum(-1, keepdims=True)) @ vals).reshape(-1)
    return out, kc, vc


def pseudo_inputs(rng: np.random.Generator, batch: int, rows: int, context: int, mb: int
                  ) -> dict[str, np.ndarray]:
    """`rows` real rows (then pads) of `batch`, each with its own blocks; as (row, head) pairs."""
    past = np.zeros(batch, np.int32)
    past[:rows] = rng.integers(context // 2, context, rows)
    blocks = rng.permutation(NB)[:batch * mb].reshape(batch, mb).astype(np.int32)
    blocks[rows:] = 0
    slot = np.where(np.arange(batch) < rows,
                    blocks[np.arange(batch), past // BS] * BS + past % BS, -1)
    heads = np.arange(KVH, dtype=np.int32)
    table = (blocks[:, None, :] + heads[None, :, None] * NB).reshape(batch * KVH, mb)
    slots = np.where(slot[:, None] >= 0, slot[:, None] + heads[None, :] * NB * BS, -1)
    n = batch * KVH
    return {"qkv": (rng.standard_normal((n, (GROUP + 2) * D)) * 0.5).astype(np.float16),
            "cu": np.arange(n + 1, dtype=np.int32), "past": np.repeat(past, KVH),
            "table": table, "slots": slots.reshape(-1).astype(np.int32)}


def session(model: bytes, dims: dict[str, int], capture: bool) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    for name, value in dims.items():
        opts.add_free_dimension_override_by_name(name, value)
    return ort.InferenceSession(model, sess_options=opts, providers=[
        ("CUDAExecutionProvider", {"enable_cuda_graph": "1" if capture else "0"})])


def bound(sess: object, arrays: dict[str, np.ndarray], outs: dict[str, tuple]) -> tuple:
    import onnxruntime as ort

    binding = sess.io_binding()
    values = {k: ort.OrtValue.ortvalue_from_numpy(v, "cuda", 0) for k, v in arrays.items()}
    for name, shape_dtype in outs.items():
        values[name] = ort.OrtValue.ortvalue_from_shape_and_type(*shape_dtype, "cuda", 0)
    for k in arrays:
        binding.bind_ortvalue_input(k, values[k])
    for k in outs:
        binding.bind_ortvalue_output(k, values[k])
    return binding, values


def check(batch: int, context: int, capture: bool, rng: np.random.Generator) -> float:
    """Max error of the real rows' outputs and of both caches against `reference`: the first
    run, and (captured) a replay after the inputs moved in place."""
    mb, real = -(-(context + 1) // BS), max(1, batch - 3)
    dims = {"N": batch * KVH, "N1": batch * KVH + 1, "MB": mb}
    sess = session(paged_model(), dims, capture)
    caches = {k: (rng.standard_normal((KVH * NB, BS, 1, D)) * 0.5).astype(np.float16)
              for k in ("key_cache", "value_cache")}
    feeds = pseudo_inputs(rng, batch, real, context, mb)
    binding, values = bound(sess, {**feeds, **caches},
                            {"out": ([batch * KVH, GROUP * D], np.float16)})
    runs, worst = (4 if capture else 1), 0.0
    for step in range(runs):
        if step == runs - 1 and capture:  # a replay with moved lengths and new tokens
            feeds = pseudo_inputs(rng, batch, real, context, mb)
            for k, v in feeds.items():
                values[k].update_inplace(v)
        kc, vc = values["key_cache"].numpy(), values["value_cache"].numpy()
        sess.run_with_iobinding(binding)
        if step in (0, runs - 1):
            want, wk, wv = reference(feeds["qkv"], kc, vc, feeds["past"], feeds["table"],
                                     feeds["slots"])
            got = values["out"].numpy().astype(np.float32)
            worst = max(worst, float(np.abs(got - want)[:real * KVH].max()),
                        float(np.abs(values["key_cache"].numpy() - wk).max()),
                        float(np.abs(values["value_cache"].numpy() - wv).max()))
    return worst


def timed(sess: object, binding: object, iters: int) -> float:
    for _ in range(3):
        sess.run_with_iobinding(binding)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run_with_iobinding(binding)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_both(batch: int, context: int, iters: int, rng: np.random.Generator) -> tuple:
    mb = -(-(context + 1) // BS)
    feeds = pseudo_inputs(rng, batch, batch, context, mb)
    kc = np.zeros((KVH * NB, BS, 1, D), np.float16)
    sess = session(paged_model(), {"N": batch * KVH, "N1": batch * KVH + 1, "MB": mb}, True)
    binding, _ = bound(sess, {**feeds, "key_cache": kc, "value_cache": kc.copy()},
                       {"out": ([batch * KVH, GROUP * D], np.float16)})
    paged = timed(sess, binding, iters)
    past = feeds["past"][::KVH].astype(np.int64)
    blocks = (feeds["table"][::KVH]).astype(np.int64)
    heads = np.arange(KVH)[None, :, None]
    g = {"qkv": rng.standard_normal((batch, 1, (H + 2 * KVH) * D)).astype(np.float16),
         "pool": np.zeros((2 * KVH * NB, BS, D), np.float16),
         "kidx": blocks[:, None, :] + heads * NB, "vidx": blocks[:, None, :] + (heads + KVH) * NB,
         "seqlens": past.astype(np.int32), "total": np.array(mb * BS + 1, np.int32),
         "pshape": np.array([batch, KVH, mb * BS, D], np.int64),
         "newidx": np.broadcast_to(past[:, None, None, None], (batch, KVH, 1, D)).copy()}
    sess = session(gqa_model(), {"B": batch, "MB": mb}, True)
    binding, _ = bound(sess, g, {"out": ([batch, 1, H * D], np.float16),
                                 "npk": ([batch, KVH, 1, D], np.float16),
                                 "npv": ([batch, KVH, 1, D], np.float16)})
    return paged, timed(sess, binding, iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--context", type=int, default=160)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = ["| batch | max err uncaptured | max err replayed | PagedAttention ms "
             "| gather+GQA ms |", "|---:|---:|---:|---:|---:|"]
    for batch in (int(b) for b in args.batches.split(",")):
        e0 = check(batch, args.context, False, rng)
        e1 = check(batch, args.context, True, rng)
        paged, gqa = time_both(batch, args.context, args.iters, rng)
        lines.append(f"| {batch} | {e0:.4f} | {e1:.4f} | {paged:.3f} | {gqa:.3f} |")
        sys.stdout.write(lines[-1] + "\n")
        sys.stdout.flush()
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
