"""Stop strings across token boundaries, on decoded text."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from fakes import FakeExecutor, greedy_reference
from sched_fakes import make_request, make_scheduler, run_all, tokens_of

from scheduler.request import FinishReason
from scheduler.stop import stop_string_hit

PIECES = {i: chr(97 + i % 26) * (1 + i % 3) for i in range(64)}  # token -> text piece


def decode(ids: Seq[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_stop_string_spanning_tokens() -> None:
    """"bc" appears only once both tokens are out; "x" never; old matches don't re-trigger."""
    b, c, x = 1, 2, 23  # "bb", "ccc", "xxxxx"
    assert PIECES[b] == "bb" and PIECES[c] == "ccc"
    assert not stop_string_hit([b], ["bc"], decode)
    assert stop_string_hit([b, c], ["bc"], decode)
    assert not stop_string_hit([b, c, x], ["bc"], decode)
    assert not stop_string_hit([b, c], ["zz"], decode)


def test_request_stops_when_text_completes_a_stop_string() -> None:
    """The request finishes with STOP on the token that completes a stop string made of the end
    of one token's text and the start of the next; that token is included."""
    prompt = make_request(5).prompt_token_ids
    ref = greedy_reference(prompt, 12)
    k = next(i for i in range(3, 12) if PIECES[ref[i - 1]][-1] != PIECES[ref[i]][0])
    stop = PIECES[ref[k - 1]][-1] + PIECES[ref[k]][0]
    first = next(i for i in range(12) if stop in decode(ref[: i + 1]))
    assert all(stop not in PIECES[t] for t in ref)  # only matchable across a boundary
    ex = FakeExecutor()
    sched = make_scheduler(ex, decode=decode)
    sched.add(make_request(prompt, request_id="s", max_tokens=12, stop=(stop,)))
    sched.add(make_request(prompt, request_id="late", max_tokens=12, stop=(stop,),
                           min_tokens=first + 2))
    got = run_all(sched, ex)
    assert tokens_of(got["s"]) == ref[: first + 1]
    assert got["s"][-1].finish_reason == FinishReason.STOP
    assert len(tokens_of(got["late"])) >= first + 2
