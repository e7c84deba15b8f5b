"""Rebuild a GGUF's byte-level BPE tokenizer (vocab, merges, token types, pre-tokenizer name)
with the `tokenizers` library, the way llama.cpp tokenizes it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine.config import ModelError
from engine.loaders.gguf import open_gguf, read_field
from engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

TOKEN_TYPE_CONTROL = 3  # llama.cpp token types: 1 normal, 3 control (special), 4 user-defined
TOKEN_TYPE_USER_DEFINED = 4

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# `tokenizer.ggml.pre` values (llama.cpp) grouped by the pre-tokenizer they mean
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
GPT2 = ("gpt-2", "gpt2", "default", "phi-2", "jina-es", "jina-de", "olmo", "jais", "bloom")
REGEX_SPLITS = {"llama-bpe": LLAMA3_SPLIT, "llama3": LLAMA3_SPLIT, "smaug-bpe": LLAMA3_SPLIT,
                "dbrx": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}


def pre_tokenizer_for(pre: str | None) -> Any:
    """The `tokenizers` pre-tokenizer matching llama.cpp's handling of `tokenizer.ggml.pre`."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in REGEX_SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(REGEX_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre not in GPT2 and pre is not None:
        logger.warning("unknown GGUF pre-tokenizer %r; using the GPT-2 split", pre)
    return byte_level


def _backend(reader: Any, path: str | Path) -> HFTokenizer:
    model = read_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelError(f"unsupported GGUF tokenizer model {model!r} in {path} "
                         "(only byte-level BPE, 'gpt2', is supported)")
    tokens: list[str] = read_field(reader, "tokenizer.ggml.tokens") or []
    merges: list[str] = read_field(reader, "tokenizer.ggml.merges") or []
    if not tokens or not merges:
        raise ModelError(f"GGUF tokenizer vocabulary or merges missing in {path}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                                     byte_fallback=False, ignore_merges=False))
    backend.pre_tokenizer = pre_tokenizer_for(read_field(reader, "tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    _add_special(backend, tokens, read_field(reader, "tokenizer.ggml.token_type") or [])
    return backend


def _add_special(backend: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types, strict=False) if kind == TOKEN_TYPE_CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types, strict=False) if kind == TOKEN_TYPE_USER_DEFINED]
    backend.add_special_tokens(control)
    backend.add_tokens(user)


def tokenizer_from_gguf_reader(reader: Any, path: str | Path) -> Tokenizer:
    bos = read_field(reader, "tokenizer.ggml.bos_token_id")
    eos = [read_field(reader, k) for k in ("tokenizer.ggml.eos_token_id",
                                          "tokenizer.ggml.eot_token_id",
                                          "tokenizer.ggml.eom_token_id")]
    return Tokenizer(
        _backend(reader, path),
        chat_template=read_field(reader, "tokenizer.chat_template"),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        add_bos=bool(read_field(reader, "tokenizer.ggml.add_bos_token", False)),
    )


def tokenizer_from_gguf(path: str | Path) -> Tokenizer:
    """The tokenizer described by a GGUF file's `tokenizer.*` metadata."""
    return tokenizer_from_gguf_reader(open_gguf(path), path)
