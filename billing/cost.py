"""The cost of one request (docs/pricing.md), as a pure function.

No database and no Django: billing builds a `Price` from a channel pricing card or the catalog,
a `Usage` from the upstream response, and stores the returned `CostBreakdown` (via `as_dict()`)
on the usage row so the usage page can re-render the sentence later without re-pricing.

Quantisation (docs/money.md#rounding: 8 decimals, round half away from zero):
- every component is quantised on its own (so each stored component is exact);
- `total_cost` is the plain sum of those quantised components, so a row's components always add
  up to its total to the last digit. It may differ from quantising the raw sum by at most half a
  unit in the 8th place per component; the ledger's own consistency matters more than that.
- `actual_cost` and `account_cost` are quantised from the (already quantised) `total_cost`.
Per-token prices are never rounded: they carry 12+ decimals and only the products are quantised.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import cache
from typing import Any, Literal

from channels.patterns import select_interval, select_tier_interval
from channels.pricing import (
    PRICING_SOURCES,
    BillingMode,
    Price,
    PriceInterval,
    PricingSource,
    count_in,
    money_in,
)
from common.money import PRECISION, format_multiplier, format_per_mtok_exact, format_usd_exact, quantize_usd

CacheTTL = Literal["5m", "1h"]
RateSource = Literal["group", "user", "default"]
UnitPriceSource = Literal["", "interval", "per_request_price", "none"]

CACHE_TTLS: frozenset[str] = frozenset({"5m", "1h"})
RATE_SOURCE_LABELS: dict[str, str] = {
    "group": "group rate",
    "user": "user override",
    "default": "default rate",
}

ZERO = Decimal(0)
ONE = Decimal(1)


@dataclass(frozen=True)
class Usage:
    """Token and unit counts of one request, as reported by the upstream."""

    input_tokens: int = 0
    output_tokens: int = 0  # includes image_output_tokens, as upstreams report it
    cache_creation_5m_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    cache_read_tokens: int = 0
    image_output_tokens: int = 0
    request_count: int = 1  # units in per_request mode
    image_count: int = 0  # units in image mode
    image_size_tier: str | None = None  # '1K', '2K', '4K', 'HD'…: picks the interval by tier_label

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "image_size_tier":
                count_in(f.name, getattr(self, f.name))

    @property
    def context_tokens(self) -> int:
        """What the interval is chosen by (docs/pricing.md#intervals)."""
        return (
            self.input_tokens
            + self.cache_creation_5m_tokens
            + self.cache_creation_1h_tokens
            + self.cache_read_tokens
        )


@dataclass(frozen=True)
class AppliedInterval:
    """The interval a request was priced in, kept on the breakdown for the explanation."""

    tier_label: str
    min_tokens: int
    max_tokens: int | None


def _interval_price(explicit: Decimal | None, multiplier: Decimal | None, base: Decimal) -> Decimal:
    if explicit is not None:
        return explicit
    if multiplier is not None:
        return multiplier * base
    return base


def _cache_write_1h_price(price: Price, interval: PriceInterval | None) -> Decimal:
    base_1h = (
        price.cache_write_1h_price if price.cache_write_1h_price is not None else price.cache_write_price
    )
    if interval is None:
        return base_1h
    # An interval has one cache-write price but writes come in two buckets. Scaling only the 5m
    # price would bill long-context 1h writes at the short-context rate, the under-billing
    # docs/pricing.md#cache-writes warns about. So the interval moves both buckets by the same factor.
    if interval.cache_write_price is not None:
        if price.cache_write_1h_price is None or price.cache_write_price == 0:
            # No 1h:5m ratio to keep, so the 1h bucket falls back to the 5m price
            # (docs/pricing.md#cache-writes).
            return interval.cache_write_price
        return interval.cache_write_price * price.cache_write_1h_price / price.cache_write_price
    if interval.cache_write_multiplier is not None:
        return interval.cache_write_multiplier * base_1h
    return base_1h


@dataclass(frozen=True)
class CostBreakdown:
    """Everything needed to store a usage row's costs and to explain them by hand.

    Token counts are as billed (after any cache TTL override); prices are the effective per-token
    prices after interval selection; money fields are quantised to 8 decimals.
    """

    billing_mode: str  # a BillingMode value
    pricing_source: str  # a PricingSource value
    billing_model: str
    # Counts as billed.
    input_tokens: int
    output_tokens: int
    image_output_tokens: int
    cache_creation_5m_tokens: int
    cache_creation_1h_tokens: int
    cache_read_tokens: int
    context_tokens: int
    unit_count: int
    size_tier: str | None
    # Effective prices (USD per token; per unit for unit_price).
    input_price: Decimal
    output_price: Decimal
    image_output_price: Decimal
    cache_write_price: Decimal
    cache_write_1h_price: Decimal
    cache_read_price: Decimal
    unit_price: Decimal
    unit_price_source: UnitPriceSource
    interval: AppliedInterval | None
    # Components (each quantised).
    input_cost: Decimal
    output_cost: Decimal
    image_output_cost: Decimal
    cache_creation_5m_cost: Decimal
    cache_creation_1h_cost: Decimal
    cache_creation_cost: Decimal  # = 5m + 1h, both already quantised
    cache_read_cost: Decimal
    unit_cost: Decimal
    # Totals.
    total_cost: Decimal
    actual_cost: Decimal
    account_cost: Decimal
    rate_multiplier: Decimal
    rate_multiplier_source: RateSource
    account_rate_multiplier: Decimal
    cache_ttl_override: CacheTTL | None  # the bucket every cache write was moved to, if any

    @property
    def cache_ttl_overridden(self) -> bool:
        """What the usage row stores (docs/pricing.md#cache-writes)."""
        return self.cache_ttl_override is not None

    def components(self) -> dict[str, Decimal]:
        """The components that add up to total_cost exactly (5m/1h are inside cache_creation)."""
        return {
            "input_cost": self.input_cost,
            "output_cost": self.output_cost,
            "image_output_cost": self.image_output_cost,
            "cache_creation_cost": self.cache_creation_cost,
            "cache_read_cost": self.cache_read_cost,
            "unit_cost": self.unit_cost,
        }

    def as_dict(self, *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
        """JSON-safe: Decimals as strings, so nothing passes through a float on the way to storage.
        `leave_out` names the entries not to write (a usage row keeps those as columns); a name
        that is not one raises ValueError."""
        data: dict[str, Any] = {"version": _DICT_VERSION}
        for name in _names_but(leave_out):
            value = getattr(self, name)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, AppliedInterval):
                value = dataclasses.asdict(value)
            data[name] = value
        if "cache_ttl_overridden" not in leave_out:
            # Readable in the stored JSON; derived, so from_dict ignores it.
            data["cache_ttl_overridden"] = self.cache_ttl_overridden
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostBreakdown:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = data[f.name]
            if f.name in _DECIMAL_FIELDS:
                value = Decimal(value)
            elif f.name == "interval" and value is not None:
                value = AppliedInterval(**value)
            values[f.name] = value
        return cls(**values)

    def explain(self) -> str:
        """A sentence to check with a calculator; prices in $/MTok (docs/pricing.md#breakdown)."""
        head = f"{self.billing_model or 'Request'}"
        if self.pricing_source == PricingSource.MISSING:
            head += ": no price found (pricing_source=missing), billed $0"
            counts = self._token_terms(priced=False)
            if counts:
                head += f" for {', '.join(counts)}"
        else:
            head += f", {self.pricing_source} price, {self.billing_mode.replace('_', '-')} mode"
        if self.interval is not None and self.billing_mode == BillingMode.TOKEN:
            # Unit modes name their interval in the unit term instead.
            head += f", {self._interval_text()}"
        if self.cache_ttl_override is not None:
            head += f", all cache writes billed as {self.cache_ttl_override} (TTL override)"

        terms: list[str] = []
        if self.pricing_source != PricingSource.MISSING:
            if self.billing_mode == BillingMode.TOKEN:
                terms = self._token_terms(priced=True) or ["no billable tokens"]
            else:
                terms = [self._unit_term()]
        rate_label = RATE_SOURCE_LABELS.get(self.rate_multiplier_source, self.rate_multiplier_source)
        terms += [
            f"total {format_usd_exact(self.total_cost)}",
            f"× {format_multiplier(self.rate_multiplier)} ({rate_label}) = "
            f"{format_usd_exact(self.actual_cost)} charged",
            f"account cost {format_usd_exact(self.total_cost)} × "
            f"{format_multiplier(self.account_rate_multiplier)} = {format_usd_exact(self.account_cost)}",
        ]
        return f"{head}: {'; '.join(terms)}."

    def _token_terms(self, *, priced: bool) -> list[str]:
        text_output = max(self.output_tokens - self.image_output_tokens, 0)  # as billed
        rows = [
            (self.input_tokens, "input", self.input_price, self.input_cost),
            (text_output, "output", self.output_price, self.output_cost),
            (self.image_output_tokens, "image output", self.image_output_price, self.image_output_cost),
            (
                self.cache_creation_5m_tokens,
                "cache write 5m",
                self.cache_write_price,
                self.cache_creation_5m_cost,
            ),
            (
                self.cache_creation_1h_tokens,
                "cache write 1h",
                self.cache_write_1h_price,
                self.cache_creation_1h_cost,
            ),
            (self.cache_read_tokens, "cache read", self.cache_read_price, self.cache_read_cost),
        ]
        if not priced:
            return [f"{count:,} {label}" for count, label, _, _ in rows if count > 0]
        return [
            f"{count:,} {label} × {format_per_mtok_exact(price)} = {format_usd_exact(cost)}"
            for count, label, price, cost in rows
            if count > 0
        ]

    def _unit_term(self) -> str:
        noun = "image" if self.billing_mode == BillingMode.IMAGE else "request"
        noun += "" if self.unit_count == 1 else "s"
        tier = f" ({self.size_tier})" if self.size_tier else ""
        if self.unit_price_source == "interval":
            why = f"interval '{self.interval.tier_label}'" if self.interval else "interval"
        elif self.unit_price_source == "per_request_price":
            why = "per-request price" + (f"; no interval for '{self.size_tier}'" if self.size_tier else "")
        else:
            why = "no unit price on the card"
        return (
            f"{self.unit_count:,} {noun}{tier} × {format_usd_exact(self.unit_price)} ({why}) = "
            f"{format_usd_exact(self.unit_cost)}"
        )

    def _interval_text(self) -> str:
        assert self.interval is not None  # callers check; narrows the type
        label = f"'{self.interval.tier_label}'" if self.interval.tier_label else "(unlabelled)"
        upper = "∞" if self.interval.max_tokens is None else f"{self.interval.max_tokens:,}"
        return (
            f"interval {label} ({self.interval.min_tokens:,} < {self.context_tokens:,} context tokens "
            f"≤ {upper})"
        )


_DICT_VERSION = 1
_DECIMAL_FIELDS: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(CostBreakdown) if f.type in ("Decimal", Decimal)
)


