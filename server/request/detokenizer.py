"""Incremental detokenization: only new text per step, no broken UTF-8, no lost spaces.

Prefix-aware decoding (vLLM/TGI style): each step decodes a window that starts a few tokens back
and emits the text past what was already sent. A trailing U+FFFD (an incomplete multi-byte
character) is held back until more tokens complete it, for at most MAX_HOLD tokens without
progress, so a model that genuinely produces U+FFFD still streams. The window moves forward once
its text ends in a complete character. `finish()` flushes whatever is left.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.tokenizer_protocol import TokenizerLike

CONTEXT_TOKENS = 4  # prompt tokens decoded as context (keeps SentencePiece leading spaces)
MAX_HOLD = 6  # tokens without new complete text before a trailing U+FFFD is emitted anyway
REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: TokenizerLike, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._ids: list[int] = context
        self._prefix = 0  # start of the decode window
        self._read = len(context)  # window tokens before this are covered by _prefix_text
        self._prefix_text = self._decode(self._prefix, self._read)
        self._sent = 0  # characters emitted past _prefix_text in the current window
        self._stalled = 0  # tokens added since text last grew

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def _advance_window(self) -> None:
        self._prefix = self._read
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        self._sent = 0

    def _take(self, candidate: str) -> str:
        start = len(self._prefix_text) + self._sent
        delta = candidate[start:] if len(candidate) > start else ""
        self._sent += len(delta)
        return delta

    def step(self, new_ids: Sequence[int]) -> str:
        """Add tokens; return the newly complete text (possibly '')."""
        if not new_ids:
            return ""
        self._ids.extend(new_ids)
        self._stalled += len(new_ids)
        new_text = self._decode(self._prefix)
        complete = not new_text.endswith(REPLACEMENT)
        forced = not complete and self._stalled >= MAX_HOLD
        delta = self._take(new_text if complete or forced else new_text.rstrip(REPLACEMENT))
        if delta:
            self._stalled = 0
        if complete or forced:
            self._advance_window()
        return delta

    def finish(self) -> str:
        """Flush held-back text at the end of the request."""
        if self._read >= len(self._ids):
            return ""
        delta = self._take(self._decode(self._prefix))
        self._advance_window()
        return delta
