"""Reads of channels: the price lookup billing calls, the model mapping, and the console's lists.

The lookup order (docs/pricing.md#price-lookup): the card of the group's (active) channel for
the platform and model, an exact name before a wildcard, in card order, with the name
normalisation of channels.patterns; otherwise the catalog default; otherwise "missing".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from django.db.models import Prefetch, Q, QuerySet

from accounts.models import Group
from channels.catalog import CatalogPrice, lookup_default_prices
from channels.models import Channel, ChannelAuditLog, ChannelGroup, ModelPricing
from channels.patterns import match_card, match_pattern

PricingSource = Literal["channel", "catalog", "missing"]


@dataclass(frozen=True)
class PricingMatch:
    """Where a request's price comes from.

    `channel` is the group's active channel whenever there is one, also when its cards do not
    price the model; `card` is set only for source "channel" (its intervals are prefetched),
    `catalog` only for source "catalog".
    """

    source: PricingSource
    card: ModelPricing | None = None
    channel: Channel | None = None
    catalog: CatalogPrice | None = None


def channel_for_group(group_id: int | None) -> Channel | None:
    """The active channel the group is assigned to, or None (one query)."""
    if group_id is None:
        return None
    return Channel.objects.filter(group_links__group_id=group_id, status=Channel.Status.ACTIVE).first()


def channel_cards(*, channel: Channel, platform: str) -> list[ModelPricing]:
    """The channel's cards for one platform, in card order, with their intervals (two queries)."""
    return list(
        ModelPricing.objects.filter(channel=channel, platform=platform)
        .order_by("sort_order", "id")
        .prefetch_related("intervals")
    )


def pricing_lookup(*, group_id: int | None, platform: str, model: str) -> PricingMatch:
    """The card, catalog default or "missing" that prices `model` for a key's group.

    The same rule as billing.pricing.resolve_price (docs/pricing.md#price-lookup).
    """
    channel = channel_for_group(group_id)
    if channel is not None and model:
        card = match_card(channel_cards(channel=channel, platform=platform), model)
        if card is not None:
            return PricingMatch(source="channel", card=card, channel=channel)
    catalog = lookup_default_prices(model) if model else None
    if catalog is not None:
        return PricingMatch(source="catalog", channel=channel, catalog=catalog)
    return PricingMatch(source="missing", channel=channel)


def map_model(*, channel: Channel | None, platform: str, model: str) -> str:
    """The model name after the channel's mapping for `platform`: an exact source beats a prefix.

    Returns `model` unchanged when there is no channel or no source matches.
    """
    if channel is None or not model:
        return model
    rules = (channel.model_mapping or {}).get(platform) or {}
    source = match_pattern(rules.keys(), model)
    return rules[source] if source is not None else model


# -- console reads ----------------------------------------------------------------------------------


def channel_list(*, search: str = "", status: str = "", billing_model_source: str = "") -> QuerySet[Channel]:
    """Channels with their groups and cards prefetched (cards only with their model lists)."""
    channels = Channel.objects.prefetch_related(
        Prefetch("groups", queryset=Group.objects.order_by("sort_order", "id").only("id", "name")),
        Prefetch("pricing_cards", queryset=ModelPricing.objects.only("id", "channel_id", "models")),
    )
    if search:
        channels = channels.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if status:
        channels = channels.filter(status=status)
    if billing_model_source:
        channels = channels.filter(billing_model_source=billing_model_source)
    return channels


def channel_for_edit(*, pk: int) -> Channel:
    """One channel with everything its form shows (raises Channel.DoesNotExist)."""
    return Channel.objects.prefetch_related(
        "groups",
        Prefetch("pricing_cards", queryset=ModelPricing.objects.prefetch_related("intervals")),
    ).get(pk=pk)


def channel_audit_log(*, channel: Channel, limit: int = 50) -> QuerySet[ChannelAuditLog]:
    return channel.audit_log.select_related("actor")[:limit]


def groups_for_channel(*, channel: Channel | None) -> QuerySet[Group]:
    """Groups the channel may take: those in no channel, plus its own."""
    free = Q(channel_links__isnull=True)
    if channel is not None and channel.pk:
        free |= Q(channel_links__channel=channel)
    return Group.objects.filter(free).order_by("sort_order", "id").distinct()


def channel_names_for_groups(group_ids: list[int], *, exclude_channel: Channel | None) -> dict[int, str]:
    """{group id: name of the other channel holding it}, for the groups already taken elsewhere."""
    links = ChannelGroup.objects.filter(group_id__in=group_ids).select_related("channel")
    if exclude_channel is not None and exclude_channel.pk:
        links = links.exclude(channel=exclude_channel)
    return {link.group_id: link.channel.name for link in links}
