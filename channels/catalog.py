"""Default model prices from the `genai-prices` package's bundled, offline snapshot.

Source: ``genai-prices==0.2.3`` (pinned in requirements.txt), reading the generated module
``genai_prices.data.providers`` that ships inside the wheel. We build our own
``DataSnapshot`` from that list, so neither a snapshot installed by someone calling
``genai_prices.data_snapshot.set_custom_snapshot`` nor the package's ``UpdatePrices``
background fetcher can change what this module returns; nothing here touches the network.
Upgrading the package is how the defaults change.

The package stores prices in USD per million tokens as ``Decimal``. We return USD per
token, divided exactly (``Decimal(str(x)) / 1_000_000``), never through float.

Which prices are used:

* the model's standard prices. Batch, priority and other request variants are ignored.
  Dated price changes (``StartDateConstraint``) apply from their start date (UTC).
  Time-of-day windows (DeepSeek's peak hours) are resolved to the highest of the all-day
  and windowed prices, compared by input price: a card holds one price, and billing
  every hour at the off-peak rate would under-bill;
* ``cache_write_price`` is the 5-minute write (``cache_write_mtok``), ``cache_write_1h_price``
  is ``cache_write_1h_mtok`` when the catalog lists it, else None;
* ``image_output_price`` is ``output_image_mtok``;
* a tiered price (e.g. Anthropic's prices above 200k input tokens) gives its base price to
  the flat fields, and each threshold becomes a `CatalogTier`. genai-prices applies a tier
  when the input tokens (cache included) exceed its start, the same ``min < context`` rule
  as our intervals, so a tier maps to the interval ``(start, next start]``.

Matching: the name is tried as typed (lower-cased), then with vendor prefixes removed, then
fully normalised by `channels.patterns.normalise_model_name`; each try goes through the
package's own matcher. Trying the dated name first keeps dated models whose prices differ
(``gpt-4o-2024-05-13`` is not priced like ``gpt-4o``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from channels.patterns import normalise_model_name

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo, ModelPrice

__all__ = [
    "CatalogPrice",
    "CatalogTier",
    "TierPrices",
    "default_prices_json",
    "lookup_default_prices",
]

PER_MILLION = Decimal(1_000_000)

# Which catalog the defaults come from, named where the form fills prices in. The version must be
# the one pinned in requirements.txt (a test checks it); its PyPI release date is the date of the
# prices it carries. Upgrading the pin means updating both.
CATALOG_PACKAGE = "genai-prices"
CATALOG_VERSION = "0.2.3"
CATALOG_RELEASED = dt.date(2026, 11, 10)
CATALOG_NAME = f"{CATALOG_PACKAGE} {CATALOG_VERSION}, prices as of {CATALOG_RELEASED:%Y-%m-%d}"

# The catalog's vendors that are one of our platforms (accounts.models.Platform values).
VENDOR_PLATFORMS = {"anthropic": "anthropic", "openai": "openai", "google": "gemini"}

# Our field name -> the genai-prices price key (USD per million tokens).
_TOKEN_PRICE_KEYS = {
    "input_price": "input_mtok",
    "output_price": "output_mtok",
    "cache_write_price": "cache_write_mtok",
    "cache_write_1h_price": "cache_write_1h_mtok",
    "cache_read_price": "cache_read_mtok",
}
_IMAGE_OUTPUT_KEY = "output_image_mtok"


@dataclass(frozen=True)
class TierPrices:
    """USD per token in one long-context tier; None where the catalog has no price."""

    input_price: Decimal | None
    output_price: Decimal | None
    cache_write_price: Decimal | None
    cache_write_1h_price: Decimal | None
    cache_read_price: Decimal | None


class CatalogTier(NamedTuple):
    """Prices for contexts above `min_tokens` (up to the next tier's `min_tokens`)."""

    min_tokens: int
    prices: TierPrices


@dataclass(frozen=True)
class CatalogPrice:
    """A model's default prices, USD per token."""

    matched_name: str
    provider: str
    input_price: Decimal | None
    output_price: Decimal | None
    cache_write_price: Decimal | None
    cache_write_1h_price: Decimal | None
    cache_read_price: Decimal | None
    image_output_price: Decimal | None
    tiers: tuple[CatalogTier, ...] = ()

    @property
    def source(self) -> str:
        return f"catalog default for {self.matched_name}"

    @property
    def platform(self) -> str | None:
        """The platform of the model's vendor, when it is one of ours."""
        return VENDOR_PLATFORMS.get(self.provider)

    def as_json_dict(self) -> dict[str, Any]:
        """The ``GET /channels/model-pricing`` answer: prices as plain decimal strings.

        Each tier carries ``min_tokens`` and ``max_tokens`` (the next tier's start, or None
        for the last), ready to be offered as intervals.
        """
        tiers = []
        for position, tier in enumerate(self.tiers):
            following = self.tiers[position + 1] if position + 1 < len(self.tiers) else None
            tiers.append(
                {
                    "min_tokens": tier.min_tokens,
                    "max_tokens": following.min_tokens if following else None,
                    **{name: _as_str(getattr(tier.prices, name)) for name in _TOKEN_PRICE_KEYS},
                }
            )
        return {
            "found": True,
            **{name: _as_str(getattr(self, name)) for name in _TOKEN_PRICE_KEYS},
            "image_output_price": _as_str(self.image_output_price),
            "tiers": tiers,
            "source": self.source,
            "platform": self.platform,
            "catalog": CATALOG_NAME,
        }


def _as_str(price: Decimal | None) -> str | None:
    # Fixed-point so the form never sees "3E-7".
    return None if price is None else format(price, "f")


def _per_token(per_million: Decimal) -> Decimal:
    return Decimal(str(per_million)) / PER_MILLION


def lookup_default_prices(model: str) -> CatalogPrice | None:
    """The catalog's default prices for `model`, or None when the catalog does not know it."""
    return _lookup(model, dt.datetime.now(dt.UTC).date())


def default_prices_json(model: str) -> dict[str, Any]:
    """The endpoint answer for `model`, found or not."""
    price = lookup_default_prices(model)
    if price is not None:
        return price.as_json_dict()
    return {
        "found": False,
        **dict.fromkeys(_TOKEN_PRICE_KEYS),
        "image_output_price": None,
        "tiers": [],
        "source": None,
        "platform": None,
        "catalog": CATALOG_NAME,
    }


def catalog_warm() -> None:
    """Load the catalog now (a gateway process at start-up), not in the first request's recording."""
    _snapshot()


def catalog_loaded() -> bool:
    """Whether the catalog is in memory, so that a lookup costs a search and not its import."""
    return _snapshot.cache_info().currsize > 0


@cache
def _snapshot() -> DataSnapshot:
    # Imported here: the data module is large and only the pricing pages and billing need it.
    from genai_prices.data import providers
    from genai_prices.data_snapshot import DataSnapshot

    return DataSnapshot(providers=providers, from_auto_update=False)


def _candidates(model: str) -> list[str]:
    typed = model.strip().lower()
    names = [typed]
    for slash_prefix in ("anthropic/", "openai/", "google/", "models/"):
        if typed.startswith(slash_prefix):
            names.append(typed.removeprefix(slash_prefix))
    names.append(normalise_model_name(model))
    return [name for position, name in enumerate(names) if name and name not in names[:position]]


@lru_cache(maxsize=1024)
def _lookup(model: str, today: dt.date) -> CatalogPrice | None:
    snapshot = _snapshot()
    for name in _candidates(model):
        try:
            provider, info = snapshot.find_provider_model(name, None, None, None)
        except LookupError:
            continue
        return _catalog_price(provider.id, info, today)
    return None


def _standard_prices(info: ModelInfo, today: dt.date) -> ModelPrice:
    from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices, TimeOfDateConstraint

    if isinstance(info.prices, ModelPrice):
        return info.prices
    all_day = info.prices[0].prices
    # Later entries take precedence, as in genai-prices.
    for conditional in reversed(info.prices):
        constraint = conditional.constraint
        if constraint is None or (
            isinstance(constraint, StartDateConstraint) and constraint.start_date <= today
        ):
            all_day = conditional.prices
            break
    windowed = [c.prices for c in info.prices if isinstance(c.constraint, TimeOfDateConstraint)]

    def input_rate(prices: ModelPrice) -> Decimal:
        value = getattr(prices, "input_mtok", None)
        if isinstance(value, TieredPrices):
            return value.base
        return value if value is not None else Decimal(0)

    # max() keeps the first of equals, so the all-day price wins a tie.
    return max([all_day, *windowed], key=input_rate)


def _catalog_price(provider_id: str, info: ModelInfo, today: dt.date) -> CatalogPrice:
    from genai_prices.types import TieredPrices

    prices = _standard_prices(info, today)
    raw = {name: getattr(prices, key, None) for name, key in _TOKEN_PRICE_KEYS.items()}

    def flat(value: Decimal | TieredPrices | None) -> Decimal | None:
        if value is None:
            return None
        return _per_token(value.base if isinstance(value, TieredPrices) else value)

    def at_threshold(value: Decimal | TieredPrices | None, start: int) -> Decimal | None:
        if not isinstance(value, TieredPrices):
            return flat(value)
        applicable = value.base
        for tier in value.tiers:
            if tier.start <= start:
                applicable = tier.price
        return _per_token(applicable)

    starts = sorted(
        {tier.start for value in raw.values() if isinstance(value, TieredPrices) for tier in value.tiers}
    )
    tiers = tuple(
        CatalogTier(
            min_tokens=start,
            prices=TierPrices(**{name: at_threshold(value, start) for name, value in raw.items()}),
        )
        for start in starts
    )
    image_output = getattr(prices, _IMAGE_OUTPUT_KEY, None)
    return CatalogPrice(
        matched_name=info.id,
        provider=provider_id,
        **{name: flat(value) for name, value in raw.items()},
        image_output_price=flat(image_output),
        tiers=tiers,
    )
