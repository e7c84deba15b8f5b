"""StopTrimmer: what may be sent of each text delta when stop strings are set."""

from __future__ import annotations

from server.request.stop_trim import StopTrimmer


def feed_all(trim: StopTrimmer, parts: list[str]) -> list[str]:
    out = [trim.feed(p) for p in parts[:-1]]
    return [*out, trim.feed(parts[-1], final=True)]


def test_stop_across_deltas_cut_and_rest_dropped() -> None:
    trim = StopTrimmer(["</s>"])
    assert feed_all(trim, ["ab<", "/", "s> tail", "more"]) == ["ab", "", "", ""]
    assert trim.hit


def test_include_stop_keeps_it_and_drops_the_rest() -> None:
    trim = StopTrimmer(["END"], include_stop=True)
    assert "".join(feed_all(trim, ["xE", "NDy"])) == "xEND"


def test_false_prefix_released_when_it_breaks_or_at_the_end() -> None:
    trim = StopTrimmer(["abc"])
    assert feed_all(trim, ["xa", "b", "d", "ab"]) == ["x", "", "abd", "ab"]
    assert not trim.hit


def test_earliest_stop_wins_and_overlapping_prefixes() -> None:
    assert "".join(feed_all(StopTrimmer(["bc", "abcd"]), ["a", "bcd"])) == ""  # abcd starts first
    assert "".join(feed_all(StopTrimmer(["aab"]), ["a", "a", "a", "b"])) == "a"
