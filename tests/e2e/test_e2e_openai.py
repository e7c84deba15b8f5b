"""The official `openai` client against the real server."""

from __future__ import annotations

import openai
import pytest
from server_proc import ServerProc

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def oai(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120)


def test_models_and_completion(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list().data] == [MODEL]
    r = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8)
    assert r.choices[0].text.strip() and r.usage is not None
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    s = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                               stream=True)
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text  # greedy


def test_chat_stream_and_not(oai: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Say hello in one word."}]
    r = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10)
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason in ("stop", "length")
    stream = oai.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=MODEL, prompt="x", max_tokens=4, n=2)
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x", max_tokens=4)
