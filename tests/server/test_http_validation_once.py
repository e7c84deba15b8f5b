"""Validation once: both route families enforce the scheduler's bounds (scheduler/validation.py),
each saying them with its own input names and in its own error shape. Over the real EngineLoop
(tests/fakes.py's FakeEngine), so an in-bound edge value is also accepted by the scheduler itself."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import MODEL, SERVER_GEOMETRY, FakeEngine, FakeTokenizer
from fastapi.testclient import TestClient

from scheduler.request import ParamError, SamplingParams
from scheduler.validation import MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, validate_params

MAX_CONTEXT = SERVER_GEOMETRY["max_context"]
TRITON = "/v2/models/ensemble/generate"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "a"}]
STOPS = [f"s{i}" for i in range(MAX_STOP_STRINGS + 1)]


@pytest.fixture(scope="module")
def app() -> TestClient:
    from server.app import create_app
    from server.settings import ServerSettings

    client = TestClient(create_app(ServerSettings(model=MODEL), FakeEngine("ok")),
                        raise_server_exceptions=False)
    with client:
        yield client


def _expected(field: str, value: Any, name: str, **others: Any) -> str:
    """The scheduler's own message for this field, said with the route's name."""
    with pytest.raises(ParamError) as info:
        validate_params(SamplingParams(**{field: value, **others}), MAX_CONTEXT,
                        FakeTokenizer.vocab_size)
    assert info.value.field == field
    return info.value.message(name)


# (SamplingParams field, its value, the other fields it needs, Triton body, OpenAI body)
CASES: list[tuple[str, Any, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]] = [
    ("max_tokens", 0, {}, {"max_tokens": 0}, {"max_tokens": 0}),
    ("max_tokens", MAX_CONTEXT + 1, {}, {"max_tokens": MAX_CONTEXT + 1},
     {"max_completion_tokens": MAX_CONTEXT + 1}),
    ("min_tokens", 5, {"max_tokens": 4}, {"min_tokens": 5}, {"min_tokens": 5}),
    ("min_tokens", -1, {"max_tokens": 4}, {"min_tokens": -1}, {"min_tokens": -1}),
    ("temperature", 2.5, {}, {"temperature": 2.5, "top_k": 5}, {"temperature": 2.5}),
    ("temperature", -0.5, {}, {"temperature": -0.5}, {"temperature": -0.5}),
    ("top_k", -5, {}, {"top_k": -5}, {"top_k": -5}),
    ("top_p", 1.5, {}, {"top_p": 1.5}, {"top_p": 1.5}),
    ("top_p", -0.5, {}, {"top_p": -0.5}, {"top_p": -0.5}),
    ("top_p", 0.0, {}, None, {"top_p": 0.0}),  # Triton: 0 is "unset"
    ("min_p", 1.5, {}, None, {"min_p": 1.5}),  # no Triton input
    ("repetition_penalty", 0.0, {}, {"repetition_penalty": 0.0}, {"repetition_penalty": 0.0}),
    ("repetition_penalty", 101.0, {}, {"repetition_penalty": 101.0},
     {"repetition_penalty": 101.0}),
    ("presence_penalty", 2.5, {}, {"presence_penalty": 2.5}, {"presence_penalty": 2.5}),
    ("frequency_penalty", -2.5, {}, {"frequency_penalty": -2.5}, {"frequency_penalty": -2.5}),
    ("seed", -1, {}, None, {"seed": -1}),  # Triton: UINT64, refused when parsed
    ("seed", 2**64, {}, None, {"seed": 2**64}),
    ("end_ids", -1, {}, {"end_id": -1}, None),
    ("pad_id", -1, {}, {"pad_id": -1}, None),
    ("stop", len(STOPS), {}, {"stop_words": STOPS}, {"stop": STOPS}),
    ("top_logprobs", MAX_TOP_LOGPROBS + 1, {"logprobs": True}, None,
     {"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS + 1}),
    ("top_logprobs", 2, {}, None, {"top_logprobs": 2}),
]
TRITON_NAMES = {"end_ids": "end_id", "stop": "stop_words"}


def _route_cases() -> list[Any]:
    """Each case once per route that has the input."""
    out = []
    for field, value, others, triton, openai in CASES:
        for route, body in (("triton", triton), ("openai", openai)):
            if body is not None:
                out.append(pytest.param(route, field, value, others, body,
                                        id=f"{route}-{field}={value!r}"))
    return out


def _value(field: str, value: Any) -> Any:
    """The SamplingParams value a case's message shows (end_ids is a tuple, stop a count)."""
    if field == "end_ids":
        return (value,)
    if field == "stop":
        return tuple(STOPS)
    return value


