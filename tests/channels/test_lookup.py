"""The price lookup billing calls: channel card, else catalog default, else missing
(docs/pricing.md#price-lookup). Driven as billing and the gateway use it: the group's channel
snapshot, then its cards for the platform."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from channels.catalog import CatalogPrice
from channels.models import Channel
from channels.patterns import pattern_matches, select_interval, select_tier_interval
from channels.pricing import ChannelCard, Price, price_lookup
from channels.rules import CardSpec, pattern_overlap_problems
from channels.snapshots import channel_snapshot_for_group, channel_snapshot_of
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    PricingIntervalFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def group():
    return GroupFactory(platform="anthropic")


@pytest.fixture
def channel(group):
    channel = ChannelFactory(name="Claude retail")
    ChannelGroupFactory(channel=channel, group=group)
    return channel


@dataclass(frozen=True)
class Found:
    source: str
    card: ChannelCard | None  # the channel card that priced it
    channel: int | None  # the group's active channel, also when its cards do not price the model
    catalog: CatalogPrice | None
    price: Price | None


def lookup_by_id(group_id, model, platform="anthropic") -> Found:
    channel = channel_snapshot_for_group(group_id)
    match = (
        channel.price_for(platform=platform, model=model) if channel else price_lookup(cards=(), model=model)
    )
    return Found(match.source, match.card, channel.id if channel else None, match.catalog, match.price)


def lookup(group, model, platform="anthropic") -> Found:
    return lookup_by_id(group.pk, model, platform)


def models_of(card) -> tuple[str, ...]:
    """A stored card's patterns, as the snapshot's card carries them."""
    return tuple(card.models)


@pytest.mark.parametrize(
    "spelling",
    [
        "claude-sonnet-4-5",
        "Claude-Sonnet-4.5",
        "anthropic/claude-sonnet-4-5-20250929",
        " CLAUDE-sonnet-4-5@20250929",
    ],
)
def test_it_finds_the_exact_card_under_any_spelling_of_the_name(group, channel, spelling):
    card = ModelPricingFactory(
        channel=channel, models=["claude-sonnet-4-5"], input_price=Decimal("0.0000033")
    )
    match = lookup(group, spelling)
    assert (match.source, match.card.models, match.channel, match.catalog) == (
        "channel",
        models_of(card),
        channel.pk,
        None,
    )
    assert match.card.price.input_price == Decimal("0.0000033")


def test_a_card_typed_with_a_dated_or_dotted_name_still_matches(group, channel):
    card = ModelPricingFactory(channel=channel, models=["anthropic/Claude-Sonnet-4.5-20250929"])
    assert lookup(group, "claude-sonnet-4-5").card.models == models_of(card)


def test_it_falls_back_to_the_first_wildcard_in_card_order(group, channel):
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"], sort_order=0)
    first = ModelPricingFactory(channel=channel, models=["gpt-4o", "claude-opus-*"], sort_order=1)
    ModelPricingFactory(channel=channel, models=["claude-*"], sort_order=2)
    assert lookup(group, "claude-opus-4-1-20250805").card.models == models_of(first)
    assert lookup(group, "claude-haiku-4-5").card.models == ("claude-*",)


def test_an_exact_name_beats_a_wildcard_in_an_earlier_card(group, channel):
    ModelPricingFactory(channel=channel, models=["claude-*"], sort_order=0)
    exact = ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"], sort_order=1)
    assert lookup(group, "Claude-Sonnet-4.5").card.models == models_of(exact)


def test_only_cards_of_the_requested_platform_count(group, channel):
    ModelPricingFactory(channel=channel, platform="openai", models=["claude-sonnet-4-5"])
    match = lookup(group, "claude-sonnet-4-5")
    assert match.source == "catalog" and match.channel == channel.pk
    assert match.catalog.input_price == Decimal("0.000003")


def test_a_model_the_channel_does_not_price_gets_the_catalog_default(group, channel):
    ModelPricingFactory(channel=channel, models=["claude-opus-4-1"])
    match = lookup(group, "anthropic/claude-sonnet-4-5-20250929")
    assert (match.source, match.card, match.channel) == ("catalog", None, channel.pk)
    assert match.catalog.matched_name == "claude-sonnet-4-5"


def test_an_unknown_model_is_missing(group, channel):
    match = lookup(group, "totally-made-up-model-9000")
    assert (match.source, match.card, match.catalog, match.channel) == ("missing", None, None, channel.pk)
    assert lookup_by_id(None, "").source == "missing"


def test_a_disabled_channel_prices_nothing(group, channel):
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    Channel.objects.filter(pk=channel.pk).update(status=Channel.Status.DISABLED)
    match = lookup(group, "claude-sonnet-4-5")
    assert (match.source, match.channel) == ("catalog", None)
    assert channel_snapshot_for_group(group.pk) is None


def test_a_group_without_a_channel_or_no_group_gets_the_catalog(channel):
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    other = GroupFactory()
    assert lookup(other, "claude-sonnet-4-5").source == "catalog"
    assert lookup_by_id(None, "claude-sonnet-4-5").source == "catalog"


def test_a_channel_card_needs_four_queries_and_its_intervals_come_with_it(
    group, channel, django_assert_num_queries
):
    card = ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    PricingIntervalFactory(card=card, min_tokens=200_000, max_tokens=None, input_price=Decimal("0.000006"))
    # The channel snapshot's loader: channel, cards, intervals, groups.
    with django_assert_num_queries(4):
        match = lookup(group, "claude-sonnet-4-5")
    with django_assert_num_queries(0):
        assert select_interval(match.card.price.intervals, 200_001).input_price == Decimal("0.000006")
        assert select_interval(match.card.price.intervals, 200_000) is None


@pytest.mark.parametrize(
    ("context", "expected"),
    [(1000, None), (1001, "mid"), (2000, "mid"), (2001, "top"), (0, None), (10**9, "top")],
)
def test_the_interval_holds_min_exclusive_and_max_inclusive(group, channel, context, expected):
    card = ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    PricingIntervalFactory(card=card, min_tokens=1000, max_tokens=2000, tier_label="mid", sort_order=0)
    PricingIntervalFactory(card=card, min_tokens=2000, max_tokens=None, tier_label="top", sort_order=1)
    interval = select_interval(lookup(group, "claude-sonnet-4-5").card.price.intervals, context)
    assert (interval.tier_label if interval else None) == expected


def test_an_image_card_finds_its_tier_by_label(group, channel):
    card = ModelPricingFactory(
        channel=channel,
        models=["gemini-2.5-flash-image"],
        billing_mode="image",
        input_price=None,
        output_price=None,
    )
    for order, label in enumerate(["1K", "2K", "4K"]):
        PricingIntervalFactory(
            card=card, tier_label=label, per_request_price=Decimal(order + 1) / 10, sort_order=order
        )
    found = lookup(group, "gemini-2.5-flash-image").card
    assert select_tier_interval(found.price.intervals, " 2k ").per_request_price == Decimal("0.2")
    assert (
        select_tier_interval(found.price.intervals, "8K") is None
        and select_tier_interval(found.price.intervals, None) is None
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bounds=st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=5, unique=True),
    unbounded=st.booleans(),
    gaps=st.sets(st.integers(min_value=0, max_value=5)),
    context=st.integers(min_value=0, max_value=6000),
)
def test_the_stored_intervals_pick_the_first_band_holding_the_context(
    group, channel, bounds, unbounded, gaps, context
):
    channel.pricing_cards.all().delete()
    card = ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    points = sorted({0, *bounds})
    bands = list(zip(points, points[1:], strict=False)) + ([(points[-1], None)] if unbounded else [])
    bands = [band for position, band in enumerate(bands) if position not in gaps]
    for order, (low, high) in enumerate(bands):
        PricingIntervalFactory(
            card=card, min_tokens=low, max_tokens=high, tier_label=str(order), sort_order=order
        )
    found = select_interval(lookup(group, "claude-sonnet-4-5").card.price.intervals, context)
    holding = [
        str(i) for i, (low, high) in enumerate(bands) if low < context and (high is None or context <= high)
    ]
    assert (found.tier_label if found else None) == (holding[0] if holding else None)


PATTERN_PIECES = st.sampled_from(["claude-", "sonnet-", "opus-", "4", "-5", "gpt-", "4o", "mini", "*"])
PATTERN = st.lists(PATTERN_PIECES, min_size=1, max_size=4).map("".join).filter(lambda p: "*" not in p[:-1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    patterns=st.lists(PATTERN, min_size=1, max_size=5),
    model=st.lists(PATTERN_PIECES.filter(lambda p: p != "*"), min_size=1, max_size=4).map("".join),
)
def test_cards_without_overlaps_price_a_model_the_same_in_any_order(group, channel, patterns, model):
    cards = [CardSpec(platform="anthropic", models=(pattern,)) for pattern in patterns]
    # The form refuses overlapping cards; the overlap rule itself is property-tested in test_patterns.py.
    assume(not pattern_overlap_problems([(c.platform, c.models) for c in cards]))
    for order in (patterns, list(reversed(patterns))):
        channel.pricing_cards.all().delete()
        for position, pattern in enumerate(order):
            ModelPricingFactory(channel=channel, models=[pattern], sort_order=position)
        match = lookup(group, model)
        matching = [p for p in patterns if pattern_matches(p, model)]
        assert len(matching) <= 1
        if matching:
            assert match.source == "channel" and list(match.card.models) == matching
        else:
            assert match.source != "channel"


def test_overlapping_patterns_on_one_platform_are_reported_on_the_later_card():
    problems = pattern_overlap_problems(
        [("anthropic", ["claude-*"]), ("openai", ["claude-sonnet-4"]), ("anthropic", ["claude-sonnet-4"])]
    )
    assert [(p.card, p.field, p.message) for p in problems] == [
        (2, "models", "`claude-*` already covers `claude-sonnet-4` (in card 1).")
    ]


def map_model(*, channel, platform, model):
    """The channel's mapping as the gateway applies it; with no channel a name passes through."""
    return channel_snapshot_of(channel).map_model(platform=platform, model=model) if channel else model


class TestModelMapping:
    def test_an_exact_source_beats_a_prefix(self, channel):
        channel.model_mapping = {
            "anthropic": {"claude-*": "claude-sonnet-4-5", "claude-opus-4-1": "claude-opus-4-1-20250805"}
        }
        assert (
            map_model(channel=channel, platform="anthropic", model="Claude-Opus-4.1")
            == "claude-opus-4-1-20250805"
        )
        assert map_model(channel=channel, platform="anthropic", model="claude-3-haiku") == "claude-sonnet-4-5"

    def test_unmapped_models_other_platforms_and_no_channel_pass_through(self, channel):
        channel.model_mapping = {"openai": {"gpt-4*": "gpt-4.1"}}
        assert map_model(channel=channel, platform="openai", model="o3") == "o3"
        assert map_model(channel=channel, platform="anthropic", model="gpt-4o") == "gpt-4o"
        assert map_model(channel=None, platform="openai", model="gpt-4o") == "gpt-4o"
        assert map_model(channel=channel, platform="openai", model="gpt-4o") == "gpt-4.1"
