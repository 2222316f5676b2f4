"""The price vocabulary, owned by channels because channels own prices. Each thing once:

- the choices: `BillingMode`, `BillingModelSource`, `PricingSource`;
- the pure types: a `Price` is one pricing card (a channel's `ModelPricing` or a catalog default)
  with its `PriceInterval` rows, in USD per token; a `ChannelCard` is a channel card's model
  patterns with its `Price`;
- the lookup rule, `price_lookup` (docs/pricing.md#price-lookup), and the catalog's defaults as a
  `Price` (docs/pricing.md#catalog-defaults).

Interval and tier selection are `select_interval` / `select_tier_interval` in channels.patterns,
next to the name rules. No database here: billing computes costs from these (billing/cost.py), the
channel snapshot carries them, and the channel services save their rows from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from django.db import models

from channels.catalog import CatalogPrice, lookup_default_prices
from channels.patterns import match_card

ZERO = Decimal(0)


class BillingMode(models.TextChoices):
    TOKEN = "token", "Per token"
    PER_REQUEST = "per_request", "Per request"
    IMAGE = "image", "Per image"


class BillingModelSource(models.TextChoices):
    """Which model name is priced (docs/pricing.md#billing-model)."""

    CHANNEL_MAPPED = "channel_mapped", "Channel-mapped model"
    REQUESTED = "requested", "Requested model"
    UPSTREAM = "upstream", "Upstream model"


class PricingSource(models.TextChoices):
    """Where a request's price came from (docs/pricing.md#price-lookup)."""

    CHANNEL = "channel", "Channel"
    CATALOG = "catalog", "Catalog"
    MISSING = "missing", "Missing"


BILLING_MODES: frozenset[str] = frozenset(BillingMode.values)
UNIT_MODES: tuple[str, ...] = (BillingMode.PER_REQUEST, BillingMode.IMAGE)
PRICING_SOURCES: frozenset[str] = frozenset(PricingSource.values)


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
    billing_mode: str = BillingMode.TOKEN.value
    intervals: tuple[PriceInterval, ...] = ()

    def __post_init__(self) -> None:
        if self.billing_mode not in BILLING_MODES:
            raise ValueError(
                f"billing_mode must be one of {sorted(BILLING_MODES)}, got {self.billing_mode!r}"
            )
        object.__setattr__(self, "billing_mode", str(self.billing_mode))  # a plain str, not a choice
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


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """What prices a request: a channel card, a catalog default, or nothing ("missing")."""

    price: Price | None
    source: str  # a PricingSource value
    card: ChannelCard | None = None  # for source "channel"
    catalog: CatalogPrice | None = None  # for source "catalog"


def price_lookup(*, cards: Sequence[ChannelCard], model: str) -> PriceMatch:
    """The price of `model` (docs/pricing.md#price-lookup).

    `cards` are the group's channel's cards for the request's platform, in card order (none when
    the group has no active channel). The first card naming the model exactly wins, else the
    first card with a matching wildcard (names compared after normalisation, channels.patterns);
    else the catalog default; else missing.
    """
    card = match_card(cards, model) if model else None
    if card is not None:
        return PriceMatch(card.price, PricingSource.CHANNEL.value, card=card)
    found = lookup_default_prices(model) if model else None
    price = price_from_catalog(found) if found is not None else None
    if price is not None:
        return PriceMatch(price, PricingSource.CATALOG.value, catalog=found)
    return PriceMatch(None, PricingSource.MISSING.value)


def catalog_price(model: str) -> Price | None:
    """The catalog's default for `model` as a Price, or None when the catalog lacks it."""
    found = lookup_default_prices(model) if model else None
    return None if found is None else price_from_catalog(found)


@lru_cache(maxsize=1024)
def price_from_catalog(found: CatalogPrice) -> Price | None:
    """Convert a catalog entry; None when it has neither an input nor an output price.

    Gaps are filled so that nothing is silently billed at $0 (docs/pricing.md#catalog-defaults): a
    missing cache write or cache read price bills those tokens as input (the catalog lists no
    discount), a missing 1h write price falls back to the 5m one, and missing image output bills
    as text output.
    """
    if found.input_price is None and found.output_price is None:
        return None
    input_price = found.input_price if found.input_price is not None else Decimal(0)
    output_price = found.output_price if found.output_price is not None else Decimal(0)
    intervals = []
    for position, tier in enumerate(found.tiers):
        following = found.tiers[position + 1] if position + 1 < len(found.tiers) else None
        tier_input = tier.prices.input_price
        intervals.append(
            PriceInterval(
                min_tokens=tier.min_tokens,
                max_tokens=following.min_tokens if following else None,
                tier_label=_tier_label(tier.min_tokens),
                input_price=tier_input,
                output_price=tier.prices.output_price,
                cache_write_price=first_set(
                    tier.prices.cache_write_price, None if found.cache_write_price else tier_input
                ),
                cache_read_price=first_set(
                    tier.prices.cache_read_price, None if found.cache_read_price else tier_input
                ),
                sort_order=position,
            )
        )
    return Price(
        input_price=input_price,
        output_price=output_price,
        cache_write_price=first_set(found.cache_write_price, input_price),
        cache_write_1h_price=found.cache_write_1h_price,
        cache_read_price=first_set(found.cache_read_price, input_price),
        image_output_price=first_set(found.image_output_price, output_price),
        intervals=tuple(intervals),
    )


def first_set(*values: Decimal | None) -> Decimal | None:
    """The first price that is set: how an empty price falls back to another."""
    return next((value for value in values if value is not None), None)


def _tier_label(min_tokens: int) -> str:
    return f">{min_tokens // 1000}K" if min_tokens % 1000 == 0 else f">{min_tokens:,}"
