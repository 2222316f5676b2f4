"""The channel rules that read nothing and write nothing (docs/pricing.md#card-validation).

The form and the channel services both check cards and mapping rows with these, so each problem
is found once and shown next to the card, interval row or mapping row (and field) that causes it.
`CardSpec` is a card as typed (an empty price stays None); its intervals are PriceIntervals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.core.exceptions import ValidationError

from accounts.models import Platform
from channels.models import Channel
from channels.patterns import find_overlaps, interval_errors, is_wildcard
from channels.pricing import UNIT_MODES, BillingMode, PriceInterval

MAX_MODELS_PER_CARD = 100
MAX_PATTERN_LENGTH = 200
TOKEN_PRICES = ("input_price", "output_price", "cache_write_price", "cache_read_price")
MULTIPLIERS = ("input_multiplier", "output_multiplier", "cache_write_multiplier", "cache_read_multiplier")
CARD_PRICES = (
    "input_price",
    "output_price",
    "cache_write_price",
    "cache_write_1h_price",
    "cache_read_price",
    "image_output_price",
)


@dataclass(frozen=True)
class CardSpec:
    """One pricing card to save. Prices are USD per token; `per_request_price` USD per unit."""

    platform: str
    models: tuple[str, ...]
    billing_mode: str = BillingMode.TOKEN
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    cache_write_price: Decimal | None = None
    cache_write_1h_price: Decimal | None = None
    cache_read_price: Decimal | None = None
    image_output_price: Decimal | None = None
    per_request_price: Decimal | None = None
    intervals: tuple[PriceInterval, ...] = ()  # prices as typed: empty stays None


@dataclass(frozen=True)
class MappingRule:
    platform: str
    source: str
    target: str


@dataclass(frozen=True)
class Problem:
    """A broken rule, with where it belongs: a card (and maybe one of its intervals) or a mapping row."""

    message: str
    card: int | None = None
    interval: int | None = None
    rule: int | None = None
    field: str | None = None


class ChannelInvalid(ValidationError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__([problem.message for problem in problems])


def split_models(text: str) -> list[str]:
    """Model names typed into a card, one per comma or line, blanks dropped."""
    return [name.strip() for line in text.splitlines() for name in line.split(",") if name.strip()]


def pricing_problems(cards: Sequence[CardSpec]) -> list[Problem]:
    """Every rule these cards break (docs/pricing.md#card-validation), the whole channel's, in order."""
    problems = []
    for index, card in enumerate(cards):
        problems += card_problems(index, card)
    problems += pattern_overlap_problems([(card.platform, card.models) for card in cards])
    return problems


def card_problems(index: int, card: CardSpec) -> list[Problem]:
    """The rules one card must follow on its own: its model list, its prices, its intervals."""
    return (
        _model_list_problems(index, card)
        + _card_price_problems(index, card)
        + _interval_problems(index, card)
    )


def pattern_overlap_problems(
    cards: Sequence[tuple[str, Sequence[str]]], *, labels: Sequence[str] | None = None
) -> list[Problem]:
    """Overlapping model patterns across all cards of each platform, reported on the later card.

    `cards` are (platform, patterns) pairs; `labels` name them in messages (default "card 1"…).
    """
    by_platform: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for index, (platform, models) in enumerate(cards):
        by_platform[platform] += [(index, model) for model in models]
    problems = []
    for entries in by_platform.values():
        for overlap in find_overlaps(model for _, model in entries):
            first_card, second_card = entries[overlap.first_index][0], entries[overlap.second_index][0]
            label = labels[first_card] if labels else f"card {first_card + 1}"
            where = "" if first_card == second_card else f" (in {label})"
            problems.append(Problem(f"{overlap.message}{where}.", card=second_card, field="models"))
    return problems


def _model_list_problems(index: int, card: CardSpec) -> list[Problem]:
    problems = []
    if not card.models:
        problems.append(Problem("List at least one model.", card=index, field="models"))
    elif len(card.models) > MAX_MODELS_PER_CARD:
        problems.append(
            Problem(
                f"A card holds at most {MAX_MODELS_PER_CARD} models; this one has {len(card.models)}.",
                card=index,
                field="models",
            )
        )
    for model in card.models:
        if len(model) > MAX_PATTERN_LENGTH:
            problems.append(
                Problem(
                    f"`{model[:40]}…` is longer than {MAX_PATTERN_LENGTH} characters.",
                    card=index,
                    field="models",
                )
            )
    return problems


def _card_price_problems(index: int, card: CardSpec) -> list[Problem]:
    problems = [
        Problem("Prices cannot be negative.", card=index, field=name)
        for name in (*CARD_PRICES, "per_request_price")
        if getattr(card, name) is not None and getattr(card, name) < 0
    ]
    if card.billing_mode == BillingMode.TOKEN:
        for name, label in (("input_price", "an input"), ("output_price", "an output")):
            if getattr(card, name) is None:
                problems.append(
                    Problem(f"A per-token card needs {label} price (0 is allowed).", card=index, field=name)
                )
    elif card.per_request_price is None and not card.intervals:
        unit = "image" if card.billing_mode == BillingMode.IMAGE else "request"
        problems.append(
            Problem(
                f"A per-{unit} card needs a per-{unit} price or at least one interval.",
                card=index,
                field="per_request_price",
            )
        )
    return problems


def _interval_problems(index: int, card: CardSpec) -> list[Problem]:
    problems = []
    unit_mode = card.billing_mode in UNIT_MODES
    seen_labels: dict[str, int] = {}
    for row, interval in enumerate(card.intervals):
        # (A PriceInterval cannot hold a negative price or multiplier: it refuses one when built.)
        values = [getattr(interval, name) for name in (*TOKEN_PRICES, *MULTIPLIERS, "per_request_price")]
        if unit_mode:
            label = interval.tier_label.strip()
            if not label:
                problems.append(
                    Problem(
                        "Give this tier a label (e.g. 1K, 2K, 4K, HD).",
                        card=index,
                        interval=row,
                        field="tier_label",
                    )
                )
            elif label.casefold() in seen_labels:
                problems.append(
                    Problem(
                        f"Tier `{label}` is already interval {seen_labels[label.casefold()] + 1}.",
                        card=index,
                        interval=row,
                        field="tier_label",
                    )
                )
            else:
                seen_labels[label.casefold()] = row
            if interval.per_request_price is None:
                problems.append(
                    Problem(
                        f"Interval {row + 1} has no price: enter its per-unit price.",
                        card=index,
                        interval=row,
                        field="per_request_price",
                    )
                )
        elif all(value is None for value in values):
            problems.append(
                Problem(
                    f"Interval {row + 1} has no price: enter at least one price or multiplier.",
                    card=index,
                    interval=row,
                )
            )
    if not unit_mode:
        problems += [
            Problem(message, card=index, interval=row) for row, message in interval_errors(card.intervals)
        ]
    else:
        # Tiers are picked by label, but a stored row still keeps max above min (a CHECK constraint).
        problems += [
            Problem(
                f"Interval {row + 1}: max tokens must be greater than min tokens, or empty.",
                card=index,
                interval=row,
                field="max_tokens",
            )
            for row, interval in enumerate(card.intervals)
            if interval.max_tokens is not None and interval.max_tokens <= interval.min_tokens
        ]
    return problems


def mapping_problems(rules: Sequence[MappingRule]) -> list[Problem]:
    """Mapping rows with a missing target, a pattern target, or a source overlapping another's."""
    problems = []
    by_platform: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row, rule in enumerate(rules):
        if not rule.source.strip():
            problems.append(Problem("Enter the model name (or prefix*) to map.", rule=row, field="source"))
        else:
            by_platform[rule.platform].append((row, rule.source))
        if not rule.target.strip():
            problems.append(Problem("Enter the model to send instead.", rule=row, field="target"))
        elif is_wildcard(rule.target):
            problems.append(
                Problem("The target must be one model name, not a pattern.", rule=row, field="target")
            )
    for entries in by_platform.values():
        for overlap in find_overlaps(source for _, source in entries):
            problems.append(
                Problem(f"{overlap.message}.", rule=entries[overlap.second_index][0], field="source")
            )
    return problems


def mapping_as_json(rules: Sequence[MappingRule]) -> dict[str, dict[str, str]]:
    mapping: dict[str, dict[str, str]] = {}
    for rule in rules:
        mapping.setdefault(rule.platform, {})[rule.source.strip()] = rule.target.strip()
    return mapping


def mapping_rules(channel: Channel) -> list[MappingRule]:
    """The channel's mapping as rows, by platform order then source."""
    order = {value: position for position, value in enumerate(Platform.values)}
    mapping = channel.mapping
    return [
        MappingRule(platform=platform, source=source, target=target)
        for platform in sorted(mapping, key=lambda p: (order.get(p, len(order)), p))
        for source, target in sorted(mapping[platform].items())
    ]
