"""Time of the device draw (engine/device/draw_kernel.py `logits_draw_f32`) per step, against
copying the same rows' logits to the host and drawing them there (scheduler/sampling.py's
arithmetic: what `--no-device-sampling` does), on rows of SmolLM2's vocabulary width. Medians
over repeats. GPU machine only:

    python3 bench/gpu_draw_kernel.py [--rows 1,64,256] [--repeats 20] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.device.cuda import CudaContext, Stream  # noqa: E402
from engine.device.draw_kernel import DrawKernel, draw_arrays  # noqa: E402
from engine.device.memory import DeviceBuffer, PinnedBuffer  # noqa: E402
from scheduler.draw import draw_rows  # noqa: E402
from scheduler.plan import DeviceDraw, ScheduledSeq  # noqa: E402
from scheduler.request import SamplingParams  # noqa: E402
from scheduler.sampling import apply_edits  # noqa: E402

VOCAB = 49152
CASES = {  # name -> (temperature, top_k, top_p, min_p, repetition, presence, frequency)
    "top_p 0.95": (0.8, 0, 0.95, 0.0, 1.0, 0.0, 0.0),
    "top_k 50 + top_p 0.95 + repetition 1.1": (0.8, 50, 0.95, 0.0, 1.1, 0.0, 0.0),
    "greedy + presence/frequency": (0.0, 0, 1.0, 0.0, 1.0, 0.5, 0.2),
}


def _draws(case: tuple[float, ...], n: int, rng: np.random.Generator) -> list[DeviceDraw]:
    t, k, p, mp, rp, pres, freq = case
    pen = rp != 1.0 or pres or freq
    return [DeviceDraw(t, int(k), p, mp, float(rng.random()), rp, pres, freq,
                       rng.integers(0, VOCAB, 256).tolist() if pen else (), 128)
            for _ in range(n)]


def _time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _measure(kernel: DrawKernel, stream: Stream, draws: list[DeviceDraw],
             rng: np.random.Generator, repeats: int) -> tuple[float, float]:
    """(device ms, host ms) of one step's draws."""
    n = len(draws)
    logits = (rng.standard_normal((n, VOCAB)) * 3).astype(np.float32)
    rows = [ScheduledSeq(i, [1], 0, [0], True, False, (), d) for i, d in enumerate(draws)]
    x, out, lp = DeviceBuffer(logits.nbytes), DeviceBuffer(n * 8), DeviceBuffer(n * 8)
    back = PinnedBuffer(logits.nbytes)
    bufs = [DeviceBuffer(1 << 22) for _ in range(4)]
    host_ids = np.empty(n, np.int64)

    def device() -> None:
        packed = draw_arrays(rows)
        arrays = (packed.rows, packed.params, packed.history, packed.bans)
        for buf, a in zip(bufs, arrays, strict=True):
            if a.nbytes:
                buf.copy_from_host(a, stream)
        ptrs = (bufs[0].ptr, bufs[1].ptr, bufs[2].ptr, bufs[3].ptr)
        kernel.launch(x.ptr, ptrs, out.ptr, lp.ptr, packed, VOCAB, stream)
        out.copy_to_host(host_ids, stream)
        stream.synchronize()

    def host() -> None:
        rows_back = back.array((n, VOCAB), np.float32)
        x.copy_to_host(rows_back, stream)
        stream.synchronize()
        xs = rows_back.copy()  # the scheduler's host path: edit a copy, then draw
        for row, d in zip(xs, draws, strict=True):
            apply_edits(row, d)
        if draws[0].temperature == 0.0:
            np.argmax(xs, axis=1)
        else:
            draw_rows(xs, [SamplingParams(temperature=d.temperature, top_k=d.top_k,
                                          top_p=d.top_p, min_p=d.min_p) for d in draws],
                      [d.u for d in draws])

    try:
        x.copy_from_host(logits, stream)
        device_ms = _time(device, repeats)  # edits the rows in place: timing only
        return device_ms, _time(host, max(3, repeats // 4))
    finally:
        for b in (x, out, lp, back, *bufs):
            b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,64,256")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ctx = CudaContext(0)
    stream = Stream()
    kernel = DrawKernel(ctx)
    rng = np.random.default_rng(0)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [f"# Device draw vs host draw — {now}",
             "", f"command: `python3 {' '.join(sys.argv)}`; rows of {VOCAB} N(0, 9) fp32 logits; "
             "device: pack + upload + kernel + ids back; host: logits rows copied back (pinned) "
             "+ the scheduler's host edits and draw (scheduler/draw.py, candidate window); "
             f"medians of {args.repeats}", "", "| case | rows | device ms | host ms | ratio |",
             "|---|---:|---:|---:|---:|"]
    for name, case in CASES.items():
        for n in [int(r) for r in args.rows.split(",")]:
            device_ms, host_ms = _measure(kernel, stream, _draws(case, n, rng), rng,
                                          args.repeats)
            lines.append(f"| {name} | {n} | {device_ms:.3f} | {host_ms:.2f} | "
                         f"{host_ms / device_ms:.1f}x |")
            sys.stderr.write(lines[-1] + "\n")
    kernel.close()
    stream.close()
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
