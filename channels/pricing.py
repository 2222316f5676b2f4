"""The price vocabulary, owned by channels because channels own prices.

Pure types and rules, no database: a `Price` is one pricing card (a channel's `ModelPricing` or a
catalog default) with its `PriceInterval` rows, in USD per token; a `ChannelCard` is a channel
card's model patterns with its `Price`. Billing computes costs from these (billing/cost.py), the
channel snapshot carries them, and the channel services save their rows from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
BILLING_MODES: frozenset[str] = frozenset({"token", "per_request", "image"})


def money_in(name: str, value: object, *, optional: bool = False) -> Decimal | None:
    # Floats are refused rather than converted: Decimal(0.1) is not 0.1, and a price that is
    # silently off in the 17th digit would be multiplied by millions of tokens.
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal, got {type(value).__name__}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{name} must be a finite number, got {amount}")
    if amount < 0:
        raise ValueError(f"{name} must not be negative, got {amount}")
    return amount


def count_in(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _coerce_money(obj: object, names: tuple[str, ...], *, optional: bool) -> None:
    for name in names:
        # Frozen dataclasses: __post_init__ is the one place allowed to normalise fields.
        object.__setattr__(obj, name, money_in(name, getattr(obj, name), optional=optional))


@dataclass(frozen=True)
class PriceInterval:
    """One row of a card's interval table (docs/entities.md#pricing-intervals). Prices are USD per token.

    Token mode matches by context size (`min_tokens < context <= max_tokens`); per-request and
    image modes match by `tier_label`. A multiplier scales the card's base price and is used only
    when the explicit price next to it is empty.
    """

    min_tokens: int = 0
    max_tokens: int | None = None
    tier_label: str = ""
    input_price: Decimal | None = None
    output_price: Decimal | None = None
    cache_write_price: Decimal | None = None
    cache_read_price: Decimal | None = None
    input_multiplier: Decimal | None = None
    output_multiplier: Decimal | None = None
    cache_write_multiplier: Decimal | None = None
    cache_read_multiplier: Decimal | None = None
    per_request_price: Decimal | None = None
    sort_order: int = 0

    def __post_init__(self) -> None:
        count_in("min_tokens", self.min_tokens)
        if self.max_tokens is not None:
            count_in("max_tokens", self.max_tokens)
        _coerce_money(
            self,
            (
                "input_price",
                "output_price",
                "cache_write_price",
                "cache_read_price",
                "input_multiplier",
                "output_multiplier",
                "cache_write_multiplier",
                "cache_read_multiplier",
                "per_request_price",
            ),
            optional=True,
        )


@dataclass(frozen=True)
class Price:
    """A pricing card (channel ModelPricing or catalog default). Prices are USD per token."""

    input_price: Decimal = ZERO
    output_price: Decimal = ZERO
    cache_write_price: Decimal = ZERO  # 5-minute cache writes
    cache_write_1h_price: Decimal | None = None  # None = same as cache_write_price
    cache_read_price: Decimal = ZERO
    image_output_price: Decimal = ZERO
    per_request_price: Decimal | None = None
    billing_mode: str = "token"
    intervals: tuple[PriceInterval, ...] = ()

    def __post_init__(self) -> None:
        if self.billing_mode not in BILLING_MODES:
            raise ValueError(
                f"billing_mode must be one of {sorted(BILLING_MODES)}, got {self.billing_mode!r}"
            )
        _coerce_money(
            self,
            ("input_price", "output_price", "cache_write_price", "cache_read_price", "image_output_price"),
            optional=False,
        )
        _coerce_money(self, ("cache_write_1h_price", "per_request_price"), optional=True)
        # Accept a list from callers but keep the card hashable and immutable.
        object.__setattr__(self, "intervals", tuple(self.intervals))
        for interval in self.intervals:
            if not isinstance(interval, PriceInterval):
                raise TypeError(f"intervals must hold PriceInterval, got {type(interval).__name__}")


@dataclass(frozen=True)
class ChannelCard:
    """A channel pricing card as pricing uses it: its model patterns, in order, and its Price."""

    models: tuple[str, ...]
    price: Price


def first_set(*values: Decimal | None) -> Decimal | None:
    """The first price that is set: how an empty price falls back to another."""
    return next((value for value in values if value is not None), None)
