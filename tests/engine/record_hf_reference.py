"""Record Hugging Face transformers references for the embedded SmolLM2 (run by hand, needs torch).

    .venv/bin/pip install torch==2.13.0
    .venv/bin/python tests/engine/record_hf_reference.py

Writes tests/engine/data/smollm2_greedy.json and tests/engine/data/smollm2_tokenizer.json.

Independence from our code: the tokenizer references come from transformers' own GGUF tokenizer
path; the greedy references come from transformers' `LlamaForCausalLM` (fp32, eager attention)
holding the weights transformers itself dequantized from the GGUF (its own Q/K un-permutation).
Our loader's weights are checked equal to those before anything is recorded.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.loaders.gguf import load_gguf
from engine.registry import DEFAULT_MODEL, resolve_model

logger = logging.getLogger(__name__)

DATA = Path(__file__).parent / "data"
NEW_TOKENS = 32
MIN_MARGIN = 0.05  # top-1 minus top-2 logit, over every compared token
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the ocean.",
    "Explain what a neural network is in one paragraph.",
    "List three benefits of regular exercise.",
    "How do I reverse a list in Python?",
    "What is photosynthesis?",
    "Give me a short recipe for pancakes.",
    "Translate 'good morning' into Spanish and French.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet.",
]
RAW_PROMPTS = [
    "The quick brown fox",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
TOKENIZER_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  \n\nnew lines\ttabs",
    "日本語のテキストと中文的句子。",
    "emoji: 🎉👍🏽🇫🇷 done",
    "def add(a, b):\n    return a + b  # sum\n",
    "Prices: $12.50, 3,000 items, year 2024, pi=3.14159",
    "naïve café résumé — “quotes” ‘single’",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


def check_weights_match(model: torch.nn.Module, ours: dict[str, np.ndarray]) -> None:
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for name, array in ours.items():
        if not np.array_equal(state[name], array):
            raise SystemExit(f"weight {name} differs from transformers' GGUF loading")
    sys.stdout.write(f"our {len(ours)} weights equal transformers' GGUF weights\n")


@torch.no_grad()
def greedy_with_margins(model: torch.nn.Module, prompt: list[int]) -> tuple[list[int], list[float]]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=None, pad_token_id=0, return_dict_in_generate=True,
                         output_logits=True, min_new_tokens=NEW_TOKENS)
    tokens = out.sequences[0, len(prompt):].tolist()
    margins = []
    for logits in out.logits:
        top2 = torch.topk(logits[0].float(), 2).values
        margins.append(round(float(top2[0] - top2[1]), 4))
    return tokens, margins


def record_tokenizer(tokenizer: AutoTokenizer) -> None:
    cases = [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False)}
             for t in TOKENIZER_TEXTS]
    chat = [{"role": "user", "content": "Hi there!"}]
    body = {"source": "transformers GGUF tokenizer", "cases": cases,
            "chat": {"messages": chat, "ids": tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=False)}}
    (DATA / "smollm2_tokenizer.json").write_text(json.dumps(body, indent=1, ensure_ascii=False))


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    source = resolve_model(DEFAULT_MODEL)
    folder, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    _, ours = load_gguf(source.path)
    check_weights_match(model, ours)
    DATA.mkdir(exist_ok=True)
    record_tokenizer(tokenizer)
    prompts = [(p, tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                 add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)) for p in CHAT_PROMPTS]
    prompts += [(p, tokenizer.encode(p, add_special_tokens=False)) for p in RAW_PROMPTS]
    kept = []
    for text, ids in prompts:
        tokens, margins = greedy_with_margins(model, ids)
        sys.stdout.write(f"min margin {min(margins):.3f}: {text!r} -> "
                         f"{tokenizer.decode(tokens)!r}\n")
        if min(margins) > MIN_MARGIN:
            kept.append({"prompt": text, "prompt_ids": ids, "output_ids": tokens,
                         "output_text": tokenizer.decode(tokens), "margins": margins,
                         "min_margin": min(margins)})
    body = {"model": DEFAULT_MODEL, "reference": "transformers LlamaForCausalLM fp32 eager, "
            f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
            "new_tokens": NEW_TOKENS, "min_margin": MIN_MARGIN, "cases": kept}
    (DATA / "smollm2_greedy.json").write_text(json.dumps(body, indent=1, ensure_ascii=False))
    sys.stdout.write(f"kept {len(kept)} of {len(prompts)} prompts\n")
    return 0 if len(kept) >= 6 else 1


if __name__ == "__main__":
    sys.exit(main())
