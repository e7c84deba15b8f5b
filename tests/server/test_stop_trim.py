"""StopTrimmer: what may be sent of each text delta when stop strings are set."""

from __future__ import annotations

from server.request.stop_trim import StopMode, StopTrimmer


def feed_all(trim: StopTrimmer, parts: list[str]) -> list[str]:
    out = [trim.feed(p) for p in parts[:-1]]
    return [*out, trim.feed(parts[-1], final=True)]


def test_stop_across_deltas_cut_and_rest_dropped() -> None:
    trim = StopTrimmer(["</s>"])
    assert feed_all(trim, ["ab<", "/", "s> tail", "more"]) == ["ab", "", "", ""]
    assert trim.hit


def test_include_stop_keeps_it_and_drops_the_rest() -> None:
    trim = StopTrimmer(["END"], StopMode.INCLUDE)
    assert "".join(feed_all(trim, ["xE", "NDy"])) == "xEND"


def test_false_prefix_released_when_it_breaks_or_at_the_end() -> None:
    trim = StopTrimmer(["abc"])
    assert feed_all(trim, ["xa", "b", "d", "ab"]) == ["x", "", "abd", "ab"]
    assert not trim.hit


def test_earliest_stop_wins_and_overlapping_prefixes() -> None:
    assert "".join(feed_all(StopTrimmer(["bc", "abcd"]), ["a", "bcd"])) == ""  # abcd starts first
    assert "".join(feed_all(StopTrimmer(["aab"]), ["a", "a", "a", "b"])) == "a"


def test_token_mode_sends_at_once_and_keeps_the_whole_last_text() -> None:
    """Triton's: nothing held back; the text that completed the stop string is sent whole."""
    trim = StopTrimmer(["END"], StopMode.TOKEN)
    assert [trim.feed("xE"), trim.feed("NDy"), trim.feed("z")] == ["xE", "NDy", ""]
    assert trim.hit


def test_unarmed_text_never_matches_alone_but_can_start_a_match() -> None:
    """Before min_tokens a stop string does not count; one that ends once armed does, even
    if it started earlier (the scheduler's old rule: the newest token completes it)."""
    trim = StopTrimmer(["ab"])
    assert trim.feed("xab", armed=False) == "xab" and not trim.hit
    assert trim.feed("a", armed=False) == ""  # may start "ab"
    assert trim.feed("b") == "" and trim.hit


def test_an_old_occurrence_inside_a_held_tail_does_not_fire() -> None:
    """A short stop string inside the held start of a longer one, fed unarmed: only a stop
    string ending in armed text counts."""
    trim = StopTrimmer(["b", "abc"])
    assert trim.feed("ab", armed=False) == ""
    assert trim.feed("c") == "" and trim.hit  # "abc" completed; cut before it
    trim = StopTrimmer(["b", "abc"])
    assert trim.feed("ab", armed=False) == ""
    assert trim.feed("x", final=True) == "abx" and not trim.hit