def _triton_400(app: TestClient, field: str, value: Any, others: dict[str, Any],
                body: dict[str, Any]) -> None:
    r = app.post(TRITON, json={"text_input": "a", "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    want = _expected(field, _value(field, value), TRITON_NAMES.get(field, field), **others)
    assert r.json() == {"error": want}


def _openai_400(app: TestClient, field: str, value: Any, others: dict[str, Any],
                body: dict[str, Any]) -> None:
    name = next(iter(body)) if field != "top_logprobs" else "top_logprobs"
    r = app.post(CHAT, json={"model": "fake-model", "max_tokens": 4, "messages": MESSAGES,
                             **body})
    assert r.status_code == 400, r.text
    want = _expected(field, _value(field, value), name, **others)
    assert r.json() == {"error": {"message": want, "type": "invalid_request_error",
                                  "param": name, "code": 400}}


@pytest.mark.parametrize(("route", "field", "value", "others", "body"), _route_cases())
def test_400_with_the_scheduler_bound(app: TestClient, route: str, field: str, value: Any,
                                      others: dict[str, Any], body: dict[str, Any]) -> None:
    """Triton: `{"error": <the scheduler's message with the input's name>}`; OpenAI: the error
    object with the same message and `param` naming the parameter."""
    check = _triton_400 if route == "triton" else _openai_400
    check(app, field, value, others, body)


def test_completions_logprobs_is_top_logprobs(app: TestClient) -> None:
    """/v1/completions `logprobs: k` is the scheduler's top_logprobs, reported as `logprobs`:
    the same bound as chat's top_logprobs (k <= 20; it was 5 on this route alone)."""
    body = {"model": "fake-model", "prompt": "a", "max_tokens": 2}
    r = app.post(COMPLETIONS, json={**body, "logprobs": MAX_TOP_LOGPROBS + 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logprobs"
    assert r.json()["error"]["message"].startswith(f"invalid logprobs={MAX_TOP_LOGPROBS + 1}:")
    ok = app.post(COMPLETIONS, json={**body, "logprobs": MAX_TOP_LOGPROBS})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"][0]["logprobs"]["top_logprobs"][0]) >= MAX_TOP_LOGPROBS


# in-bound edges: accepted by both routes and by the scheduler behind them
EDGES: list[tuple[dict[str, Any], dict[str, Any] | None]] = [
    ({"max_tokens": MAX_CONTEXT - 3}, {"max_tokens": MAX_CONTEXT - 3}),  # 3 prompt tokens
    ({"temperature": 2.0, "top_k": 5, "seed": 1}, {"temperature": 2.0, "seed": 1}),
    ({"top_p": 1.0, "top_k": 3}, {"top_p": 1.0}),
    ({"top_p": 0.0}, None),
    ({"repetition_penalty": 100.0}, {"repetition_penalty": 100.0}),
    ({"presence_penalty": -2.0, "frequency_penalty": 2.0},
     {"presence_penalty": -2.0, "frequency_penalty": 2.0}),
    ({"min_tokens": 4}, {"min_tokens": 4}),
    ({"seed": 2**64 - 1, "top_k": 2}, {"seed": 2**64 - 1, "top_k": 2}),
    ({"stop_words": STOPS[:MAX_STOP_STRINGS]}, {"stop": STOPS[:MAX_STOP_STRINGS]}),
    ({"end_id": 2**31 - 1, "pad_id": 0}, None),
    (None, {"top_k": -1, "top_p": 0.5, "min_p": 1.0}),
]


@pytest.mark.parametrize(("triton", "openai"), EDGES)
def test_edges_accepted_by_both_routes(app: TestClient, triton: dict | None,
                                       openai: dict | None) -> None:
    if triton is not None:
        r = app.post(TRITON, json={"text_input": "a", "max_tokens": 4, **triton})
        assert r.status_code == 200, r.text
    if openai is not None:
        r = app.post(CHAT, json={"model": "fake-model", "max_tokens": 4, "messages": MESSAGES,
                                 **openai})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("body", "param"), [({"n": 2}, "n"), ({"best_of": 3}, "best_of"),
                                             ({"temperature": "1"}, "temperature"),
                                             ({"messages": []}, "messages")])
def test_openai_type_errors_name_the_parameter(app: TestClient, body: dict[str, Any],
                                               param: str) -> None:
    """Checked by the request model (types, features this server lacks): `param` is set too."""
    r = app.post(CHAT, json={"model": "fake-model", "messages": MESSAGES, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert f"'{param}'" in r.json()["error"]["message"]
