"""Fixtures for the bench tests: a tiny trained BPE tokenizer and an in-process fake server."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

from loadgen.tokenizer import HFTokenizer

from .fake_server import FakeServer

logger = logging.getLogger(__name__)

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu the quick brown fox jumps over lazy dog").split()


def train_tokenizer() -> HFTokenizer:
    """Byte-level BPE over the NATO alphabet, with a BOS token prepended on encode."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(50)) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return HFTokenizer(tok)


@pytest.fixture(scope="session")
def fake_tok() -> HFTokenizer:
    return train_tokenizer()


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer(tokens=[f" {w}" for w in WORDS])
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def server(fake_server: FakeServer) -> FakeServer:
    fake_server.reset()
    return fake_server
