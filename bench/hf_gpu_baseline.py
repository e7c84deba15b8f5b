"""transformers on the same GPU, same run, as the reference for the serving bench: fp16
LlamaForCausalLM with the embedded SmolLM2's weights, `generate` of 128 new tokens after 128
random prompt tokens (greedy, no early stop), eager and with the static cache (transformers
compiles its decode step with torch.compile then). Offline batches, no HTTP. GPU machine only:

    python3 bench/hf_gpu_baseline.py [--eager 1,16,64,256] [--static 256,64,1] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_cpu import _hf_config, load_weights  # noqa: E402

logger = logging.getLogger(__name__)
LEN = 128


def _model() -> object:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config, weights, _ = load_weights("gguf")
    model = LlamaForCausalLM(_hf_config(LlamaConfig, config)).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.half().cuda()


def _generate(model: object, batch: int, static: bool) -> float:
    """Output tok/s of one timed generate (after one untimed warm-up of the same shape)."""
    import torch

    ids = torch.randint(100, 40000, (batch, LEN), device="cuda")
    kwargs = {"max_new_tokens": LEN, "min_new_tokens": LEN, "do_sample": False,
              "attention_mask": torch.ones_like(ids), "pad_token_id": 0}
    if static:
        kwargs["cache_implementation"] = "static"
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # type: ignore[attr-defined]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)  # type: ignore[attr-defined]
        torch.cuda.synchronize()
    new = (out.shape[1] - LEN) * batch
    return new / (time.perf_counter() - t0)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eager", default="1,16,64,256")
    ap.add_argument("--static", default="256,64,1")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    model = _model()
    lines = [f"# transformers fp16 on {torch.cuda.get_device_name(0)} — "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"command: `python3 {' '.join(sys.argv)}`; torch {torch.__version__}; "
             f"{LEN} prompt / {LEN} new tokens, greedy, offline batch", "",
             "| mode | batch | out tok/s |", "|---|---:|---:|"]
    for mode, batches in (("eager", args.eager), ("static cache + torch.compile", args.static)):
        for batch in (int(b) for b in batches.split(",") if b):
            t0 = time.perf_counter()
            try:
                tok_s = _generate(model, batch, static=mode != "eager")
            except Exception as exc:  # report and go on: the table is what matters
                lines.append(f"| {mode} | {batch} | failed: {type(exc).__name__}: {exc} |")
            else:
                lines.append(f"| {mode} | {batch} | {tok_s:,.0f} |")
            logger.info("%s (%.0f s)", lines[-1], time.perf_counter() - t0)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
