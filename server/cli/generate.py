"""`trtserve generate`: greedy text generation on the command line, printed as it is produced."""

from __future__ import annotations

import argparse
import codecs
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from engine.config import ModelError
from engine.generate import greedy_generate
from engine.runtime import load_model
from engine.tokenizer import Tokenizer
from server.cli.prepare import add_model_arguments, options_from_args

DEFAULT_MAX_TOKENS = 64


def stream_text(tokenizer: Tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Incremental detokenization: text pieces as soon as their UTF-8 bytes are complete."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        if tokenizer.is_special(token_id):
            continue
        piece = decoder.decode(tokenizer.token_bytes(token_id))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def prompt_ids(tokenizer: Tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    return tokenizer.encode(prompt, parse_special=False)


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(options_from_args(args))
    except (ModelError, ValueError) as exc:
        sys.stderr.write(f"trtserve generate: error: {exc}\n")
        return 1
    try:
        ids = prompt_ids(model.tokenizer, args.prompt, args.chat)
        tokens = greedy_generate(model.executor, ids, args.max_tokens,
                                 eos_ids=model.tokenizer.eos_token_ids)
        for piece in stream_text(model.tokenizer, tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    except (ModelError, ValueError) as exc:
        sys.stderr.write(f"trtserve generate: error: {exc}\n")
        return 1
    finally:
        model.close()
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("generate", help="greedy generation from a prompt")
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"new tokens at most (default: {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt in the model's chat template as a user message")
    add_model_arguments(parser)
    parser.set_defaults(run=run)
