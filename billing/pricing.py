"""Which price applies to a request, and at what multipliers
(docs/pricing.md#billing-model, docs/pricing.md#price-lookup, docs/pricing.md#multipliers).

`billing_context` gathers, in a few queries, everything about the key, its user and group, the
group's channel and the upstream account that pricing needs. The gateway caches it in its auth
snapshot; `usage_record` loads it only when the caller has none. `resolve_price` then finds the
price for one billing model: the group's channel first, the catalog default next, else missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from accounts.models import APIKey, Subscription, UpstreamAccount, UserGroupRate
from accounts.services.upstream import QuotaResetRules
from billing.cost import CacheTTL, Price, PriceInterval, PricingSource, RateSource
from billing.models import BillingModelSource
from channels.catalog import CatalogPrice, lookup_default_prices
from channels.models import ModelPricing
from channels.patterns import match_card
from channels.selectors import channel_cards, channel_for_group

ONE = Decimal(1)


@dataclass(frozen=True)
class ChannelCard:
    """A channel pricing card as billing uses it: its model patterns and its pure Price."""

    models: tuple[str, ...]
    price: Price


@dataclass(frozen=True)
class BillingContext:
    """The slow-changing facts behind one (key, account) pair's bills.

    Besides pricing it carries the configuration the counter services would otherwise read on
    every charge (the key's timezone, the subscription's start and its group's timezone, the
    account's quota reset rules), so a recording reads nothing before its UPDATEs. Like the
    multipliers, they are as fresh as the context: the gateway's auth snapshot, or loaded by
    usage_record itself when the caller has none.
    """

    api_key_id: int
    user_id: int
    group_id: int | None
    platform: str
    is_subscription_group: bool
    subscription_id: int | None  # the subscription a subscription group's usage is charged to
    rate_multiplier: Decimal
    rate_multiplier_source: RateSource
    account_id: int | None
    account_rate_multiplier: Decimal
    cache_ttl_override: CacheTTL | None
    channel_id: int | None
    billing_model_source: str
    channel_cards: tuple[ChannelCard, ...] = ()  # the channel's cards for the group's platform
    # Counter configuration; None means "not known here": the counter service reads it.
    key_timezone: str | None = None  # as configured: empty means settings.TIME_ZONE
    subscription_starts_at: datetime | None = None
    subscription_timezone: str | None = None  # the group's, as configured
    account_quota_rules: QuotaResetRules | None = None

    @property
    def charges_subscription(self) -> bool:
        return self.is_subscription_group and self.subscription_id is not None


@dataclass(frozen=True)
class PriceResolution:
    price: Price | None
    pricing_source: PricingSource
    channel_id: int | None


def billing_context(*, api_key_id: int, account_id: int | None) -> BillingContext:
    """Load the context for a key and the account that served the request (1 to 8 queries).

    The channel's cards come with it, so pricing a request needs no query at all.
    """
    key = APIKey.objects.select_related("group").get(pk=api_key_id)
    group = key.group
    rate, rate_source = ONE, "default"
    subscription_id, subscription_starts_at = None, None
    channel_id, model_source, cards = None, BillingModelSource.CHANNEL_MAPPED.value, ()
    if group is not None:
        override = (
            UserGroupRate.objects.filter(user_id=key.user_id, group_id=group.pk)
            .values_list("rate_multiplier", flat=True)
            .first()
        )
        rate, rate_source = (override, "user") if override is not None else (group.rate_multiplier, "group")
        if group.is_subscription:
            subscription_id, subscription_starts_at = _subscription_to_charge(
                user_id=key.user_id, group_id=group.pk
            )
        channel = channel_for_group(group.pk)
        if channel is not None:
            channel_id, model_source = channel.pk, channel.billing_model_source
            cards = tuple(
                channel_card(card) for card in channel_cards(channel=channel, platform=group.platform)
            )

    account_rate, ttl, quota_rules = ONE, None, None
    if account_id is not None:
        account = UpstreamAccount.objects.only(
            "rate_multiplier", "cache_ttl_override", "platform", "type", *QuotaResetRules.FIELDS
        ).get(pk=account_id)
        account_rate = account.rate_multiplier
        quota_rules = QuotaResetRules.of(account)
        if account.cache_ttl_override and account.supports_cache_ttl_override:
            ttl = account.cache_ttl_override

    return BillingContext(
        api_key_id=key.pk,
        user_id=key.user_id,
        group_id=group.pk if group else None,
        platform=group.platform if group else "",
        is_subscription_group=bool(group and group.is_subscription),
        subscription_id=subscription_id,
        rate_multiplier=rate,
        rate_multiplier_source=rate_source,
        account_id=account_id,
        account_rate_multiplier=account_rate,
        cache_ttl_override=ttl,
        channel_id=channel_id,
        billing_model_source=model_source,
        channel_cards=cards,
        key_timezone=key.timezone,
        subscription_starts_at=subscription_starts_at,
        subscription_timezone=group.timezone if subscription_id is not None else None,
        account_quota_rules=quota_rules,
    )


def _subscription_to_charge(*, user_id: int, group_id: int) -> tuple[int | None, datetime | None]:
    """The live subscription; failing that (it lapsed mid-request) the latest one, so the
    request served is still charged to the subscription it was admitted under. (id, starts_at)."""
    subscriptions = Subscription.objects.filter(user_id=user_id, group_id=group_id)
    live = subscriptions.filter(status__in=Subscription.LIVE_STATUSES).order_by("-expires_at")
    found = live.values_list("pk", "starts_at").first() or (
        subscriptions.order_by("-expires_at", "-pk").values_list("pk", "starts_at").first()
    )
    return found or (None, None)


def pick_billing_model(*, source: str, requested_model: str, mapped_model: str, upstream_model: str) -> str:
    """docs/pricing.md#billing-model: a name that was not recorded falls back to the one before it."""
    mapped = mapped_model or requested_model
    if source == BillingModelSource.REQUESTED:
        return requested_model
    if source == BillingModelSource.UPSTREAM:
        return upstream_model or mapped
    return mapped


def resolve_price(*, context: BillingContext, model: str) -> PriceResolution:
    """The channel's card for the group's platform and `model` (an exact name before the first
    wildcard, in card order), else the catalog default, else missing (docs/pricing.md#price-lookup)."""
    card = match_card(context.channel_cards, model) if model else None
    if card is not None:
        return PriceResolution(card.price, "channel", context.channel_id)
    price = catalog_price(model)
    if price is not None:
        return PriceResolution(price, "catalog", context.channel_id)
    return PriceResolution(None, "missing", context.channel_id)


def channel_card(card: ModelPricing) -> ChannelCard:
    """Convert a channel card (with its intervals prefetched) into billing's pure form.

    Empty prices follow the catalog's gap rules below, so an operator who leaves a cache price
    empty bills those tokens as input rather than free; an explicit 0 is free.
    """
    input_price = _first(card.input_price, Decimal(0))
    output_price = _first(card.output_price, Decimal(0))
    intervals = tuple(
        PriceInterval(
            min_tokens=interval.min_tokens,
            max_tokens=interval.max_tokens,
            tier_label=interval.tier_label,
            input_price=interval.input_price,
            output_price=interval.output_price,
            cache_write_price=interval.cache_write_price,
            cache_read_price=interval.cache_read_price,
            input_multiplier=interval.input_multiplier,
            output_multiplier=interval.output_multiplier,
            cache_write_multiplier=interval.cache_write_multiplier,
            cache_read_multiplier=interval.cache_read_multiplier,
            per_request_price=interval.per_request_price,
            sort_order=interval.sort_order,
        )
        for interval in card.intervals.all()
    )
    price = Price(
        input_price=input_price,
        output_price=output_price,
        cache_write_price=_first(card.cache_write_price, input_price),
        cache_write_1h_price=card.cache_write_1h_price,
        cache_read_price=_first(card.cache_read_price, input_price),
        image_output_price=_first(card.image_output_price, output_price),
        per_request_price=card.per_request_price,
        billing_mode=card.billing_mode,
        intervals=intervals,
    )
    return ChannelCard(models=tuple(card.models), price=price)


def catalog_price(model: str) -> Price | None:
    """The catalog's default for `model` as a billing card, or None when the catalog lacks it."""
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
                cache_write_price=_first(
                    tier.prices.cache_write_price, None if found.cache_write_price else tier_input
                ),
                cache_read_price=_first(
                    tier.prices.cache_read_price, None if found.cache_read_price else tier_input
                ),
                sort_order=position,
            )
        )
    return Price(
        input_price=input_price,
        output_price=output_price,
        cache_write_price=_first(found.cache_write_price, input_price),
        cache_write_1h_price=found.cache_write_1h_price,
        cache_read_price=_first(found.cache_read_price, input_price),
        image_output_price=_first(found.image_output_price, output_price),
        intervals=tuple(intervals),
    )


def _first(*values: Decimal | None) -> Decimal | None:
    return next((value for value in values if value is not None), None)


def _tier_label(min_tokens: int) -> str:
    return f">{min_tokens // 1000}K" if min_tokens % 1000 == 0 else f">{min_tokens:,}"
