"""The channel snapshot: a channel's pricing and mapping as the gateway caches it and billing prices from it.

Same contract as accounts.snapshots (immutable, JSON form, SCHEMA, loaded_at); the channel
services announce their changes through accounts.snapshots.snapshots_changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from django.db.models import Prefetch
from django.utils import timezone

from accounts.snapshots import JSONSnapshot
from channels.models import Channel, ModelPricing, PricingInterval
from channels.patterns import match_pattern
from channels.pricing import ChannelCard, Price, PriceInterval, PriceMatch, first_set, price_lookup
from channels.rules import CardSpec


@dataclass(frozen=True, slots=True)
class ChannelSnapshot(JSONSnapshot):
    SCHEMA: ClassVar[int] = 1

    id: int
    name: str
    status: str
    billing_model_source: str
    restrict_models: bool  # refuse models that no card of the request's platform prices
    model_mapping: dict[str, dict[str, str]]  # {platform: {source pattern: target model}}
    cards: dict[str, tuple[ChannelCard, ...]]  # {platform: its cards in card order}
    group_ids: tuple[int, ...]
    loaded_at: datetime

    def cards_for(self, platform: str) -> tuple[ChannelCard, ...]:
        return self.cards.get(platform, ())

    def price_for(self, *, platform: str, model: str) -> PriceMatch:
        """The price of `model` on `platform` by this channel's cards, else the catalog's."""
        return price_lookup(cards=self.cards_for(platform), model=model)

    def map_model(self, *, platform: str, model: str) -> str:
        """The model name after this channel's mapping for `platform`: an exact source beats a
        prefix. `model` unchanged when no source matches."""
        rules = self.model_mapping.get(platform) or {}
        source = match_pattern(rules.keys(), model) if model else None
        return rules[source] if source is not None else model


def channel_snapshot_for_group(group_id: int | None) -> ChannelSnapshot | None:
    """The snapshot of the active channel the group is assigned to, or None. Four queries
    (one when the group has no active channel)."""
    if group_id is None:
        return None
    channel = (
        Channel.objects.filter(group_links__group_id=group_id, status=Channel.Status.ACTIVE)
        .prefetch_related(
            Prefetch(
                "pricing_cards",
                queryset=ModelPricing.objects.order_by("sort_order", "id").prefetch_related(
                    Prefetch("intervals", queryset=PricingInterval.objects.order_by("sort_order", "id"))
                ),
            ),
            "group_links",
        )
        .first()
    )
    return None if channel is None else channel_snapshot_of(channel)


def channel_snapshot_of(channel: Channel) -> ChannelSnapshot:
    """Build the snapshot from a channel whose cards (with intervals) and group links are loaded."""
    cards: dict[str, list[ChannelCard]] = {}
    for card in channel.pricing_cards.all():
        cards.setdefault(card.platform, []).append(channel_card(card))
    return ChannelSnapshot(
        id=channel.pk,
        name=channel.name,
        status=channel.status,
        billing_model_source=channel.billing_model_source,
        restrict_models=channel.restrict_models,
        model_mapping=channel.mapping,  # its well-formed rules, as the console shows them
        cards={platform: tuple(rows) for platform, rows in cards.items()},
        group_ids=tuple(sorted(link.group_id for link in channel.group_links.all())),
        loaded_at=timezone.now(),
    )


_INTERVAL_FIELDS = tuple(f.name for f in dataclasses.fields(PriceInterval))


def channel_card(card: ModelPricing) -> ChannelCard:
    """A stored card (intervals prefetched) as a pure ChannelCard.

    Empty prices follow the catalog's gap rules, so an operator who leaves a cache price empty
    bills those tokens as input rather than free; an explicit 0 is free.
    """
    intervals = tuple(
        PriceInterval(**{name: getattr(row, name) for name in _INTERVAL_FIELDS})
        for row in card.intervals.all()
    )
    return _card(card, intervals)


def channel_card_of_spec(spec: CardSpec) -> ChannelCard:
    """A card as typed on the channel form, not saved yet, exactly as `channel_card` will read it
    once saved (the price preview, docs/pricing.md#price-preview)."""
    return _card(spec, tuple(spec.intervals))


def channel_cards_of_specs(specs: Iterable[CardSpec]) -> dict[str, tuple[ChannelCard, ...]]:
    """{platform: its cards in card order}, as a ChannelSnapshot holds them."""
    cards: dict[str, list[ChannelCard]] = {}
    for spec in specs:
        cards.setdefault(spec.platform, []).append(channel_card_of_spec(spec))
    return {platform: tuple(rows) for platform, rows in cards.items()}


def _card(card: ModelPricing | CardSpec, intervals: tuple[PriceInterval, ...]) -> ChannelCard:
    input_price = first_set(card.input_price, Decimal(0))
    output_price = first_set(card.output_price, Decimal(0))
    price = Price(
        input_price=input_price,
        output_price=output_price,
        cache_write_price=first_set(card.cache_write_price, input_price),
        cache_write_1h_price=card.cache_write_1h_price,
        cache_read_price=first_set(card.cache_read_price, input_price),
        image_output_price=first_set(card.image_output_price, output_price),
        per_request_price=card.per_request_price,
        billing_mode=card.billing_mode,
        intervals=intervals,
    )
    return ChannelCard(models=tuple(card.models), price=price)