# What as_dict may leave out: its fields and the derived cache_ttl_overridden ("version" is always
# written).
_LEAVABLE: frozenset[str] = frozenset(
    {*(f.name for f in dataclasses.fields(CostBreakdown)), "cache_ttl_overridden"}
)


@cache  # once per set left out, not dataclasses.fields() and the check per breakdown
def _names_but(leave_out: frozenset[str]) -> tuple[str, ...]:
    unknown = leave_out - _LEAVABLE
    if unknown:  # a misspelt name would otherwise leave its entry in silently
        raise ValueError(f"as_dict cannot leave out {sorted(unknown)}: not an entry it writes")
    return tuple(f.name for f in dataclasses.fields(CostBreakdown) if f.name not in leave_out)


# Made once rather than per request: both are immutable.
_NO_INTERVAL = PriceInterval()  # leaves every flat price as is
_ZERO_USD = quantize_usd(ZERO)


def compute_cost(
    *,
    price: Price | None,
    usage: Usage,
    pricing_source: str,
    rate_multiplier: Decimal = ONE,
    rate_multiplier_source: RateSource = "group",
    account_rate_multiplier: Decimal = ONE,
    cache_ttl_override: CacheTTL | None = None,
    billing_model: str = "",
) -> CostBreakdown:
    """Price one request (docs/pricing.md#components, docs/pricing.md#multipliers).

    `rate_multiplier` is already resolved by the caller (the user's override for the group if
    set, else the group's); `rate_multiplier_source` says which, for the explanation.
    `price=None` with `pricing_source='missing'` yields a zero-cost breakdown that still carries
    every token count, so the row is recorded and the dashboard can flag the model.
    """
    if pricing_source not in PRICING_SOURCES:
        raise ValueError(f"pricing_source must be one of {sorted(PRICING_SOURCES)}, got {pricing_source!r}")
    if (price is None) != (pricing_source == PricingSource.MISSING):
        raise ValueError("price must be None exactly when pricing_source is 'missing'")
    if cache_ttl_override is not None and cache_ttl_override not in CACHE_TTLS:
        raise ValueError(f"cache_ttl_override must be '5m', '1h' or None, got {cache_ttl_override!r}")
    if rate_multiplier_source not in RATE_SOURCE_LABELS:
        raise ValueError(f"rate_multiplier_source must be one of {sorted(RATE_SOURCE_LABELS)}")
    rate = money_in("rate_multiplier", rate_multiplier)
    account_rate = money_in("account_rate_multiplier", account_rate_multiplier)
    assert rate is not None and account_rate is not None  # not optional; narrows the type

    cache_5m, cache_1h = usage.cache_creation_5m_tokens, usage.cache_creation_1h_tokens
    if cache_ttl_override == "5m":
        cache_5m, cache_1h = cache_5m + cache_1h, 0
    elif cache_ttl_override == "1h":
        cache_5m, cache_1h = 0, cache_5m + cache_1h
    # Upstreams count image tokens inside output; if one reports more image than output tokens,
    # bill zero text output rather than a negative amount.
    image_output = usage.image_output_tokens
    text_output = max(usage.output_tokens - image_output, 0)
    mode = price.billing_mode if price is not None else BillingMode.TOKEN.value

    prices = dict.fromkeys(
        (
            "input_price",
            "output_price",
            "image_output_price",
            "cache_write_price",
            "cache_write_1h_price",
            "cache_read_price",
            "unit_price",
        ),
        ZERO,
    )
    costs = dict.fromkeys(
        (
            "input_cost",
            "output_cost",
            "image_output_cost",
            "cache_creation_5m_cost",
            "cache_creation_1h_cost",
            "cache_read_cost",
            "unit_cost",
        ),
        _ZERO_USD,  # quantised, so every money field of a breakdown has exactly 8 places
    )
    chosen: PriceInterval | None = None
    unit_count = 0
    unit_price_source: UnitPriceSource = ""

    with localcontext() as ctx:
        ctx.prec = PRECISION
        if price is not None and mode == BillingMode.TOKEN:
            chosen = select_interval(price.intervals, usage.context_tokens)
            iv = chosen or _NO_INTERVAL
            prices["input_price"] = _interval_price(iv.input_price, iv.input_multiplier, price.input_price)
            prices["output_price"] = _interval_price(
                iv.output_price, iv.output_multiplier, price.output_price
            )
            prices["cache_write_price"] = _interval_price(
                iv.cache_write_price, iv.cache_write_multiplier, price.cache_write_price
            )
            prices["cache_read_price"] = _interval_price(
                iv.cache_read_price, iv.cache_read_multiplier, price.cache_read_price
            )
            prices["cache_write_1h_price"] = _cache_write_1h_price(price, chosen)
            # Intervals carry no image price (docs/pricing.md#intervals), so image output is always flat.
            prices["image_output_price"] = price.image_output_price

            costs["input_cost"] = quantize_usd(usage.input_tokens * prices["input_price"])
            costs["output_cost"] = quantize_usd(text_output * prices["output_price"])
            costs["image_output_cost"] = quantize_usd(image_output * prices["image_output_price"])
            costs["cache_creation_5m_cost"] = quantize_usd(cache_5m * prices["cache_write_price"])
            costs["cache_creation_1h_cost"] = quantize_usd(cache_1h * prices["cache_write_1h_price"])
            costs["cache_read_cost"] = quantize_usd(usage.cache_read_tokens * prices["cache_read_price"])
        elif price is not None:
            unit_count = usage.image_count if mode == BillingMode.IMAGE else usage.request_count
            chosen = select_tier_interval(price.intervals, usage.image_size_tier)
            if chosen is not None and chosen.per_request_price is not None:
                prices["unit_price"], unit_price_source = chosen.per_request_price, "interval"
            elif price.per_request_price is not None:
                chosen = None  # the label matched but had no price: the card's price is what applied
                prices["unit_price"], unit_price_source = price.per_request_price, "per_request_price"
            else:
                # Channel validation should prevent this; keep the row and say why it is $0.
                chosen, unit_price_source = None, "none"
            costs["unit_cost"] = quantize_usd(unit_count * prices["unit_price"])

        cache_creation_cost = costs["cache_creation_5m_cost"] + costs["cache_creation_1h_cost"]
        # Sum of quantised components: exact, so the stored row adds up to the last digit.
        total = (
            costs["input_cost"]
            + costs["output_cost"]
            + costs["image_output_cost"]
            + cache_creation_cost
            + costs["cache_read_cost"]
            + costs["unit_cost"]
        )
        actual = quantize_usd(total * rate)
        account = quantize_usd(total * account_rate)

    return CostBreakdown(
        billing_mode=mode,
        pricing_source=pricing_source,
        billing_model=billing_model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,  # as reported, so the row matches the upstream
        image_output_tokens=image_output,
        cache_creation_5m_tokens=cache_5m,
        cache_creation_1h_tokens=cache_1h,
        cache_read_tokens=usage.cache_read_tokens,
        context_tokens=usage.context_tokens,
        unit_count=unit_count,
        size_tier=usage.image_size_tier if mode != BillingMode.TOKEN else None,
        **prices,
        unit_price_source=unit_price_source,
        interval=(
            AppliedInterval(chosen.tier_label, chosen.min_tokens, chosen.max_tokens) if chosen else None
        ),
        **costs,
        cache_creation_cost=cache_creation_cost,
        total_cost=total,
        actual_cost=actual,
        account_cost=account,
        rate_multiplier=rate,
        rate_multiplier_source=rate_multiplier_source,
        account_rate_multiplier=account_rate,
        cache_ttl_override=cache_ttl_override,
    )
