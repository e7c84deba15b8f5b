"""Decode throughput of the engine on an NVIDIA GPU (fp16 graph, ONNX Runtime CUDA executor with
the cuda-python KV pool) beside Hugging Face transformers (torch fp16 on the same GPU, same
weights, same prompts, greedy) in the same run. Run on the GPU machine (tests/gpu/lease.sh):

    python3 bench/engine_gpu.py [--batches 1,16,64] [--steps 64] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cpu import BLOCK, Run, _hf_config, engine_decode, load_weights  # noqa: E402

from engine.builder import MODEL_FILE, build_model_graph  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.executors.ort_cuda import OrtCudaExecutor  # noqa: E402

logger = logging.getLogger(__name__)
PROMPT_LEN = 32


def hf_decode_cuda(config: ModelConfig, weights: dict[str, np.ndarray], prompts: np.ndarray,
                   steps: int) -> Run | None:
    """transformers LlamaForCausalLM, fp16, eager, on cuda:0, with its KV cache."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        logger.warning("transformers baseline skipped: %s", exc)
        return None
    model = LlamaForCausalLM(_hf_config(LlamaConfig, config)).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    model = model.half().cuda()
    with torch.inference_mode():
        out = model(torch.from_numpy(prompts).cuda(), use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1)
        tokens, times = [tok.cpu().numpy()], []
        for _ in range(steps - 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(tok[:, None], past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1)
            tokens.append(tok.cpu().numpy())  # the engine also returns tokens to the host
            times.append(time.perf_counter() - t0)
    return Run("transformers", prompts.shape[0], times, np.stack(tokens, axis=1))


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    config, weights = load_weights("gguf")
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_model_graph(config, weights, Path(tmp), dtype="float16", block_size=BLOCK)
        per_seq = -(-(PROMPT_LEN + args.steps) // BLOCK)
        ex = OrtCudaExecutor(Path(tmp) / MODEL_FILE, config, num_blocks=max(batches) * per_seq,
                             block_size=BLOCK, max_context=2048)
        try:
            for batch in batches:
                prompts = rng.integers(100, config.vocab_size, (batch, PROMPT_LEN), np.int64)
                engine_decode(ex, prompts[:, :8], 4)  # warm-up (kernels, allocator)
                ours = engine_decode(ex, prompts, args.steps)
                ref = hf_decode_cuda(config, weights, prompts, args.steps)
                rows.append((batch, ours, ref))
        finally:
            ex.close()
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [f"# Engine decode on GPU (fp16) — {now}",
             "", f"command: `python3 {' '.join(sys.argv)}`; prompt {PROMPT_LEN} tokens, "
             f"{args.steps} greedy steps; medians over decode steps", "",
             "| batch | engine ms/step | engine tok/s | transformers ms/step | transformers tok/s "
             "| ratio | greedy tokens equal |", "|---|---|---|---|---|---|---|"]
    for batch, ours, ref in rows:
        if ref is None:
            lines.append(f"| {batch} | {ours.median_s*1e3:.2f} | {ours.tok_s:.0f} | - | - | - |"
                         " - |")
            continue
        same = float((ours.tokens == ref.tokens).mean()) * 100
        lines.append(f"| {batch} | {ours.median_s*1e3:.2f} | {ours.tok_s:.0f} | "
                     f"{ref.median_s*1e3:.2f} | {ref.tok_s:.0f} | {ours.tok_s/ref.tok_s:.2f}x | "
                     f"{same:.1f}% |")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
