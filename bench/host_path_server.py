"""The real trtserve server over an instant executor, for bench/host_path.py (run by it).

Everything on the host path is the tree's own code: uvicorn, FastAPI, routes, SSE, detokenizer,
metrics, EngineLoop and Scheduler. Only the device is replaced: `InstantExecutor` implements the
scheduler's Executor protocol and answers every step at once with precomputed logits whose argmax
is one fixed token (returned as `StepResult.argmax`, as a device executor does). It is loaded
through the server's documented test/bench hook: `server.cli.serve.serve(settings, loader)`
(`run_serve(settings, loader)` where the tree has it, so the event loop is the one the CLI uses).

Run from inside the source tree to measure (`cwd` = that tree, it goes first on sys.path):

    python /path/to/bench/host_path_server.py --port 23456 --ctl-dir /tmp/ctl

A sampler thread classifies the event-loop thread's stack every SAMPLE_S into host-path
categories; touching CTL/reset zeroes the counts, touching CTL/dump writes CTL/profile.json.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402

from engine.loaders.gguf import open_gguf  # noqa: E402
from engine.loaders.gguf_tokenizer import tokenizer_from_gguf_reader  # noqa: E402
from engine.registry import DEFAULT_MODEL, resolve_model  # noqa: E402
from scheduler.config import SchedulerConfig  # noqa: E402
from scheduler.loop import EngineLoop  # noqa: E402
from scheduler.plan import StepPlan, StepResult  # noqa: E402
try:
    from server.cli import serve as cmd_serve  # noqa: E402
except ImportError:  # a base tree from before server/ was arranged by concern (545ae04)
    from server import cmd_serve  # type: ignore[no-redef]  # noqa: E402
from server.serving import ServingModel  # noqa: E402
from server.settings import ServerSettings  # noqa: E402

logger = logging.getLogger(__name__)

SAMPLE_S = 0.001
TOKEN_TEXT = " hello"  # the instant model's only output (one token in SmolLM2's vocabulary)
MAX_CONTEXT = 2048
BLOCK_SIZE = 16
NUM_BLOCKS = 32768


class InstantExecutor:
    """Executor protocol; every logits row argmaxes to `token`, computed once up front."""

    def __init__(self, vocab_size: int, token: int, max_rows: int) -> None:
        self.block_size = BLOCK_SIZE
        self.num_blocks = NUM_BLOCKS
        self.vocab_size = vocab_size
        self.max_context = MAX_CONTEXT
        self._logits = np.zeros((max_rows, vocab_size), np.float32)
        self._logits[:, token] = 10.0
        self._argmax = np.full(max_rows, token, np.int64)
        self.steps = 0

    def execute(self, plan: StepPlan) -> StepResult:
        n = sum(1 for s in plan.seqs if s.want_logits)
        self.steps += 1
        return StepResult(step_id=plan.step_id, logits=self._logits[:n], argmax=self._argmax[:n])

    def close(self) -> None:
        return None


SERIALIZE_FUNCS = frozenset({"dumps", "_dumps", "compact_json", "_event", "encode_event",
                             "encode", "iterencode", "_sse_bytes"})


def classify(frame: Any) -> str:
    """Innermost frame with a known meaning names the category."""
    while frame is not None:
        path, func = frame.f_code.co_filename, frame.f_code.co_name
        if func in SERIALIZE_FUNCS or "/json/" in path:
            return "serialize"
        if path.endswith(("detokenizer.py", "stop_trim.py", "request/text.py",
                           "engine/tokenizer.py")):
            return "detokenize"
        if path.endswith(("scheduler/loop.py", "/asyncio/queues.py")) and func in (
                "_publish", "put", "publish", "put_nowait", "get", "_iterate"):
            return "publish"
        if "/scheduler/" in path:
            return "scheduler"
        if "metrics" in path or "prometheus_client" in path:
            return "metrics"
        if "middleware" in path:
            return "middleware"
        if func in ("run_forever", "run_until_complete", "select", "_run_once", "run"):
            return "loop"  # idle, or uvloop C code (socket I/O) below the loop runner
        if any(k in path for k in ("uvicorn", "starlette", "fastapi", "h11", "httptools",
                                   "anyio", "sse_starlette", "/asyncio/", "uvloop")):
            return "http/write"
        if "/server/" in path:
            return "route"
        frame = frame.f_back
    return "other"


class Sampler(threading.Thread):
    def __init__(self, ctl: Path, executor: InstantExecutor) -> None:
        super().__init__(daemon=True, name="host-path-sampler")
        self.ctl, self.executor = ctl, executor
        self.main_id = threading.main_thread().ident
        self._reset()

    def _reset(self) -> None:
        self.counts: dict[str, int] = {}
        self.funcs: dict[str, int] = {}  # innermost frame, for digging deeper
        self.t0, self.steps0 = time.perf_counter(), self.executor.steps

    def _dump(self) -> None:
        top = dict(sorted(self.funcs.items(), key=lambda kv: -kv[1])[:40])
        data = {"wall_s": time.perf_counter() - self.t0, "counts": self.counts, "top": top,
                "steps": self.executor.steps - self.steps0}
        tmp = self.ctl / "profile.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.ctl / "profile.json")

    def _control(self) -> None:
        for name, action in (("reset", self._reset), ("dump", self._dump)):
            path = self.ctl / name
            if path.exists():
                path.unlink()
                action()

    def run(self) -> None:
        n = 0
        while True:
            time.sleep(SAMPLE_S)
            frame = sys._current_frames().get(self.main_id)  # noqa: SLF001
            cat = classify(frame)
            self.counts[cat] = self.counts.get(cat, 0) + 1
            if frame is not None:
                code = frame.f_code
                key = f"{cat} {Path(code.co_filename).name}:{code.co_name}"
                self.funcs[key] = self.funcs.get(key, 0) + 1
            n += 1
            if n % 50 == 0:
                self._control()


def _loader(ctl: Path) -> Any:
    async def load(settings: ServerSettings, metrics: Any) -> ServingModel:
        source = resolve_model(DEFAULT_MODEL)
        tok = tokenizer_from_gguf_reader(open_gguf(source.path), source.path)
        token = tok.encode(TOKEN_TEXT, parse_special=False)[0]
        cfg = SchedulerConfig(max_batch_size=settings.max_batch_size,
                              max_num_tokens=settings.max_num_tokens or 8192,
                              max_queue_size=settings.max_queue_size)
        executor = InstantExecutor(tok.vocab_size, token, cfg.max_batch_size)
        # trees before issue 13 matched stop strings in the scheduler, with a decode callback
        old = {"decode": tok.decode} if "decode" in inspect.signature(EngineLoop).parameters \
            else {}
        loop = EngineLoop(executor, cfg, eos_token_ids=tok.eos_token_ids,
                          on_step=metrics.observe_step, **old)
        await loop.start()
        Sampler(ctl, executor).start()
        logger.warning("instant executor ready: token %d (%r)", token, tok.decode([token]))
        return ServingModel(name=source.name, tokenizer=tok, loop=loop, max_context=MAX_CONTEXT,
                            max_batch_size=cfg.max_batch_size,
                            max_queue_size=cfg.max_queue_size, backend="instant")
    return load


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True, help="HTTP port on 127.0.0.1")
    p.add_argument("--ctl-dir", type=Path, required=True, help="sampler control directory")
    p.add_argument("--max-batch-size", type=int, default=256, help="sequences per step")
    p.add_argument("--max-num-tokens", type=int, default=8192, help="tokens per step")
    p.add_argument("--extra", default="{}", help="JSON of further ServerSettings fields")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("server.split.serve", "server.serve_split"):  # the engine's pid (new, old tree)
        logging.getLogger(name).setLevel(logging.INFO)
    args.ctl_dir.mkdir(parents=True, exist_ok=True)
    settings = ServerSettings(host="127.0.0.1", port=args.port, metrics_port=0,
                              max_batch_size=args.max_batch_size,
                              max_num_tokens=args.max_num_tokens, max_queue_size=0,
                              log_level="warning", **json.loads(args.extra))
    loader = _loader(args.ctl_dir)
    run_serve = getattr(cmd_serve, "run_serve", None)
    if run_serve is not None:
        return int(run_serve(settings, loader))
    return int(asyncio.run(cmd_serve.serve(settings, loader)))


if __name__ == "__main__":
    sys.exit(main())
