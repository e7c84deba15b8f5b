"""Greedy tokens of the `fast` CPU precision (int8 activations in the single-token MatMulNBits
graph) against `exact` (float32 activations), on the embedded SmolLM2 (Q4_1 GGUF).

    .venv/bin/python bench/cpu_precision_fidelity.py [--tokens 64] [--cache-dir DIR]

For each prompt (chat template, one user message) both engines generate --tokens greedy tokens
(EOS ignored); reported: per prompt the first position where the two differ (none: identical),
the share of identical tokens position by position, and how many prompts agree on their first
16 and 32 tokens. Writes bench/results/cpu_precision_fidelity.md (machine, command, date).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generate import greedy_generate  # noqa: E402
from engine.runtime import EngineOptions, LoadedModel, load_model  # noqa: E402

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "cpu_precision_fidelity.md"
PROMPTS = (
    "Explain in one sentence why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is the capital of France?",
    "List three uses of a paperclip.",
    "How do vaccines work?",
    "Give me a recipe for pancakes.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Summarize the plot of Romeo and Juliet.",
    "Why do cats purr?",
    "Write a Python function that reverses a string.",
    "What causes earthquakes?",
    "Describe the water cycle for a child.",
    "Who painted the Mona Lisa?",
    "Suggest a name for a coffee shop.",
    "What is the difference between weather and climate?",
    "Tell me a short joke about computers.",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Give two tips for better sleep.",
    "Explain what a black hole is.",
    "Write the opening line of a mystery novel.",
    "What is the boiling point of water in Fahrenheit?",
    "Why is exercise good for the heart?",
    "Name the planets of the solar system.",
    "What does a compiler do?",
    "How do I make a paper airplane?",
    "What is the largest ocean on Earth?",
    "Describe a sunset in two sentences.",
    "What are prime numbers?",
    "Why do leaves change color in the fall?",
    "Write a limerick about a frog.",
    "What is the speed of light?",
    "How does a refrigerator keep food cold?",
    "Give me three synonyms for happy.",
    "What is machine learning?",
    "Explain gravity to a ten-year-old.",
    "What should I pack for a beach trip?",
    "Who wrote Pride and Prejudice?",
    "How do bees make honey?",
)


def generate(model: LoadedModel, prompt: str, tokens: int) -> list[int]:
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    return list(greedy_generate(model.executor, ids, tokens))


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first position where a and b differ; None when they are equal."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def report(rows: list[tuple[str, int | None, float]], tokens: int, command: str) -> str:
    firsts = [tokens if d is None else d for _, d, _ in rows]
    agree = {n: sum(f >= n for f in firsts) for n in (16, 32, tokens)}
    lines = [
        "# CPU precision: `fast` (int8 activations) against `exact` greedy tokens", "",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores visible, "
        f"python {platform.python_version()}",
        f"- command: `{command}`",
        f"- model: embedded SmolLM2-135M-Instruct Q4_1 GGUF; {len(rows)} prompts (chat template) "
        f"x {tokens} greedy tokens, EOS ignored; one-token steps through the MatMulNBits graph, "
        "the prompt through the dense fp32 graph in both", "",
        f"- prompts identical on their first 16 tokens: {agree[16]}/{len(rows)} "
        f"({agree[16] / len(rows):.0%}); first 32: {agree[32]}/{len(rows)} "
        f"({agree[32] / len(rows):.0%}); all {tokens}: {agree[tokens]}/{len(rows)}",
        f"- identical tokens position by position: "
        f"{statistics.mean(s for _, _, s in rows):.1%}",
        f"- first divergence (no divergence counted as {tokens}): median "
        f"{statistics.median(firsts):.0f}, min {min(firsts)}", "",
        "| prompt | first divergence | identical tokens |", "|---|---|---|"]
    lines += [f"| {p} | {'-' if d is None else d} | {s:.0%} |" for p, d, s in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = {p: load_model(EngineOptions(cache_dir=args.cache_dir, cpu_precision=p,
                                          kv_cache_blocks=64)) for p in ("exact", "fast")}
    rows = []
    for prompt in PROMPTS:
        exact, fast = (generate(models[p], prompt, args.tokens) for p in ("exact", "fast"))
        same = sum(x == y for x, y in zip(exact, fast, strict=True)) / len(exact)
        rows.append((prompt, first_divergence(exact, fast), same))
        logger.warning("%s: first divergence %s", prompt, rows[-1][1])
    command = shlex.join(["python", *sys.argv])
    RESULTS.write_text(report(rows, args.tokens, command), encoding="utf-8")
    print(RESULTS.read_text(encoding="utf-8"))  # noqa: T201


if __name__ == "__main__":
    main()
