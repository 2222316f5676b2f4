"""Model-name normalisation, pattern overlap, card matching and token intervals (pure, no DB)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from channels.patterns import (
    find_overlaps,
    match_card,
    match_pattern,
    normalise_model_name,
    normalise_pattern,
    pattern_matches,
    select_interval,
    validate_intervals,
)


@dataclass(frozen=True)
class Card:
    name: str
    models: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Iv:
    min_tokens: int
    max_tokens: int | None


# -- normalise_model_name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Claude-Sonnet-4.5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("  claude-sonnet-4-5  ", "claude-sonnet-4-5"),
        ("anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "claude-3-5-sonnet"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        ("claude-3.5-sonnet", "claude-3-5-sonnet"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("GPT-4.1", "gpt-4.1"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ],
)
def test_it_normalises_model_names(name, expected):
    assert normalise_model_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "gpt-4-0613",  # not a full date
        "gpt-4o-20251399",  # month 13 is not a date
        "text-embedding-v1",  # no Bedrock ":0"
        "gemini-1.5-pro",  # not claude: dots stay
    ],
)
def test_it_leaves_look_alikes_alone(name):
    assert normalise_model_name(name) == name


@given(st.text(max_size=40))
def test_normalise_is_idempotent_on_any_text(name):
    once = normalise_model_name(name)
    assert normalise_model_name(once) == once


model_piece = st.sampled_from(
    [
        "claude",
        "sonnet",
        "opus",
        "4",
        "4.5",
        "3.5",
        "gpt",
        "4o",
        "mini",
        "20250929",
        "2024-08-06",
        "v1:0",
        "gemini",
        "2.5",
        "pro",
        "Claude",
        "",
    ]
)
model_names = st.builds(
    lambda prefix, parts, sep: prefix + sep.join(parts),
    st.sampled_from(["", "anthropic/", "openai/", "us.anthropic.", "models/", " "]),
    st.lists(model_piece, min_size=1, max_size=5),
    st.sampled_from(["-", ".", "@"]),
)


@given(model_names)
def test_normalise_is_idempotent_on_model_like_names(name):
    once = normalise_model_name(name)
    assert normalise_model_name(once) == once


# -- pattern_matches --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "model"),
    [
        ("claude-sonnet-4-5", "Claude-Sonnet-4.5"),
        ("claude-sonnet-4.5", "anthropic/claude-sonnet-4-5-20250929"),
        ("claude-*", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ("anthropic/claude-sonnet-*", "claude-sonnet-4-5"),
        ("Claude-3.*", "claude-3.5-sonnet"),
        ("claude-sonnet-4.5*", "claude-sonnet-4-5-20250929"),
        ("gpt-4.*", "gpt-4.1-mini"),
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("*", "anything-at-all"),
    ],
)
def test_it_matches(pattern, model):
    assert pattern_matches(pattern, model)


@pytest.mark.parametrize(
    ("pattern", "model"),
    [
        ("gpt-4o", "gpt-4o-mini"),
        ("gpt-4-*", "gpt-4.1"),  # dots only fold for claude
        ("gpt-4-1", "gpt-4.1"),
        ("claude-opus-*", "claude-sonnet-4-5"),
        ("claude-sonnet-4", "claude-sonnet-4-5"),
    ],
)
def test_it_does_not_match(pattern, model):
    assert not pattern_matches(pattern, model)


def test_it_normalises_patterns():
    assert normalise_pattern("Anthropic/Claude-Sonnet-4.*") == "claude-sonnet-4-*"
    assert normalise_pattern("claude-sonnet-4.5-20250929") == "claude-sonnet-4-5"
    assert normalise_pattern("gpt-4.1*") == "gpt-4.1*"


# -- find_overlaps ----------------------------------------------------------------------------------


def messages(patterns):
    return [o.message for o in find_overlaps(patterns)]


def test_it_reports_a_wildcard_covering_a_name():
    assert messages(["claude-*", "claude-sonnet-4"]) == ["`claude-*` already covers `claude-sonnet-4`"]
    assert messages(["claude-sonnet-4", "claude-*"]) == ["`claude-*` already covers `claude-sonnet-4`"]


def test_it_reports_a_duplicate():
    assert messages(["gpt-4o", "gpt-4o"]) == ["`gpt-4o` is listed twice"]


def test_it_reports_spellings_of_the_same_model():
    assert messages(["claude-sonnet-4.5", "Claude-Sonnet-4-5"]) == [
        "`claude-sonnet-4.5` and `Claude-Sonnet-4-5` are the same model (claude-sonnet-4-5)"
    ]


def test_it_reports_nested_wildcards():
    assert messages(["claude-*", "claude-sonnet-*"]) == ["`claude-*` and `claude-sonnet-*` overlap"]


def test_it_reports_the_same_wildcard_spelled_twice():
    assert messages(["claude-3.*", "claude-3-*"]) == [
        "`claude-3.*` and `claude-3-*` are the same pattern (claude-3-*)"
    ]


def test_it_names_positions_of_both_patterns():
    (overlap,) = find_overlaps(["gpt-4o", "claude-opus-4", "claude-*"])
    assert (overlap.first, overlap.second) == ("claude-opus-4", "claude-*")
    assert (overlap.first_index, overlap.second_index) == (1, 2)


def test_it_accepts_disjoint_patterns():
    assert find_overlaps(["claude-sonnet-*", "claude-opus-*", "gpt-4o", "gpt-4o-mini", "gpt-4.1"]) == []


patterns = st.one_of(model_names, model_names.map(lambda name: name + "*"))


def unordered_pairs(pattern_list):
    return Counter(tuple(sorted((o.first, o.second))) for o in find_overlaps(pattern_list))


@given(
    st.lists(patterns, max_size=6).flatmap(lambda items: st.tuples(st.just(items), st.permutations(items)))
)
def test_overlaps_do_not_depend_on_input_order(lists):
    original, shuffled = lists
    assert unordered_pairs(original) == unordered_pairs(shuffled)


@given(model_names, st.integers(min_value=0, max_value=40))
def test_a_wildcard_overlaps_every_name_it_matches(name, cut):
    assume("*" not in name)
    wildcard = normalise_model_name(name)[:cut] + "*"
    assume(pattern_matches(wildcard, name))
    assert len(find_overlaps([wildcard, name])) == 1
    assert len(find_overlaps([name, wildcard])) == 1


def patterns_for(model):
    """Patterns likely to match `model`: its own spellings and wildcards cut from it."""
    name = normalise_model_name(model)
    return st.one_of(
        st.sampled_from([model, name, name.upper()]),
        st.integers(min_value=0, max_value=len(name)).map(lambda cut: name[:cut] + "*"),
    )


@given(model_names.flatmap(lambda model: st.tuples(st.just(model), patterns_for(model), patterns_for(model))))
def test_two_patterns_matching_one_model_overlap(case):
    model, first, second = case
    assume("*" not in model)
    assume(pattern_matches(first, model) and pattern_matches(second, model))
    assert len(find_overlaps([first, second])) == 1


# -- match_card / match_pattern ---------------------------------------------------------------------


def test_an_exact_name_beats_an_earlier_wildcard():
    wildcard = Card("all claude", ("claude-*",))
    exact = Card("sonnet", ("claude-opus-4", "claude-sonnet-4-5"))
    for model in ("claude-sonnet-4-5", "Claude-Sonnet-4.5", "anthropic/claude-sonnet-4-5-20250929"):
        assert match_card([wildcard, exact], model) is exact
    assert match_card([wildcard, exact], "claude-haiku-4-5") is wildcard


def test_the_first_card_wins_among_wildcards():
    broad = Card("broad", ("gpt-*",))
    narrow = Card("narrow", ("o3", "gpt-4o*"))
    assert match_card([broad, narrow], "gpt-4o-mini") is broad
    assert match_card([narrow, broad], "gpt-4o-mini") is narrow


def test_it_finds_no_card():
    assert match_card([Card("c", ("claude-*",))], "gpt-4o") is None
    assert match_card([], "gpt-4o") is None


def test_it_matches_mapping_sources():
    sources = ["claude-*", "claude-sonnet-4.5", "gpt-4o*"]
    assert match_pattern(sources, "claude-sonnet-4-5-20250929") == "claude-sonnet-4.5"
    assert match_pattern(sources, "claude-opus-4") == "claude-*"
    assert match_pattern(sources, "gemini-2.5-pro") is None


# -- intervals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "found"),
    [(1000, False), (1001, True), (2000, True), (2001, False), (0, False)],
)
def test_an_interval_holds_min_exclusive_max_inclusive(context, found):
    interval = Iv(1000, 2000)
    assert (select_interval([interval], context) is interval) is found


def test_it_picks_the_long_context_interval():
    short, long = Iv(0, 200_000), Iv(200_000, None)
    assert select_interval([short, long], 0) is None
    assert select_interval([short, long], 1) is short
    assert select_interval([short, long], 200_000) is short
    assert select_interval([short, long], 200_001) is long
    assert select_interval([short, long], 10**12) is long


def test_the_first_interval_in_the_given_order_wins():
    a, b = Iv(0, 100), Iv(50, 150)
    assert select_interval([b, a], 60) is b


def test_valid_intervals_pass():
    assert validate_intervals([]) == []
    assert validate_intervals([Iv(0, 100), Iv(100, 200), Iv(500, None)]) == []


def test_it_rejects_overlapping_intervals():
    assert validate_intervals([Iv(0, 200), Iv(100, 300)]) == [
        "Interval 2 (100–300) overlaps interval 1 (0–200): it must start at 200 or above."
    ]
    assert validate_intervals([Iv(0, 200), Iv(0, 300)])


def test_it_rejects_unsorted_intervals():
    assert validate_intervals([Iv(100, 200), Iv(0, 50)]) == [
        "Interval 2 (0–50) starts below interval 1 (100–200): sort intervals by min tokens."
    ]


def test_it_rejects_an_unbounded_interval_that_is_not_last():
    assert validate_intervals([Iv(0, None), Iv(100, 200)]) == [
        "Interval 1 (0–∞) has no max: only the last interval may be unbounded."
    ]


def test_it_rejects_bad_bounds():
    assert validate_intervals([Iv(-1, 10)]) == ["Interval 1 (-1–10): min tokens must be 0 or more."]
    assert validate_intervals([Iv(10, 10)]) == [
        "Interval 1 (10–10): max tokens (10) must be greater than min tokens (10)."
    ]


intervals = st.builds(
    Iv,
    st.integers(min_value=-5, max_value=60),
    st.one_of(st.none(), st.integers(min_value=-5, max_value=60)),
)


def holds(interval, context):
    return interval.min_tokens < context and (interval.max_tokens is None or context <= interval.max_tokens)


@given(st.lists(intervals, max_size=6), st.integers(min_value=-5, max_value=70))
def test_select_interval_returns_the_first_that_holds_the_context(rows, context):
    chosen = select_interval(rows, context)
    holding = [row for row in rows if holds(row, context)]
    if chosen is None:
        assert holding == []
    else:
        assert holds(chosen, context)
        assert chosen is holding[0]


@given(st.lists(intervals, max_size=6))
def test_valid_intervals_never_share_a_context(rows):
    assume(validate_intervals(rows) == [])
    for context in range(-5, 70):
        assert sum(holds(row, context) for row in rows) <= 1


@given(
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=6, unique=True), st.booleans()
)
def test_boundaries_in_increasing_order_make_valid_intervals(bounds, unbounded_tail):
    bounds = sorted(bounds)
    rows = [Iv(low, high) for low, high in zip([0, *bounds], bounds, strict=False) if low < high]
    if unbounded_tail:
        rows.append(Iv(bounds[-1], None))
    assert validate_intervals(rows) == []
