"""The model's tokenizer on the `tokenizers` library (no torch): encode, decode, chat templates.

Two backends share one vocabulary: `_special` matches special tokens written in text, `_plain`
(encode_special_tokens=True) tokenizes them as plain text. Chat templates are rendered with jinja2
the way transformers does; the template's own markers become special ids, message contents never do.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from engine.config import ModelError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use marks around message contents while rendering


def _jinja_env() -> Any:
    """A sandboxed jinja2 environment configured like transformers' chat template renderer."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ModelError(f"chat template error: {message}")

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    return env


def _marked(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**m, "content": f"{_OPEN}{m['content']}{_CLOSE}"} if isinstance(m.get("content"), str)
            else m for m in messages]


def _spans_from_marks(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """Remove the content marks; return the clean text and each content's [start, end)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    length, opened = 0, 0
    for piece in re.split(f"([{_OPEN}{_CLOSE}])", marked):
        if piece == _OPEN:
            opened = length
        elif piece == _CLOSE:
            spans.append((opened, length))
        else:
            out.append(piece)
            length += len(piece)
    return "".join(out), spans


def _spans_by_search(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Fallback when the template rewrites contents: find each (stripped) content in order."""
    spans, pos = [], 0
    for message in messages:
        content = str(message.get("content") or "").strip()
        found = text.find(content, pos) if content else -1
        if found >= 0:
            spans.append((found, found + len(content)))
            pos = found + len(content)
    return spans


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                **special: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt and the character spans that came from message contents."""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ValueError("each chat message must be a dict with a 'role'")
    compiled = _jinja_env().from_string(template)
    text = compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                           **special)
    has_marks = any(_OPEN in str(m.get("content")) or _CLOSE in str(m.get("content"))
                    for m in messages)
    if not has_marks:
        marked_text, spans = _spans_from_marks(compiled.render(
            messages=_marked(messages), add_generation_prompt=add_generation_prompt, **special))
        if marked_text == text:
            return text, spans
    return text, _spans_by_search(text, messages)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return entry.get("content")
    return entry if isinstance(entry, str) else None


class Tokenizer:
    """Encode/decode for one model; see docs/interfaces.md for the contract."""

    def __init__(self, backend: HFTokenizer, *, chat_template: str | None = None,
                 bos_token_id: int | None = None, eos_token_ids: Sequence[int] = (),
                 add_bos: bool = False) -> None:
        self._special = backend
        self._plain = HFTokenizer.from_str(backend.to_str())
        self._plain.encode_special_tokens = True
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(eos_token_ids)
        self.chat_template = chat_template
        self.add_bos = add_bos
        self._byte_level = '"ByteLevel"' in json.dumps(json.loads(backend.to_str()).get("decoder"))
        added = backend.get_added_tokens_decoder()
        self._special_texts = {tok.content: tid for tid, tok in added.items() if tok.special}
        self._special_ids = frozenset(self._special_texts.values())
        self._marker_re = self._compile_markers(self._special_texts)

    @staticmethod
    def _compile_markers(texts: dict[str, int]) -> re.Pattern[str] | None:
        if not texts:
            return None
        ordered = sorted(texts, key=len, reverse=True)
        return re.compile("|".join(re.escape(t) for t in ordered))

    # ---- construction / persistence -------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json for template, BOS/EOS and add_bos)."""
        path = Path(path)
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise ModelError(f"{TOKENIZER_FILE} not found in {path}")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as exc:
            raise ModelError(f"cannot read {file}: {exc}") from None
        cfg_file = path / TOKENIZER_CONFIG_FILE
        cfg: dict[str, Any] = {}
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        return cls(backend, **cls._options_from_config(backend, cfg))

    @staticmethod
    def _options_from_config(backend: HFTokenizer, cfg: dict[str, Any]) -> dict[str, Any]:
        bos = _token_text(cfg.get("bos_token"))
        eos = cfg.get("eos_token_ids")
        if eos is None:
            eos_text = _token_text(cfg.get("eos_token"))
            eos_id = backend.token_to_id(eos_text) if eos_text else None
            eos = [] if eos_id is None else [eos_id]
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        bos_id = backend.token_to_id(bos) if bos else None
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # Llama-3 style: the post-processor template prepends BOS
            add_bos = bos_id is not None and backend.encode("").ids[:1] == [bos_id]
        return {
            "chat_template": template,
            "bos_token_id": bos_id,
            "eos_token_ids": tuple(int(i) for i in eos),
            "add_bos": bool(add_bos),
        }

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json + tokenizer_config.json so `from_dir` rebuilds this tokenizer."""
        path = Path(path)
        self._special.save(str(path / TOKENIZER_FILE))
        bos = None if self.bos_token_id is None else self._special.id_to_token(self.bos_token_id)
        eos = [self._special.id_to_token(i) for i in self.eos_token_ids]
        cfg = {"chat_template": self.chat_template, "bos_token": bos,
               "eos_token": eos[0] if eos else None, "eos_token_ids": list(self.eos_token_ids),
               "add_bos_token": self.add_bos}
        (path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(cfg, indent=1), encoding="utf-8")

    # ---- the contract ---------------------------------------------------------------------
    def encode(self, text: str, *, parse_special: bool = True,
               add_special_tokens: bool = True) -> list[int]:
        backend = self._special if parse_special else self._plain
        # encode_batch releases the GIL (encode does not): other threads run meanwhile
        ids = backend.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self._special.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (byte-level BPE, or SentencePiece with byte fallback)."""
        text = self._special.id_to_token(token_id)
        if text is None:
            raise ValueError(f"token id {token_id} outside the vocabulary ({self.vocab_size})")
        if token_id in self._special_ids:
            return text.encode("utf-8")
        if self._byte_level:
            return bytes(_UNICODE_TO_BYTE[c] for c in text)
        fallback = _BYTE_FALLBACK.fullmatch(text)
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        return text.replace("\u2581", " ").encode("utf-8")

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> list[int]:
        """Render the chat template and tokenize it; contents stay plain text."""
        if not self.chat_template:
            raise ModelError("this model has no chat template")
        bos = None if self.bos_token_id is None else self._special.id_to_token(self.bos_token_id)
        eos_id = self.eos_token_ids[0] if self.eos_token_ids else None
        eos = None if eos_id is None else self._special.id_to_token(eos_id)
        text, content_spans = render_chat(self.chat_template, messages, add_generation_prompt,
                                          bos_token=bos, eos_token=eos)
        return self._encode_rendered(text, content_spans)

    def _encode_rendered(self, text: str, content_spans: list[tuple[int, int]]) -> list[int]:
        """Split at special markers outside message contents; tokenize the rest as plain text.

        Linear in the text: markers and content spans are both walked once in order, and the
        plain pieces are encoded in one batch (which also releases the GIL).
        """
        pieces: list[str | int] = []  # plain text, or a special id
        spans = sorted(content_spans)
        start, span = 0, 0
        for match in self._marker_re.finditer(text) if self._marker_re else ():
            at = match.start()
            while span < len(spans) and spans[span][1] <= at:
                span += 1
            if span < len(spans) and spans[span][0] <= at:
                continue  # inside a message content: stays plain text
            if at > start:
                pieces.append(text[start:at])
            pieces.append(self._special_texts[match.group()])
            start = match.end()
        if start < len(text):
            pieces.append(text[start:])
        return self._join_pieces(pieces)

    def _join_pieces(self, pieces: list[str | int]) -> list[int]:
        texts = [p for p in pieces if isinstance(p, str)]
        encoded = iter(self._plain.encode_batch(texts, add_special_tokens=False) if texts else ())
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, str):
                ids += next(encoded).ids
            else:
                ids.append(piece)
        return ids
