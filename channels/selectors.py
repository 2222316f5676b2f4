"""Reads of channels for the console's pages.

What the gateway and billing read about a channel (its cards, mapping and groups) is the channel
snapshot, channels/snapshots.py; the price lookup rule is channels.pricing.price_lookup.
"""

from __future__ import annotations

from django.db.models import Prefetch, Q, QuerySet

from accounts.models import Group
from channels.models import Channel, ChannelAuditLog, ChannelGroup, ModelPricing

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
