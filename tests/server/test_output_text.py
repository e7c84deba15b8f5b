"""OutputText (server/request/text.py): the text of a request's deltas with its stop strings,
on a tokenizer whose tokens are several characters long, so a stop string spans two tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from scheduler.request import FinishReason, Request, RequestOutput, SamplingParams
from server.request.stop_trim import StopMode
from server.request.text import OutputText, whole

PIECES = ["ab", "cd", "ef", "gh", "bc"]  # token i -> its text


class PieceTokenizer:
    vocab_size = len(PIECES)
    bos_token_id = None
    eos_token_ids: tuple[int, ...] = ()
    chat_template = None
    add_bos = False

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return "".join(PIECES[i] for i in ids)


def _text(stop: tuple[str, ...], mode: StopMode, min_tokens: int = 0) -> OutputText:
    params = SamplingParams(max_tokens=8, stop=stop, min_tokens=min_tokens, logprobs=True)
    request = Request("r", prompt_token_ids=[3], params=params, arrival_time=0.0)
    return OutputText(PieceTokenizer(), request, mode)  # type: ignore[arg-type]


def _out(ids: list[int], total: int, finished: bool = False) -> RequestOutput:
    return RequestOutput("r", ids, [-float(i + 1) for i in range(len(ids))], finished,
                         FinishReason.LENGTH if finished else None, 1, total)


@pytest.mark.parametrize(("mode", "sent"), [(StopMode.EXCLUDE, "a"), (StopMode.INCLUDE, "abc"),
                                             (StopMode.TOKEN, "abcd")])
def test_stop_string_spanning_two_tokens_ends_the_request_after_the_second(
        mode: StopMode, sent: str) -> None:
    """"bc" is the end of token 0 and the start of token 1: one merged delta of four tokens
    is cut after token 1 (ids, log-probs, count), finished with STOP; the text is cut as the
    mode says."""
    text = _text(("bc",), mode)
    delta = text.feed(_out([0, 1, 2, 3], total=4))
    assert text.stopped and delta.text == sent == text.text
    out = delta.out
    assert (out.new_token_ids, out.new_logprobs, out.num_output_tokens) == ([0, 1], [-1.0, -2.0], 2)
    assert out.finished and out.finish_reason is FinishReason.STOP


def test_stop_across_deltas_holds_back_its_start() -> None:
    text = _text(("bc",), StopMode.EXCLUDE)
    first = text.feed(_out([0], total=1))
    assert first.text == "a" and not first.out.finished  # "b" may start the stop string
    second = text.feed(_out([1, 2], total=3))
    assert second.text == "" and second.out.new_token_ids == [1]
    assert second.out.finish_reason is FinishReason.STOP and text.text == "a"


def test_no_stop_before_min_tokens_and_held_text_released_at_the_end() -> None:
    """min_tokens 3: "bc" completed by token 2 does not count; a later one does."""
    text = _text(("bc",), StopMode.EXCLUDE, min_tokens=3)
    assert text.feed(_out([0, 1], total=2)).text == "abcd"
    delta = text.feed(_out([4, 2], total=4))
    assert delta.out.new_token_ids == [4] and delta.out.finish_reason is FinishReason.STOP
    assert text.text == "abcd"
    plain = _text(("bc",), StopMode.EXCLUDE, min_tokens=3)
    assert plain.feed(_out([2, 0], total=2, finished=True)).text == "efab"  # "b" released
    assert not plain.stopped


def test_without_stop_strings_the_text_is_the_detokeniser_s() -> None:
    text = _text((), StopMode.EXCLUDE)
    assert text.feed(_out([0, 1], total=2)).text == "abcd"
    delta = text.feed(_out([4], total=3, finished=True))
    assert delta.text == "bc" and delta.out.finish_reason is FinishReason.LENGTH
    assert not text.stopped and text.text == "abcdbc"


class _Gen:
    """Stands in for Generation: the deltas of one request, and what `stopped` recorded."""

    def __init__(self, outs: list[RequestOutput]) -> None:
        self.outs, self.stopped_with = outs, None

    async def outputs(self) -> AsyncIterator[RequestOutput]:
        for out in self.outs:
            yield out

    def stopped(self, last: RequestOutput) -> None:
        self.stopped_with = last


@pytest.mark.parametrize("stop", [(), ("ef",)])
def test_whole_joins_the_deltas_and_cuts_at_a_stop(stop: tuple[str, ...]) -> None:
    """Without stop strings: every delta joined, the text decoded at the end; with "ef" (token
    2): cut after it, the generation told it stopped there."""
    gen = _Gen([_out([0], 1), _out([1, 2], 3), _out([3], 4, finished=True)])
    text = _text(stop, StopMode.EXCLUDE)
    delta = asyncio.run(whole(gen, text))  # type: ignore[arg-type]
    if stop:
        assert (delta.text, delta.out.new_token_ids) == ("abcd", [0, 1, 2])
        assert delta.out.finish_reason is FinishReason.STOP and delta.out.num_output_tokens == 3
        assert gen.stopped_with is not None and gen.stopped_with.new_token_ids == [1, 2]
    else:
        assert (delta.text, delta.out.new_token_ids) == ("abcdefgh", [0, 1, 2, 3])
        assert delta.out.finish_reason is FinishReason.LENGTH and gen.stopped_with is None
    assert delta.out.new_logprobs == [-1.0, -1.0, -2.0, -1.0][:len(delta.out.new_token_ids)]
