"""Model-name patterns and token intervals: the pure rules behind channel pricing.

Nothing here touches the database or imports Django models, so billing, forms and the
gateway can all share one definition of "these two names mean the same model".

Names
-----
`normalise_model_name` turns any spelling of a model name into one canonical form.
It is used both to compare pricing patterns and to look up prices. Applied in order,
and repeated until nothing changes (so the result is always a fixed point):

1. strip surrounding whitespace and lower-case;
2. drop one leading vendor prefix: ``anthropic/``, ``openai/``, ``google/``, ``models/``,
   or a Bedrock ``anthropic.`` with an optional region before it (``us.anthropic.``,
   ``eu.anthropic.``, ``global.anthropic.``, ...);
3. drop a Bedrock version suffix ``-v<N>:<M>`` (``-v1:0``);
4. drop a date suffix: ``-20250929``, ``-2024-08-06`` or ``@20250929``
   (year 19xx/20xx, month 01-12, day 01-31);
5. for names starting with ``claude``: a ``.`` between two digits becomes ``-``
   (``claude-sonnet-4.5`` -> ``claude-sonnet-4-5``). Other names keep their dots,
   because ``gpt-4.1`` and ``gpt-4-1`` are not the same thing.

So ``Claude-Sonnet-4.5``, ``anthropic/claude-sonnet-4-5-20250929``,
``claude-sonnet-4-5@20250929`` and ``us.anthropic.claude-sonnet-4-5-20250929-v1:0`` are all
``claude-sonnet-4-5``; ``gpt-4o-2024-08-06`` is ``gpt-4o``; ``openai/gpt-4.1-mini`` is
``gpt-4.1-mini``.

Patterns
--------
A pattern is a model name, or a prefix followed by one trailing ``*``. A ``*`` anywhere
else is an ordinary character. A wildcard's prefix is normalised by steps 1, 2 and 5 only
(suffix rules make no sense for a prefix), and for claude prefixes a trailing ``<digit>.``
also becomes ``<digit>-`` so that ``claude-3.*`` matches ``claude-3.5-sonnet``. A wildcard
matches a model when the model's normalised name starts with the normalised prefix, so
``anthropic/claude-*`` and ``claude-*`` are the same pattern.

Intervals
---------
An interval ``(min_tokens, max_tokens]`` holds a context size when
``min_tokens < context <= max_tokens``; ``max_tokens=None`` is unbounded. A card's intervals are
tried in their ``sort_order`` (rows without one, and rows with equal ones, in the order given):
token mode takes the first that holds the context, unit modes the first whose tier label matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

__all__ = [
    "HasModels",
    "Interval",
    "Overlap",
    "find_overlaps",
    "interval_errors",
    "is_wildcard",
    "match_card",
    "match_pattern",
    "normalise_model_name",
    "normalise_pattern",
    "pattern_matches",
    "select_interval",
    "select_tier_interval",
    "validate_intervals",
]

WILDCARD = "*"

_VENDOR_PREFIX_RE = re.compile(r"^(?:anthropic/|openai/|google/|models/|(?:[a-z][a-z0-9-]*\.)?anthropic\.)")
_BEDROCK_VERSION_RE = re.compile(r"-v\d+:\d+$")
_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
_DATE_SUFFIX_RE = re.compile(rf"(?:[-@]{_YEAR}{_MONTH}{_DAY}|-{_YEAR}-{_MONTH}-{_DAY})$")
_DOT_BETWEEN_DIGITS_RE = re.compile(r"(?<=\d)\.(?=\d)")
_TRAILING_DIGIT_DOT_RE = re.compile(r"(?<=\d)\.$")


def _strip_vendor(name: str) -> str:
    return _VENDOR_PREFIX_RE.sub("", name, count=1).strip()


def _claude_dots(name: str, *, is_prefix: bool = False) -> str:
    if not name.startswith("claude"):
        return name
    name = _DOT_BETWEEN_DIGITS_RE.sub("-", name)
    if is_prefix:
        name = _TRAILING_DIGIT_DOT_RE.sub("-", name)
    return name


def _normalise_once(name: str) -> str:
    name = _strip_vendor(name.strip().lower())
    name = _BEDROCK_VERSION_RE.sub("", name)
    name = _DATE_SUFFIX_RE.sub("", name)
    return _claude_dots(name)


@lru_cache(maxsize=4096)
def normalise_model_name(name: str) -> str:
    """Return the canonical form of a model name (rules in the module docstring)."""
    while True:
        normalised = _normalise_once(name)
        if normalised == name:
            return normalised
        name = normalised


@lru_cache(maxsize=1024)
def _normalise_prefix(prefix: str) -> str:
    while True:
        normalised = _claude_dots(_strip_vendor(prefix.strip().lower()), is_prefix=True)
        if normalised == prefix:
            return normalised
        prefix = normalised


def is_wildcard(pattern: str) -> bool:
    return pattern.strip().endswith(WILDCARD)


def _wildcard_prefix(pattern: str) -> str:
    return _normalise_prefix(pattern.strip()[: -len(WILDCARD)])


def normalise_pattern(pattern: str) -> str:
    """Canonical form of a pattern: a normalised name, or a normalised prefix plus ``*``."""
    if is_wildcard(pattern):
        return _wildcard_prefix(pattern) + WILDCARD
    return normalise_model_name(pattern)


def pattern_matches(pattern: str, model: str) -> bool:
    """Whether `pattern` (a name or a trailing-``*`` prefix) matches the model name `model`."""
    name = normalise_model_name(model)
    if is_wildcard(pattern):
        return name.startswith(_wildcard_prefix(pattern))
    return name == normalise_model_name(pattern)


# -- overlaps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """Two patterns that would both claim some model; indexes are positions in the input."""

    first: str
    second: str
    first_index: int
    second_index: int
    message: str


def _overlap_message(a: str, b: str) -> str | None:
    a_wild, b_wild = is_wildcard(a), is_wildcard(b)
    if not a_wild and not b_wild:
        if normalise_model_name(a) != normalise_model_name(b):
            return None
        if a.strip() == b.strip():
            return f"`{a.strip()}` is listed twice"
        return f"`{a.strip()}` and `{b.strip()}` are the same model ({normalise_model_name(a)})"
    if a_wild and b_wild:
        pa, pb = _wildcard_prefix(a), _wildcard_prefix(b)
        if pa == pb:
            if a.strip() == b.strip():
                return f"`{a.strip()}` is listed twice"
            return f"`{a.strip()}` and `{b.strip()}` are the same pattern ({pa}{WILDCARD})"
        if pa.startswith(pb) or pb.startswith(pa):
            return f"`{a.strip()}` and `{b.strip()}` overlap"
        return None
    wildcard, name = (a, b) if a_wild else (b, a)
    if pattern_matches(wildcard, name):
        return f"`{wildcard.strip()}` already covers `{name.strip()}`"
    return None


def find_overlaps(patterns: Iterable[str]) -> list[Overlap]:
    """Every pair of patterns that could match the same model, in input order.

    Reports duplicates (after normalisation), a wildcard covering a name, and two wildcards
    where one prefix extends the other. Comparison follows `normalise_model_name`, so it is
    case-insensitive and treats ``.``/``-`` between digits in claude names as equal.
    """
    items = list(patterns)
    overlaps = []
    for i, a in enumerate(items):
        for j in range(i + 1, len(items)):
            b = items[j]
            message = _overlap_message(a, b)
            if message is not None:
                overlaps.append(Overlap(first=a, second=b, first_index=i, second_index=j, message=message))
    return overlaps


# -- picking a card ---------------------------------------------------------------------------------


class HasModels(Protocol):
    """Anything with an ordered list of model patterns, e.g. a `ModelPricing` card."""

    @property
    def models(self) -> Sequence[str]: ...


def match_card[CardT: HasModels](cards: Iterable[CardT], model: str) -> CardT | None:
    """The card that prices `model`, or None.

    An exact (normalised) name in any card beats every wildcard. Among exact names the first
    card wins. Among wildcards the first card wins, and inside a card the first pattern
    in its list; the longest prefix is *not* preferred (overlap validation stops two
    wildcards on one platform from competing in the first place).
    """
    cards = list(cards)
    name = normalise_model_name(model)
    for card in cards:
        if any(not is_wildcard(p) and normalise_model_name(p) == name for p in card.models):
            return card
    for card in cards:
        if any(is_wildcard(p) and name.startswith(_wildcard_prefix(p)) for p in card.models):
            return card
    return None


def match_pattern(patterns: Iterable[str], model: str) -> str | None:
    """The pattern that matches `model`, with the same order rule as `match_card`.

    Used for model-mapping sources: an exact name first, then the first wildcard.
    """
    patterns = list(patterns)
    name = normalise_model_name(model)
    for pattern in patterns:
        if not is_wildcard(pattern) and normalise_model_name(pattern) == name:
            return pattern
    for pattern in patterns:
        if is_wildcard(pattern) and name.startswith(_wildcard_prefix(pattern)):
            return pattern
    return None


# -- token intervals --------------------------------------------------------------------------------


class Interval(Protocol):
    """An interval row: holds context sizes with ``min_tokens < context <= max_tokens``.

    It may also have a ``sort_order`` and a ``tier_label`` (a stored row and a PriceInterval do).
    """

    @property
    def min_tokens(self) -> int: ...

    @property
    def max_tokens(self) -> int | None: ...


def _contains(interval: Interval, context_tokens: int) -> bool:
    if context_tokens <= interval.min_tokens:
        return False
    return interval.max_tokens is None or context_tokens <= interval.max_tokens


def _in_card_order[IntervalT: Interval](intervals: Iterable[IntervalT]) -> list[IntervalT]:
    # sorted() is stable, so rows without a sort order, or with equal ones, keep the given order.
    return sorted(intervals, key=lambda interval: getattr(interval, "sort_order", 0))


def select_interval[IntervalT: Interval](
    intervals: Iterable[IntervalT], context_tokens: int
) -> IntervalT | None:
    """The first interval, in card order, with ``min < context <= max``; None if none holds it."""
    for interval in _in_card_order(intervals):
        if _contains(interval, context_tokens):
            return interval
    return None


def select_tier_interval[IntervalT: Interval](
    intervals: Iterable[IntervalT], tier: str | None
) -> IntervalT | None:
    """The first interval, in card order, whose tier label matches (case- and space-insensitive)."""
    if not tier or not tier.strip():
        return None
    wanted = tier.strip().casefold()
    for interval in _in_card_order(intervals):
        if getattr(interval, "tier_label", "").strip().casefold() == wanted:
            return interval
    return None


def _describe(position: int, interval: Interval) -> str:
    upper = "∞" if interval.max_tokens is None else f"{interval.max_tokens:,}"
    return f"interval {position} ({interval.min_tokens:,}–{upper})"


def validate_intervals(intervals: Iterable[Interval]) -> list[str]:
    """Errors for a card's token intervals, in the order given; an empty list means valid.

    Rules: min >= 0; max > min; sorted by min; no overlap, where (a, b] and (c, d] overlap
    when c < b; only the last interval may be unbounded. Gaps are allowed: a context
    size in a gap is billed at the card's flat prices.
    """
    return [message for _, message in interval_errors(intervals)]


def interval_errors(intervals: Iterable[Interval]) -> list[tuple[int, str]]:
    """`validate_intervals` with the 0-based position of the row each error belongs to."""
    rows = list(intervals)
    errors = []
    for position, interval in enumerate(rows, start=1):
        label = _describe(position, interval)
        if interval.min_tokens < 0:
            errors.append((position - 1, f"{label.capitalize()}: min tokens must be 0 or more."))
        if interval.max_tokens is not None and interval.max_tokens <= interval.min_tokens:
            errors.append(
                (
                    position - 1,
                    f"{label.capitalize()}: max tokens ({interval.max_tokens:,}) must be greater "
                    f"than min tokens ({interval.min_tokens:,}).",
                )
            )
        if interval.max_tokens is None and position < len(rows):
            errors.append(
                (position - 1, f"{label.capitalize()} has no max: only the last interval may be unbounded.")
            )
    for position, (previous, current) in enumerate(zip(rows, rows[1:], strict=False), start=2):
        if current.min_tokens < previous.min_tokens:
            errors.append(
                (
                    position - 1,
                    f"{_describe(position, current).capitalize()} starts below "
                    f"{_describe(position - 1, previous)}: sort intervals by min tokens.",
                )
            )
        elif previous.max_tokens is not None and current.min_tokens < previous.max_tokens:
            errors.append(
                (
                    position - 1,
                    f"{_describe(position, current).capitalize()} overlaps "
                    f"{_describe(position - 1, previous)}: it must start at {previous.max_tokens:,} or above.",
                )
            )
    return errors
