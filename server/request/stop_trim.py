"""Stop strings cut out of OpenAI output text, streaming included (vLLM's behaviour).

The scheduler finishes a request on the token whose text completes a stop string; that token's
text (and anything after the stop string in it) still reaches the server. `StopTrimmer` cuts the
text at the first stop string (or just after it with `include_stop_str_in_output`). While
streaming, a tail of the text that could be the start of a stop string is held back until the
next text shows it is not one, and released when the request ends without a stop.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopTrimmer:
    """Feed text deltas in order; get back what may be sent now."""

    def __init__(self, stops: Sequence[str], include_stop: bool = False) -> None:
        self._stops = tuple(s for s in stops if s)
        self._include = include_stop
        self._held = ""  # tail that is a prefix of some stop string
        self.hit = False  # a stop string was found: everything after it is dropped

    def feed(self, text: str, final: bool = False) -> str:
        """The part of held + text that can be sent; `final` releases the held tail."""
        if self.hit:
            return ""
        buf = self._held + text
        cut = self._first_stop(buf)
        if cut is not None:
            self.hit, self._held = True, ""
            return buf[:cut]
        keep = 0 if final else self._partial_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def _first_stop(self, buf: str) -> int | None:
        """Where the output ends for the earliest stop string in buf (None: no stop in it)."""
        best: tuple[int, int] | None = None
        for s in self._stops:
            i = buf.find(s)
            if i >= 0 and (best is None or (i, len(s)) < best):
                best = (i, len(s))
        if best is None:
            return None
        return best[0] + best[1] if self._include else best[0]

    def _partial_len(self, buf: str) -> int:
        """Length of the longest tail of buf that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:n]):
                    longest = n
                    break
        return longest
