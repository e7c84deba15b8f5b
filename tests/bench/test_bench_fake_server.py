"""The whole benchmark against the in-process fake server: counts, errors by kind, payloads."""

from __future__ import annotations

import dataclasses

import pytest

from loadgen.config import BenchConfig, BenchConfigError
from loadgen.runner import run_benchmark
from loadgen.tokenizer import HFTokenizer

from .fake_server import FakeServer


def _config(server: FakeServer, **kw: object) -> BenchConfig:
    base = BenchConfig(url=server.url, model="ok", concurrency=(1,), num_prompts=8,
                       input_len=12, output_len=6, progress=False, timeout_s=10.0)
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("endpoint", ["triton", "openai-completions", "openai-chat"])
def test_counts_match_what_was_streamed(server: FakeServer, fake_tok: HFTokenizer,
                                        endpoint: str) -> None:
    """Every request completes; output tokens = tokens the server streamed (re-tokenized)."""
    runs = run_benchmark(_config(server, endpoint=endpoint, concurrency=(1, 3)), fake_tok)
    assert [r.value for r in runs] == [1, 3]
    for r in runs:
        assert (r.num_requests, r.completed, r.failed, r.errors) == (8, 8, 0, {})
        assert r.total_output_tokens == 8 * 6
        assert r.total_input_tokens == 8 * 12
        assert r.short_outputs == 0
        assert r.ttft_ms.count == 8 and r.e2e_ms.count == 8 and r.itl_ms.count == 8 * 5
        assert 0 < r.ttft_ms.p50 <= r.e2e_ms.p50
        assert r.request_throughput > 0 and r.output_throughput > 0
    assert server.tokens_sent == 2 * 8 * 6


def test_request_bodies_force_the_output_length(server: FakeServer,
                                                fake_tok: HFTokenizer) -> None:
    """Triton: min_tokens = max_tokens; OpenAI: ignore_eos + min_tokens + max_tokens."""
    run_benchmark(_config(server, num_prompts=1), fake_tok)
    run_benchmark(_config(server, num_prompts=1, endpoint="openai-completions"), fake_tok)
    run_benchmark(_config(server, num_prompts=1, endpoint="openai-chat"), fake_tok)
    triton, comp, chat = server.payloads
    assert server.paths == ["/v2/models/ok/generate_stream", "/v1/completions",
                            "/v1/chat/completions"]
    assert triton == {"text_input": triton["text_input"], "max_tokens": 6, "min_tokens": 6,
                      "stream": True, "exclude_input_in_output": True, "bad_words": "",
                      "stop_words": ""}
    assert len(fake_tok.encode(triton["text_input"])) == 12
    for body in (comp, chat):
        assert (body["max_tokens"], body["min_tokens"], body["ignore_eos"], body["stream"]) == \
            (6, 6, True, True)
    assert chat["messages"] == [{"role": "user", "content": comp["prompt"]}]


@pytest.mark.parametrize("procs", [1, 2])
def test_extra_body_reaches_every_request(server: FakeServer, fake_tok: HFTokenizer,
                                          procs: int) -> None:
    """--extra-body's fields (sampling settings) are added to each body, over the defaults,
    from one client process or several."""
    extra = '{"temperature": 0.8, "top_p": 0.95, "seed": 3, "stop_words": "x"}'
    run_benchmark(_config(server, num_prompts=4, extra_body=extra, client_procs=procs),
                  fake_tok)
    assert len(server.payloads) == 4
    for body in server.payloads:
        assert (body["temperature"], body["top_p"], body["seed"], body["stop_words"]) == (
            0.8, 0.95, 3, "x")
        assert body["max_tokens"] == 6


@pytest.mark.parametrize("bad", ["[1]", "{", "3"])
def test_extra_body_must_be_a_json_object(bad: str) -> None:
    with pytest.raises(BenchConfigError, match="--extra-body"):
        BenchConfig(concurrency=(1,), extra_body=bad)


def test_closed_loop_holds_concurrency(server: FakeServer, fake_tok: HFTokenizer) -> None:
    """Never more than `concurrency` requests in flight, and the limit is reached."""
    run_benchmark(_config(server, concurrency=(3,), num_prompts=12, output_len=20), fake_tok)
    assert server.max_in_flight == 3


@pytest.mark.parametrize("endpoint", ["triton", "openai-chat"])
def test_errors_reported_by_kind(server: FakeServer, fake_tok: HFTokenizer,
                                 endpoint: str) -> None:
    """Error events, dropped streams and HTTP errors are each counted; latencies use only the
    completed requests, and the table shows the failures."""
    (run,) = run_benchmark(_config(server, endpoint=endpoint, model="flaky"), fake_tok)
    assert (run.completed, run.failed) == (2, 6)
    assert run.errors == {"dropped": 2, "error_event": 2, "http_503": 2}
    assert run.e2e_ms.count == 2 and run.ttft_ms.count == 2
    assert run.total_output_tokens == 2 * 6
    assert "boom" in run.error_samples["error_event"]


@pytest.mark.parametrize("model,kind", [("error", "error_event"), ("drop", "dropped"),
                                        ("http503", "http_503")])
def test_every_request_failing(server: FakeServer, fake_tok: HFTokenizer, model: str,
                               kind: str) -> None:
    (run,) = run_benchmark(_config(server, model=model, num_prompts=4), fake_tok)
    assert (run.completed, run.failed, run.errors) == (0, 4, {kind: 4})
    assert run.e2e_ms.count == 0 and run.output_throughput == 0.0


def test_openai_stream_without_done_is_dropped(server: FakeServer,
                                               fake_tok: HFTokenizer) -> None:
    (run,) = run_benchmark(_config(server, model="nodone", endpoint="openai-completions",
                                   num_prompts=3), fake_tok)
    assert run.errors == {"dropped": 3}
    assert "[DONE]" in run.error_samples["dropped"]


def test_timeout_and_connection_refused(server: FakeServer, fake_tok: HFTokenizer) -> None:
    (run,) = run_benchmark(_config(server, model="slow", num_prompts=2, concurrency=(2,),
                                   timeout_s=0.3), fake_tok)
    assert run.errors == {"timeout": 2}
    from .fake_server import free_port

    (run,) = run_benchmark(_config(server, url=f"http://127.0.0.1:{free_port()}",
                                   num_prompts=2), fake_tok)
    assert run.errors == {"connect": 2}


def test_open_loop(server: FakeServer, fake_tok: HFTokenizer) -> None:
    """Poisson arrivals at two rates: all requests complete, and runs use fresh prompts."""
    runs = run_benchmark(_config(server, concurrency=(), request_rate=(50.0, float("inf"))),
                         fake_tok)
    assert [r.mode for r in runs] == ["request_rate"] * 2
    assert all(r.completed == 8 and r.total_output_tokens == 48 for r in runs)
    prompts = [p["text_input"] for p in server.payloads]
    assert len(set(prompts[:8]) & set(prompts[8:])) == 0
    assert server.max_in_flight > 1
