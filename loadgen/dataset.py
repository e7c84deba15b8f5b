"""Benchmark prompts: random text of an exact token length, or a JSONL file."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from loadgen.config import BenchConfigError
from loadgen.tokenizer import BenchTokenizer

# A token that is one space-led lowercase word re-tokenizes to itself next to its neighbours
# under byte-level BPE pre-tokenizers (the ` ?\p{L}+` split), which makes lengths exact.
_WORD = re.compile(r"^ [a-z]{2,12}$")
_POOL_SIZE = 1024
_MAX_ADJUST_ROUNDS = 64


@dataclass(frozen=True, slots=True)
class BenchPrompt:
    """One request's worth of input."""

    prompt: str          # the text sent
    input_len: int       # its length in tokens (with the tokenizer's special tokens)
    output_len: int      # tokens to force the server to generate


def word_pool(tok: BenchTokenizer, seed: int) -> list[str]:
    """Vocabulary tokens that are single words and round-trip exactly through encode."""
    rng = random.Random(seed)
    ids = list(range(tok.vocab_size))
    rng.shuffle(ids)
    pool: list[str] = []
    for token_id in ids:
        text = tok.decode([token_id])
        if _WORD.match(text) and tok.encode(text, add_special_tokens=False) == [token_id]:
            pool.append(text)
            if len(pool) >= _POOL_SIZE:
                break
    if len(pool) < 16:
        raise BenchConfigError("tokenizer has too few word tokens to build random prompts")
    return pool


def exact_length_prompt(tok: BenchTokenizer, pool: list[str], rng: random.Random,
                        length: int) -> str:
    """Random words whose encoding (with special tokens) is exactly `length` tokens long.

    The text keeps the first word's leading space, so every word stays one token."""
    overhead = len(tok.encode(""))
    if length <= overhead:
        if length == overhead:
            return ""
        raise BenchConfigError(f"--input-len {length} is below the {overhead} special tokens "
                               "the tokenizer adds")
    words = [rng.choice(pool) for _ in range(length - overhead)]
    for _ in range(_MAX_ADJUST_ROUNDS):
        delta = len(tok.encode("".join(words))) - length
        if delta == 0:
            return "".join(words)
        if delta > 0:
            del words[max(1, len(words) - delta):]
        else:
            words.extend(rng.choice(pool) for _ in range(-delta))
    raise BenchConfigError(f"cannot build a prompt of exactly {length} tokens with this tokenizer")


def random_prompts(tok: BenchTokenizer, num: int, input_len: int, output_len: int,
                   seed: int) -> list[BenchPrompt]:
    """`num` distinct random prompts of exactly `input_len` tokens (seeded)."""
    pool = word_pool(tok, seed)
    rng = random.Random(seed)
    return [BenchPrompt(exact_length_prompt(tok, pool, rng, input_len), input_len, output_len)
            for _ in range(num)]


def jsonl_prompts(tok: BenchTokenizer, path: Path, num: int,
                  default_output_len: int) -> list[BenchPrompt]:
    """Lines of {"prompt": str, "output_len"?: int}; cycled when the file has fewer than `num`."""
    rows = _read_jsonl(path)
    prompts = []
    for i in range(num):
        row = rows[i % len(rows)]
        text = str(row["prompt"])
        output_len = int(str(row.get("output_len", default_output_len)))
        prompts.append(BenchPrompt(text, len(tok.encode(text)), output_len))
    return prompts


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise BenchConfigError(f"{path}:{lineno}: expected an object with a 'prompt' "
                                       "string")
            out = row.get("output_len")
            if out is not None and (not isinstance(out, int) or out <= 0):
                raise BenchConfigError(f"{path}:{lineno}: 'output_len' must be a positive integer")
            rows.append(row)
    if not rows:
        raise BenchConfigError(f"{path}: no prompts")
    return rows


def build_prompts(tok: BenchTokenizer, dataset: str, num: int, input_len: int, output_len: int,
                  seed: int) -> list[BenchPrompt]:
    """Dispatch on `--dataset`."""
    if dataset == "random":
        return random_prompts(tok, num, input_len, output_len, seed)
    path = Path(dataset)
    if not path.is_file():
        raise BenchConfigError(f"--dataset: {dataset} is not 'random' nor an existing JSONL file")
    return jsonl_prompts(tok, path, num, output_len)
