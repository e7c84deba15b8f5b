"""A request's output text: the one place it is made, for every route.

The incremental detokeniser (detokenizer.py) turns the engine's tokens into text; stop strings
are matched on that same text (stop_trim.py), token by token, so the client gets exactly the text
the match was made on. When a stop string completes, the request ends there: its last delta is
cut after the token that completed it (finish reason STOP, counts and log-probs cut with it),
and the engine is told to stop generating it (an abort; the step already in flight is wasted).
A response that does not stream takes `whole`: without stop strings its tokens are detokenised
once, at the end (the same text in fewer calls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from scheduler.request import FinishReason, Request, RequestOutput, TopLogprobs
from server.request.detokenizer import IncrementalDetokenizer
from server.request.generation import Generation
from server.request.stop_trim import StopMode, StopTrimmer
from server.tokenizer_protocol import TokenizerLike


@dataclass(frozen=True, slots=True)
class TextDelta:
    out: RequestOutput  # the engine's delta (cut at the stop string's token when one matched)
    text: str  # the text to send for it


def cut_at(out: RequestOutput, n: int) -> RequestOutput:
    """`out` ending with STOP after its first n new tokens."""
    extra = len(out.new_token_ids) - n
    return dataclasses.replace(
        out, new_token_ids=out.new_token_ids[:n],
        new_logprobs=None if out.new_logprobs is None else out.new_logprobs[:n],
        new_top_logprobs=None if out.new_top_logprobs is None else out.new_top_logprobs[:n],
        finished=True, finish_reason=FinishReason.STOP, error=None, error_type=None,
        num_output_tokens=out.num_output_tokens - extra)


class OutputText:
    """Feed a request's deltas in order; get each one's text (stop strings applied)."""

    def __init__(self, tokenizer: TokenizerLike, request: Request, mode: StopMode) -> None:
        params = request.params
        self._detok = IncrementalDetokenizer(tokenizer, request.prompt_token_ids)
        self._stops = StopTrimmer(params.stop, mode) if params.stop else None
        self._mode = mode
        self._min_tokens = params.min_tokens
        self._count = 0  # output tokens fed
        self._parts: list[str] = []  # everything sent so far, joined only when asked for
        self.length = 0  # characters sent so far

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return "".join(self._parts)

    @property
    def has_stops(self) -> bool:
        return self._stops is not None

    @property
    def stopped(self) -> bool:
        """A stop string ended the text."""
        return self._stops is not None and self._stops.hit

    def feed(self, out: RequestOutput) -> TextDelta:
        if self._stops is None:
            text = self._detok.step(out.new_token_ids)
            if out.finished:
                text += self._detok.finish()
            return self._sent(out, text)
        return self._feed_stops(out, self._stops)

    def _feed_stops(self, out: RequestOutput, stops: StopTrimmer) -> TextDelta:
        parts = []
        for i, token in enumerate(out.new_token_ids):
            self._count += 1
            parts.append(stops.feed(self._detok.step((token,)),
                                    armed=self._count >= self._min_tokens))
            if stops.hit:
                if self._mode is StopMode.TOKEN:  # that token's text whole
                    parts.append(self._detok.finish())
                return self._sent(cut_at(out, i + 1), "".join(parts))
        if out.finished:
            parts.append(stops.feed(self._detok.finish(), final=True,
                                    armed=self._count >= self._min_tokens))
        return self._sent(out, "".join(parts))

    def _sent(self, out: RequestOutput, text: str) -> TextDelta:
        self._parts.append(text)  # not `+=` on a str attribute: that copies the whole text
        self.length += len(text)
        return TextDelta(out, text)


async def text_deltas(gen: Generation, text: OutputText) -> AsyncGenerator[TextDelta, None]:
    """gen's deltas with their text, the last one finished. A stop string ends the request as a
    success (finish reason STOP) and the engine stops generating it."""
    async with aclosing(gen.outputs()) as outputs:
        async for out in outputs:
            delta = text.feed(out)
            if text.stopped:
                gen.stopped(delta.out)
            yield delta
            if delta.out.finished:
                return


class _Merged:
    """Deltas of one request joined into one (token lists extended, not copied per delta)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[TopLogprobs] = []
        self.last: RequestOutput | None = None
        self.any_logprobs = self.any_tops = False

    def add(self, out: RequestOutput) -> None:
        self.ids.extend(out.new_token_ids)
        if out.new_logprobs is not None:
            self.any_logprobs = True
            self.logprobs.extend(out.new_logprobs)
        if out.new_top_logprobs is not None:
            self.any_tops = True
            self.tops.extend(out.new_top_logprobs)
        self.last = out

    def output(self) -> RequestOutput:
        assert self.last is not None, "a request ends with a finished delta"
        return dataclasses.replace(
            self.last, new_token_ids=self.ids,
            new_logprobs=self.logprobs if self.any_logprobs else None,
            new_top_logprobs=self.tops if self.any_tops else None)


async def whole(gen: Generation, text: OutputText) -> TextDelta:
    """All of gen's output as one finished delta and its text (stop strings applied)."""
    merged = _Merged()
    if text.has_stops:
        async with aclosing(text_deltas(gen, text)) as deltas:
            async for delta in deltas:
                merged.add(delta.out)
        return TextDelta(merged.output(), text.text)
    async with aclosing(gen.outputs()) as outputs:
        async for out in outputs:
            merged.add(out)
    return text.feed(merged.output())
