"""Which price applies to a request, and at what multipliers
(docs/pricing.md#billing-model, docs/pricing.md#price-lookup, docs/pricing.md#multipliers).

`BillingContext` is everything pricing and charging need about one (key, account) pair, composed
by `billing_context_from` from the snapshots the owning apps build (the key's, the group's
channel's, the account's), without touching the database. The gateway composes it from the
snapshots it caches; `billing_context` loads the snapshots through their apps' loaders for callers
that hold none. `resolve_price` then finds the price for one billing model: the group's channel
first, the catalog default next, else missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from accounts.models import APIKey, UpstreamAccount
from accounts.snapshots import (
    AccountQuota,
    KeySnapshot,
    UpstreamAccountSnapshot,
    key_snapshot_load_by_id,
    upstream_account_snapshots_load,
)
from billing.cost import CacheTTL, CostBreakdown, RateSource, Usage, compute_cost
from channels.pricing import BillingModelSource, ChannelCard, Price, price_lookup
from channels.snapshots import ChannelSnapshot, channel_snapshot_for_group

ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class BillingContext:
    """The slow-changing facts behind one (key, account) pair's bills.

    Besides pricing it carries the configuration the counter services would otherwise read on
    every charge (the key's timezone, the subscription's start and its group's timezone, the
    account's quota reset rules), so a recording reads nothing before its UPDATEs. Like the
    multipliers, they are as fresh as the snapshots it was composed from.
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
    account_quota: AccountQuota | None = None  # its reset rules are what the charge reads

    @property
    def charges_subscription(self) -> bool:
        return self.is_subscription_group and self.subscription_id is not None


@dataclass(frozen=True)
class PriceResolution:
    price: Price | None
    pricing_source: str  # a PricingSource value
    channel_id: int | None


def billing_context_from(
    *, key: KeySnapshot, channel: ChannelSnapshot | None, account: UpstreamAccountSnapshot | None
) -> BillingContext:
    """Compose the context from snapshots. Pure: no database, so the gateway can call it per request."""
    group = key.group
    rate, rate_source = ONE, "default"
    subscription = None
    if group is not None:
        override = key.user.group_rate_multiplier
        rate, rate_source = (override, "user") if override is not None else (group.rate_multiplier, "group")
        subscription = key.subscription if group.is_subscription else None
    if channel is not None and group is not None:
        channel_id, model_source = channel.id, channel.billing_model_source
        cards = channel.cards_for(group.platform)
    else:
        channel_id, model_source, cards = None, BillingModelSource.CHANNEL_MAPPED.value, ()
    return BillingContext(
        api_key_id=key.id,
        user_id=key.user_id,
        group_id=group.id if group else None,
        platform=group.platform if group else "",
        is_subscription_group=bool(group and group.is_subscription),
        subscription_id=subscription.id if subscription else None,
        rate_multiplier=rate,
        rate_multiplier_source=rate_source,
        account_id=account.id if account else None,
        account_rate_multiplier=account.rate_multiplier if account else ONE,
        cache_ttl_override=account.cache_ttl_override if account else None,
        channel_id=channel_id,
        billing_model_source=model_source,
        channel_cards=cards,
        key_timezone=key.timezone,
        subscription_starts_at=subscription.starts_at if subscription else None,
        subscription_timezone=group.timezone if subscription and group else None,
        account_quota=account.quota if account else None,
    )


def billing_context(*, api_key_id: int, account_id: int | None) -> BillingContext:
    """Load the snapshots of a key, its group's channel and the account that served the request,
    through their apps' loaders, and compose them. Raises APIKey.DoesNotExist /
    UpstreamAccount.DoesNotExist for an unknown id."""
    key = key_snapshot_load_by_id(api_key_id)
    if key is None:
        raise APIKey.DoesNotExist(f"API key {api_key_id} does not exist")
    account = None
    if account_id is not None:
        account = upstream_account_snapshots_load([account_id]).get(account_id)
        if account is None:
            raise UpstreamAccount.DoesNotExist(f"upstream account {account_id} does not exist")
    channel = channel_snapshot_for_group(key.group_id)
    return billing_context_from(key=key, channel=channel, account=account)


def pick_billing_model(*, source: str, requested_model: str, mapped_model: str, upstream_model: str) -> str:
    """docs/pricing.md#billing-model: a name that was not recorded falls back to the one before it."""
    mapped = mapped_model or requested_model
    if source == BillingModelSource.REQUESTED:
        return requested_model
    if source == BillingModelSource.UPSTREAM:
        return upstream_model or mapped
    return mapped


def price_request(
    *, context: BillingContext, usage: Usage, requested_model: str, mapped_model: str, upstream_model: str
) -> tuple[PriceResolution, CostBreakdown]:
    """A request's price and cost under `context` (docs/pricing.md): the billing model its channel
    names, that model's price, the cost with every multiplier. One rule for the recording and for
    the gateway's hold estimate."""
    billing_model = pick_billing_model(
        source=context.billing_model_source,
        requested_model=requested_model,
        mapped_model=mapped_model,
        upstream_model=upstream_model,
    )
    resolution = resolve_price(context=context, model=billing_model)
    breakdown = compute_cost(
        price=resolution.price,
        usage=usage,
        pricing_source=resolution.pricing_source,
        rate_multiplier=context.rate_multiplier,
        rate_multiplier_source=context.rate_multiplier_source,
        account_rate_multiplier=context.account_rate_multiplier,
        cache_ttl_override=context.cache_ttl_override,
        billing_model=billing_model,
    )
    return resolution, breakdown


def resolve_price(*, context: BillingContext, model: str) -> PriceResolution:
    """The price of `model` for this context: channels' lookup rule over the context's cards."""
    match = price_lookup(cards=context.channel_cards, model=model)
    return PriceResolution(match.price, match.source, context.channel_id)
