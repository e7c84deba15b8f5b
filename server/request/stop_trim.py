"""Stop strings found in a request's output text as it grows, and the text cut at them.

The one place stop strings are matched (server/request/text.py feeds it the detokeniser's text,
token by token). A stop string counts when it ends in text fed while `armed` (the scheduler's
`min_tokens`: not before that many tokens), so an occurrence that ended earlier never fires.
What the client gets depends on the mode:
- EXCLUDE (OpenAI): the text before the stop string;
- INCLUDE (vLLM's `include_stop_str_in_output`): the text through the stop string;
- TOKEN (Triton, as TensorRT-LLM): all of the text of the token that completed the stop string.
In EXCLUDE/INCLUDE a tail that could be the start of a stop string is held back until the next
text shows it is not one (released at the end); TOKEN holds nothing back.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class StopMode(enum.Enum):
    EXCLUDE = "exclude"
    INCLUDE = "include"
    TOKEN = "token"


class StopTrimmer:
    """Feed text deltas in order; get back what may be sent now."""

    def __init__(self, stops: Sequence[str], mode: StopMode = StopMode.EXCLUDE) -> None:
        self._stops = tuple(s for s in stops if s)
        self._mode = mode
        self._keep = max((len(s) for s in self._stops), default=1) - 1  # chars of context kept
        self._tail = ""  # the last `_keep` characters fed (a stop string may continue them)
        self._held = 0  # characters at the end of _tail not sent yet
        self.hit = False  # a stop string was found: everything after it is dropped

    def feed(self, text: str, final: bool = False, armed: bool = True) -> str:
        """The part of the held tail + text that can be sent; `final` releases the held tail."""
        if self.hit:
            return ""
        buf = self._tail + text
        start = len(self._tail) - self._held  # first character of buf not sent yet
        match = self._first_stop(buf, len(self._tail) if armed else len(buf))
        if match is not None:
            self.hit, self._tail, self._held = True, "", 0
            cut = {StopMode.EXCLUDE: match[0], StopMode.INCLUDE: match[1],
                   StopMode.TOKEN: len(buf)}[self._mode]
            return buf[start:max(cut, start)]
        hold = 0 if final or self._mode is StopMode.TOKEN else self._partial_len(buf)
        hold = min(hold, len(buf) - start)
        self._tail = buf[max(0, len(buf) - self._keep):]
        self._held = hold
        return buf[start:len(buf) - hold]

    def _first_stop(self, buf: str, floor: int) -> tuple[int, int] | None:
        """(start, end) of the earliest stop string in buf that ends after `floor`."""
        best: tuple[int, int] | None = None
        for s in self._stops:
            i = buf.find(s, max(0, floor - len(s) + 1))
            if i >= 0 and (best is None or (i, i + len(s)) < best):
                best = (i, i + len(s))
        return best

    def _partial_len(self, buf: str) -> int:
        """Length of the longest tail of buf that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:n]):
                    longest = n
                    break
        return longest
