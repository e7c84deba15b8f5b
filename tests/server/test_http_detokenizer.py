"""RELIABILITY §7.11: incremental detokenization with the real SmolLM2 tokenizer.

concat(deltas) == decode(all ids) for random token sequences (byte-level pieces, emoji, CJK),
no delta contains U+FFFD unless the full text does, and a genuine U+FFFD still streams.
"""

from __future__ import annotations

import random

import pytest

from engine.loaders.gguf_tokenizer import tokenizer_from_gguf
from engine.registry import DEFAULT_MODEL, resolve_model
from server.request.detokenizer import MAX_HOLD, IncrementalDetokenizer

N_SEQUENCES = 10_000


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return tokenizer_from_gguf(resolve_model(DEFAULT_MODEL).path)


def _stream(tok, prompt: list[int], ids: list[int], rng: random.Random) -> list[str]:  # noqa: ANN001
    detok = IncrementalDetokenizer(tok, prompt)
    deltas, i = [], 0
    while i < len(ids):
        n = rng.choice((1, 1, 1, 2, 3))
        deltas.append(detok.step(ids[i:i + n]))
        i += n
    deltas.append(detok.finish())
    return deltas


def test_random_sequences_concat_equals_decode(tok) -> None:  # noqa: ANN001
    rng = random.Random(0)
    texts = ["Hello world, how are you?", "数据科学 🙂👩‍👩‍👧 émigré", "  spaced   out\n\ttabs",
             "emoji 🌊🎉 mixed with ASCII and 中文"]
    pool = sorted({i for t in texts for i in tok.encode(t, add_special_tokens=False)})
    prompt = tok.encode("Say:")
    for _ in range(N_SEQUENCES):
        if rng.random() < 0.5:
            ids = tok.encode(rng.choice(texts), add_special_tokens=False)
        else:
            ids = [rng.choice(pool) if rng.random() < 0.8 else rng.randrange(tok.vocab_size)
                   for _ in range(rng.randint(1, 12))]
        deltas = _stream(tok, prompt, ids, rng)
        full = tok.decode(ids)
        assert "".join(deltas) == full, (ids, deltas, full)
        if "\ufffd" not in full:
            assert all("\ufffd" not in d for d in deltas)


def test_split_emoji_is_held_back_not_garbled(tok) -> None:  # noqa: ANN001
    ids = tok.encode("🙂", add_special_tokens=False)
    byte_tokens = [t for t in range(tok.vocab_size) if len(tok.token_bytes(t)) == 1]
    assert byte_tokens
    detok = IncrementalDetokenizer(tok, [])
    out = [detok.step([i]) for i in ids] + [detok.finish()]
    assert "".join(out) == "🙂" and all("\ufffd" not in o for o in out)


def test_genuine_replacement_char_still_streams(tok) -> None:  # noqa: ANN001
    lone = next(t for t in range(tok.vocab_size) if tok.token_bytes(t) == b"\xf0")
    detok = IncrementalDetokenizer(tok, [])
    out = [detok.step([lone]) for _ in range(MAX_HOLD + 2)]
    assert any(out[:MAX_HOLD + 1]), out  # emitted within the hold-back bound, not at the end
