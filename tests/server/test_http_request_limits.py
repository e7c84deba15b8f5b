"""Issue 10.3: size limits are checked before tokenising, each a 400 naming the field and the
setting; large bodies are parsed off the event loop (process pool) with the same answers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
from fakes import FakeTokenizer
from fastapi.testclient import TestClient

from server.cli.main import build_parser
from server.cli.serve import settings_from_args

TRITON = "/v2/models/ensemble/generate"
MakeClient = Callable[..., TestClient]


class CountingTokenizer(FakeTokenizer):
    calls = 0
    threads: set[str] = set()

    def encode(self, text: str, **kwargs: bool) -> list[int]:
        CountingTokenizer.calls += 1
        CountingTokenizer.threads.add(threading.current_thread().name)
        return super().encode(text, **kwargs)

    def apply_chat_template(self, messages: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> list[int]:
        CountingTokenizer.calls += 1
        CountingTokenizer.threads.add(threading.current_thread().name)
        return super().apply_chat_template(messages, add_generation_prompt)


def _counting(client) -> None:  # noqa: ANN001
    client.app.state.trtserve.lifecycle.model.tokenizer = CountingTokenizer()
    CountingTokenizer.calls = 0
    CountingTokenizer.threads = set()


def _assert_400(r, *words: str) -> None:  # noqa: ANN001
    assert r.status_code == 400, (r.status_code, r.text[:300])
    body = r.json()
    msg = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    for w in words:
        assert w in msg, msg


def _wait_for_parser_processes(client: TestClient) -> None:
    prep = client.app.state.trtserve.prep
    prep.warm()
    deadline = time.monotonic() + 60
    while not prep.processes_ready:
        assert time.monotonic() < deadline, "parser processes never started"
        time.sleep(0.05)


def _triton(**extra: object) -> dict[str, object]:
    return {"text_input": "hi", "max_tokens": 2, **extra}


def _chat(n: int, content: str = "w") -> dict[str, object]:
    return {"model": "fake-model", "max_tokens": 2,
            "messages": [{"role": "user", "content": content}] * n}


@pytest.mark.parametrize("processes", [0, 1])
@pytest.mark.parametrize("pad", [0, 20_000])  # body > 16 KiB: parsed in a worker
def test_prompt_chars_limit_before_tokenising(make_client: MakeClient, processes: int,
                                              pad: int) -> None:
    c = make_client(max_prompt_chars=100, parse_processes=processes)
    if processes:
        _wait_for_parser_processes(c)
    _counting(c)
    filler = "p" * pad  # an ignored parameter (Triton) / the OpenAI "user" field
    _assert_400(c.post(TRITON, json=_triton(text_input="a" * 101, pad=filler)),
                "text_input", "--max-prompt-chars")
    _assert_400(c.post("/v1/completions", json={"model": "fake-model", "prompt": ["b" * 101],
                                                 "user": filler}),
                "prompt", "--max-prompt-chars")
    _assert_400(c.post("/v1/chat/completions", json={**_chat(2, "c" * 51), "user": filler}),
                "messages", "--max-prompt-chars")
    assert CountingTokenizer.calls == 0
    r = c.post(TRITON, json=_triton(text_input="a" * 100, pad=filler))
    assert r.status_code == 200, r.text
    assert CountingTokenizer.calls == 1


def test_prompt_chars_default_is_derived_from_max_context(make_client: MakeClient) -> None:
    c = make_client()  # the fake model's max context is 512 tokens
    _counting(c)
    _assert_400(c.post(TRITON, json=_triton(text_input="a" * (32 * 512 + 1))), "16384")
    assert CountingTokenizer.calls == 0


def test_chat_messages_limit(make_client: MakeClient) -> None:
    c = make_client(max_chat_messages=3)
    _counting(c)
    _assert_400(c.post("/v1/chat/completions", json=_chat(4)), "messages",
                "--max-chat-messages")
    assert CountingTokenizer.calls == 0
    assert c.post("/v1/chat/completions", json=_chat(3)).status_code == 200


def test_chat_messages_default_and_huge_chat(make_client: MakeClient) -> None:
    """100,000 one-word messages (the issue's freeze): a quick 400 and nothing tokenised."""
    c = make_client()
    _counting(c)
    _assert_400(c.post("/v1/chat/completions", json=_chat(100_000)), "512 messages")
    assert CountingTokenizer.calls == 0


@pytest.mark.parametrize("key", ["bad_words", "stop_words"])
def test_word_list_limits(make_client: MakeClient, key: str) -> None:
    c = make_client(max_word_list=3, max_word_list_chars=10)
    _counting(c)
    _assert_400(c.post(TRITON, json=_triton(**{key: ["a", "b", "c", "d"]})), key,
                "--max-word-list")
    _assert_400(c.post(TRITON, json=_triton(parameters={key: [["a", "b", "c", "d"]]})), key)
    _assert_400(c.post(TRITON, json=_triton(**{key: [[""] * 350_000]})), key)
    _assert_400(c.post(TRITON, json=_triton(**{key: ["abcdef", "ghijk"]})), key,
                "--max-word-list-chars")
    assert CountingTokenizer.calls == 0
    assert c.post(TRITON, json=_triton(**{key: ["ab", "cd", "ef"]})).status_code == 200


def test_openai_stop_limits(make_client: MakeClient) -> None:
    c = make_client(max_word_list=2, max_word_list_chars=5)
    body = {"model": "fake-model", "prompt": "hi", "max_tokens": 2}
    _assert_400(c.post("/v1/completions", json={**body, "stop": ["a", "b", "c"]}), "stop",
                "--max-word-list")
    _assert_400(c.post("/v1/completions", json={**body, "stop": "abcdef"}), "stop",
                "--max-word-list-chars")
    assert c.post("/v1/completions", json={**body, "stop": ["a", "b"]}).status_code == 200


def test_logit_bias_limits(make_client: MakeClient) -> None:
    c = make_client(max_logit_bias=2)
    body = {"model": "fake-model", "prompt": "hi", "max_tokens": 2}
    bias = {str(i): 1 for i in range(3)}
    _assert_400(c.post("/v1/completions", json={**body, "logit_bias": bias}), "logit_bias",
                "--max-logit-bias")
    assert c.post("/v1/completions", json={**body, "logit_bias": {"1": 1}}).status_code == 200
    _assert_400(c.post(TRITON, json=_triton(embedding_bias_words=["a", "b", "c"])),
                "embedding_bias_words", "--max-logit-bias")


def test_large_valid_bodies_are_served_from_the_worker(make_client: MakeClient) -> None:
    c = make_client(parse_processes=1)
    _wait_for_parser_processes(c)
    pad = "x" * 40_000  # an ignored string parameter makes the body large
    r = c.post(TRITON, json=_triton(pad=pad, bad_words=["zz"]))
    assert r.status_code == 200, r.text
    chat = {**_chat(2), "user": pad, "stream_options": {"include_usage": True, "x": pad},
            "stream": True, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b", "junk": pad}]}]}
    r = c.post("/v1/chat/completions", json=chat)
    assert r.status_code == 200, r.text
    assert '"usage"' in r.text and r.text.endswith("data: [DONE]\n\n")
    _assert_400(c.post(TRITON, content=json.dumps(_triton(pad=pad))[:-1]), "parse")


def test_limit_settings_have_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTSERVE_MAX_LOGIT_BIAS", "7")
    monkeypatch.setenv("TRTSERVE_PARSE_PROCESSES", "0")
    args = build_parser().parse_args([
        "serve", "--max-prompt-chars", "1000", "--max-chat-messages", "9",
        "--max-word-list", "5", "--max-word-list-chars", "50", "--tokenize-threads", "3"])
    s = settings_from_args(args)
    assert (s.max_prompt_chars, s.max_chat_messages, s.max_word_list, s.max_word_list_chars,
            s.max_logit_bias, s.parse_processes, s.tokenize_threads) == (1000, 9, 5, 50, 7, 0, 3)


def test_tokenising_runs_on_the_prep_threads(make_client: MakeClient) -> None:
    """Not on the event loop's thread: prompts, bad_words and chat templates."""
    c = make_client(tokenize_threads=3)
    _counting(c)
    assert c.post(TRITON, json=_triton(bad_words=["ab"])).status_code == 200
    assert c.post("/v1/completions", json={"model": "fake-model", "prompt": "hi",
                                            "max_tokens": 2}).status_code == 200
    assert c.post("/v1/chat/completions", json=_chat(2)).status_code == 200
    assert CountingTokenizer.calls >= 4
    assert CountingTokenizer.threads and all(
        name.startswith("trtserve-prep") for name in CountingTokenizer.threads), \
        CountingTokenizer.threads


def test_a_dead_parser_process_is_a_503_then_replaced(make_client: MakeClient) -> None:
    c = make_client(parse_processes=1)
    big = _triton(pad="p" * 20_000)
    assert c.post(TRITON, json=big).status_code == 200  # parsed on a thread, starts the pool
    _wait_for_parser_processes(c)
    pool = c.app.state.trtserve.prep._processes
    for pid in list(pool._processes):  # the worker processes of the pool
        os.kill(pid, signal.SIGKILL)
    r = c.post(TRITON, json=big)
    assert r.status_code == 503 and r.headers["retry-after"], r.text  # the broken pool
    assert c.post(TRITON, json=big).status_code == 200  # on a thread while a new pool starts
    _wait_for_parser_processes(c)
    assert c.post(TRITON, json=big).status_code == 200
    assert c.get("/v2/health/live").status_code == 200
