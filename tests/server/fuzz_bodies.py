"""A seeded generator of request bodies for every POST route: plausible bodies with fields set to
hostile values, raw JSON tokens Python's json module treats specially, and byte-level mutations.
"""

from __future__ import annotations

import json
import random
from typing import Any

from server.api.triton.schema import ENSEMBLE_INPUTS

MODEL = "fuzz-model"
ROUTES = ("/v2/models/ensemble/generate", "/v2/models/ensemble/generate_stream",
          f"/v2/models/{MODEL}/versions/1/generate", "/v2/models/tensorrt_llm_bls/generate_stream",
          "/v2/models/ensemble/infer", "/v1/completions", "/v1/chat/completions",
          "/v2/repository/index")
VALUES: tuple[Any, ...] = (
    0, 1, -1, 2, 3, 7, 64, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, 2**64, 10**30, 0.5, 1.5,
    -0.0, 1e308, -1e308, 1e-320, True, False, None, "", " ", "a", "10", "1e3", "true",
    "hello world", "<|im_start|>", "<|endoftext|>", "é你🙂", "\x00", "x" * 3000, [], {}, [1],
    ["a"], [["a", "b"]], [[""] * 40], {"a": 1}, {"type": "text"}, [{"type": "text", "text": "x"}],
    {"include_usage": True}, {"50256": 100}, list(range(40)),
)
RAW = ("NaN", "Infinity", "-Infinity", "9" * 4301, "-" + "9" * 5000, "1e999", "1" + "0" * 400,
       '"\\ud800"', '"\\udfff x"', '"\\u0000"', "[" * 150 + "]" * 150, "[" * 3000 + "]" * 3000,
       "1.0e-99999", '{"a":1,"a":2}')
OPENAI_FIELDS = ("model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                 "min_p", "n", "best_of", "stream", "stream_options", "seed", "stop",
                 "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos",
                 "min_tokens", "user", "logprobs", "top_logprobs", "echo", "suffix",
                 "logit_bias", "prompt", "messages", "unknown_field")
TRITON_FIELDS = tuple(s.name for s in ENSEMBLE_INPUTS) + ("id", "parameters", "unknown_param")
ROLES = ("system", "user", "assistant", "developer", "tool", "bot", "", None, 1)


class BodyGen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._raw: dict[str, str] = {}

    def value(self) -> Any:
        if self.rng.random() < 0.15:
            token = f"__raw{len(self._raw)}__"
            self._raw[token] = self.rng.choice(RAW)
            return token
        return self.rng.choice(VALUES)

    def _prompt(self) -> str:
        words = ["hi", "the", "cat", "<|im_end|>", "é", "\n", "  "]
        return "".join(self.rng.choice(words) for _ in range(self.rng.randint(1, 12)))

    def _mutate_fields(self, body: dict[str, Any], fields: tuple[str, ...]) -> None:
        for _ in range(self.rng.choice((0, 1, 1, 2, 3, 5))):
            target = body
            if "parameters" in fields and self.rng.random() < 0.3:
                target = body.setdefault("parameters", {}) if isinstance(
                    body.get("parameters"), dict) or "parameters" not in body else body
            key = self.rng.choice(fields)
            if self.rng.random() < 0.1:
                target.pop(key, None)
            else:
                target[key] = self.value()

    def triton(self) -> dict[str, Any]:
        body: dict[str, Any] = {"text_input": self._prompt(), "max_tokens": self.rng.randint(1, 3)}
        if self.rng.random() < 0.3:
            body["stream"] = True
        self._mutate_fields(body, TRITON_FIELDS)
        return body

    def _message(self) -> Any:
        if self.rng.random() < 0.1:
            return self.value()
        content: Any = self._prompt()
        if self.rng.random() < 0.2:
            content = [{"type": "text", "text": self._prompt()}]
        if self.rng.random() < 0.1:
            content = self.value()
        role = "user" if self.rng.random() < 0.8 else self.rng.choice(ROLES)
        return {"role": role, "content": content}

    def openai(self, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": MODEL if self.rng.random() < 0.9 else "ensemble",
                                "max_tokens": self.rng.randint(1, 3)}
        if chat:
            body["messages"] = [self._message() for _ in range(self.rng.randint(1, 4))]
        else:
            body["prompt"] = self._prompt()
        if self.rng.random() < 0.3:
            body["stream"] = True
        self._mutate_fields(body, OPENAI_FIELDS)
        return body

    def body(self, route: str) -> dict[str, Any]:
        if route.startswith("/v1/"):
            return self.openai(chat="chat" in route)
        if route.endswith("index"):
            body: dict[str, Any] = {"ready": self.value()} if self.rng.random() < 0.7 else {}
            return body
        if route.endswith("infer"):
            return {"inputs": self.value()}
        return self.triton()

    def encode(self, body: dict[str, Any]) -> bytes:
        """json text with raw tokens spliced in, sometimes padded past 16 KiB, then mutated."""
        text = json.dumps(body, ensure_ascii=self.rng.random() < 0.5)
        for token, raw in self._raw.items():
            text = text.replace(f'"{token}"', raw)
        self._raw.clear()
        if self.rng.random() < 0.01:  # large enough for the parser processes
            text = text[:-1] + (', ' if len(text) > 2 else '') + '"pad": "' + "p" * 20_000 + '"}'
        raw_bytes = text.encode("utf-8", "surrogatepass")
        return self.mutate(raw_bytes) if self.rng.random() < 0.2 else raw_bytes

    def mutate(self, raw: bytes) -> bytes:
        data = bytearray(raw)
        pos = self.rng.randrange(len(data) + 1)
        kind = self.rng.randrange(5)
        if kind == 0:
            return bytes(data[:pos])
        if kind == 1 and data:
            data[min(pos, len(data) - 1)] = self.rng.randrange(256)
        elif kind == 2:
            data[pos:pos] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 4)))
        elif kind == 3:
            data[pos:pos] = self.rng.choice((b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b'"'))
        else:
            return b"[" + bytes(data) + b"]"
        return bytes(data)
