"""The `logprobs` objects of OpenAI responses, from the scheduler's per-token log-probs.

- /v1/completions (`"logprobs": k`): `{tokens, token_logprobs, top_logprobs, text_offset}`;
  `top_logprobs` is one `{token: logprob}` dict per token holding the k most likely tokens and
  always the chosen one (so up to k + 1 entries, as OpenAI documents).
- /v1/chat/completions (`"logprobs": true, "top_logprobs": k`): `{"content": [{token, logprob,
  bytes, top_logprobs: [{token, logprob, bytes}] * k}]}`.
Log-probs are the raw model log-probs (before penalties and temperature), as vLLM's default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scheduler.request import TopLogprobs
from server.tokenizer_protocol import TokenizerLike


class LogprobRenderer:
    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tok = tokenizer
        self._token_bytes = getattr(tokenizer, "token_bytes", None)

    def text(self, token_id: int) -> str:
        return self._tok.decode([token_id], skip_special_tokens=False)

    def raw_bytes(self, token_id: int, text: str) -> list[int]:
        """The token's own bytes (a partial UTF-8 character stays exact) when the tokenizer
        can tell, else its decoded text's."""
        if self._token_bytes is not None:
            try:
                return list(self._token_bytes(token_id))
            except ValueError:
                pass
        return list(text.encode("utf-8"))

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.text(token_id)
        return {"token": text, "logprob": logprob, "bytes": self.raw_bytes(token_id, text)}

    def chat(self, ids: Sequence[int], lps: Sequence[float],
             tops: Sequence[TopLogprobs]) -> dict[str, Any]:
        content = []
        for i, (tok, lp) in enumerate(zip(ids, lps, strict=False)):
            entry = self._entry(tok, lp)
            top = tops[i] if i < len(tops) else ()
            entry["top_logprobs"] = [self._entry(t, v) for t, v in top]
            content.append(entry)
        return {"content": content}

    def completion(self, ids: Sequence[int], lps: Sequence[float],
                   tops: Sequence[TopLogprobs], offset: int) -> dict[str, Any]:
        texts = [self.text(i) for i in ids]
        offsets, pos = [], offset
        for t in texts:
            offsets.append(pos)
            pos += len(t)
        top_dicts = []
        for i, (text, lp) in enumerate(zip(texts, lps, strict=False)):
            top = tops[i] if i < len(tops) else ()
            d = {self.text(t): v for t, v in top}
            d.setdefault(text, lp)
            top_dicts.append(d)
        return {"tokens": texts, "token_logprobs": list(lps), "top_logprobs": top_dicts,
                "text_offset": offsets}
