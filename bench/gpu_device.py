"""Device-layer micro-benchmark: H2D / D2H (pinned and pageable) / device-to-device bandwidth, and
the KV scatter + block-copy kernels at the embedded model's geometry (SmolLM2-135M: 30 layers,
3 KV heads x 64, block 16, fp16). Times come from CUDA events; a short table goes to stdout and,
with --json, the raw numbers to a file.

    python bench/gpu_device.py [--json OUT.json] [--mib 256] [--iters 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from engine.device.cuda import CudaContext, CudaError, Event, Stream  # noqa: E402
from engine.device.kernels import KVKernels  # noqa: E402
from engine.device.memory import DeviceBuffer, PinnedBuffer, copy_device_to_device  # noqa: E402
from engine.device_kv_pool import DeviceKVPool, PoolGeometry  # noqa: E402

logger = logging.getLogger("bench.gpu_device")

SMOLLM2 = dict(num_layers=30, num_kv_heads=3, head_dim=64, block_size=16)


def time_ms(fn: Callable[[], None], stream: Stream, iters: int) -> float:
    """Median milliseconds of `fn` enqueued on `stream` (one warm-up run)."""
    fn()
    times = []
    with Event() as start, Event() as end:
        for _ in range(iters):
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(end.elapsed_ms_since(start))
    return float(np.median(times))


def bandwidth_rows(stream: Stream, nbytes: int, iters: int) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    pageable = np.ones(nbytes, dtype=np.uint8)
    with DeviceBuffer(nbytes) as a, DeviceBuffer(nbytes) as b, PinnedBuffer(nbytes) as pinned:
        host = pinned.array((nbytes,), np.uint8)
        cases: dict[str, Callable[[], None]] = {
            "H2D pinned": lambda: a.copy_from_host(host, stream),
            "D2H pinned": lambda: a.copy_to_host(host, stream),
            "H2D pageable": lambda: a.copy_from_host(pageable, stream),
            "D2H pageable": lambda: a.copy_to_host(pageable, stream),
            # a device copy reads and writes every byte: count both
            "D2D copy": lambda: copy_device_to_device(b.ptr, a.ptr, nbytes, stream),
        }
        for name, fn in cases.items():
            ms = time_ms(fn, stream, iters)
            moved = 2 * nbytes if name == "D2D copy" else nbytes
            rows.append({"op": name, "MiB": nbytes / 2**20, "ms": ms,
                         "GB/s": moved / ms / 1e6})
    return rows


def kernel_rows(ctx: CudaContext, stream: Stream, iters: int, num_blocks: int
                ) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    geom = PoolGeometry(num_blocks=num_blocks, dtype="float16", **SMOLLM2)
    rng = np.random.default_rng(0)
    with KVKernels(ctx) as kernels, DeviceKVPool(geom, kernels, stream) as pool:
        for tokens in (1, 16, 64, 256, 2048):
            slots = rng.permutation(num_blocks * geom.block_size)[:tokens].astype(np.int64)
            kv_bytes = geom.num_planes * geom.num_kv_heads * tokens * geom.head_dim * 2
            with DeviceBuffer(kv_bytes) as src, DeviceBuffer(slots.nbytes) as dslots:
                dslots.copy_from_host(slots, stream)
                ms = time_ms(partial(pool.scatter, src.ptr, dslots.ptr, tokens, stream),
                             stream, iters)
            rows.append({"op": f"KV scatter T={tokens}", "MiB": kv_bytes / 2**20, "ms": ms,
                         "GB/s": 2 * kv_bytes / ms / 1e6})
        for count in (1, 32):
            pairs = rng.permutation(num_blocks)[:2 * count].reshape(count, 2).astype(np.int64)
            moved = count * geom.num_planes * geom.num_kv_heads * geom.block_elems * 2
            with DeviceBuffer(pairs.nbytes) as dpairs:
                dpairs.copy_from_host(pairs, stream)
                ms = time_ms(partial(pool.copy_blocks, dpairs.ptr, count, stream), stream,
                             iters)
            rows.append({"op": f"block copy x{count}", "MiB": moved / 2**20, "ms": ms,
                         "GB/s": 2 * moved / ms / 1e6})
    return rows


def table(rows: list[dict[str, float | str]]) -> str:
    lines = [f"{'operation':<22}{'MiB':>10}{'ms':>10}{'GB/s':>10}"]
    for r in rows:
        lines.append(f"{r['op']:<22}{r['MiB']:>10.3f}{r['ms']:>10.4f}{r['GB/s']:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="copy size for bandwidth")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=4096, help="KV pool blocks")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        return run(args)
    except CudaError as exc:
        logger.error("gpu_device benchmark: %s", exc)
        return 2


def run(args: argparse.Namespace) -> int:
    with CudaContext(0) as ctx, Stream() as stream:
        major, minor = ctx.compute_capability
        rows = bandwidth_rows(stream, args.mib << 20, args.iters)
        rows += kernel_rows(ctx, stream, args.iters, args.blocks)
        logger.info("device: %s (sm_%d%d)\n%s", ctx.name, major, minor, table(rows))
        if args.json is not None:
            args.json.write_text(json.dumps({"device": ctx.name, "cc": [major, minor],
                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
