"""Incremental detokenization: only new text per step, no broken UTF-8, no lost spaces.

Prefix-aware decoding (vLLM/TGI style): each step decodes a short window that starts a few tokens
back, and emits the text past what that window already showed. Text ending in U+FFFD (an
incomplete multi-byte character) is held back, at most MAX_HOLD tokens, so a model that genuinely
produces U+FFFD still streams. `finish()` flushes whatever is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from server.tokenizer_protocol import TokenizerLike

logger = logging.getLogger(__name__)

CONTEXT_TOKENS = 4  # prompt tokens decoded as context (keeps SentencePiece leading spaces)
MAX_HOLD = 6  # tokens an incomplete character may be held back at most
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: TokenizerLike, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix = 0  # start of the decode window
        self._read = len(context)  # tokens before this were already emitted
        self._prefix_text = self._decode(self._prefix, self._read)
        self.text = ""  # everything emitted so far

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def _emit(self, new_text: str) -> str:
        delta = new_text[len(self._prefix_text):]
        self._prefix = self._read
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        self.text += delta
        return delta

    def step(self, new_ids: Sequence[int]) -> str:
        """Add tokens; return the newly complete text (possibly '')."""
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        new_text = self._decode(self._prefix)
        if len(new_text) <= len(self._prefix_text):
            return ""
        held = len(self._ids) - self._read
        if new_text.endswith(REPLACEMENT) and held < MAX_HOLD:
            return ""
        return self._emit(new_text)

    def finish(self) -> str:
        """Flush held-back text at the end of the request."""
        if self._read >= len(self._ids):
            return ""
        new_text = self._decode(self._prefix)
        if len(new_text) <= len(self._prefix_text):
            return ""
        return self._emit(new_text)
