"""Which price bills a request (docs/pricing.md#billing-model,
docs/pricing.md#price-lookup): channel card, catalog default or missing,
for the model chosen by the channel's billing model source, at the account's cache TTL."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import UpstreamAccount
from billing.cost import Usage
from billing.models import UsageLog
from billing.pricing import billing_context, pick_billing_model, resolve_price
from billing.services import usage_record
from channels.catalog import CatalogPrice, CatalogTier, TierPrices
from channels.models import Channel, ChannelGroup, ModelPricing, PricingInterval
from channels.pricing import Price, catalog_price, price_from_catalog
from tests.factories import APIKeyFactory, GroupFactory, UpstreamAccountFactory

pytestmark = pytest.mark.django_db

D = Decimal


def make_channel(group, *, source="channel_mapped", status="active", name="main"):
    channel = Channel.objects.create(name=name, billing_model_source=source, status=status)
    ChannelGroup.objects.create(channel=channel, group=group)
    return channel


def make_card(channel, models, *, platform="anthropic", sort_order=0, **prices):
    return ModelPricing.objects.create(
        channel=channel, platform=platform, models=models, sort_order=sort_order, **prices
    )


def per_mtok(value: str) -> Decimal:
    return D(value) / 1_000_000


@pytest.fixture
def group():
    return GroupFactory(platform="anthropic")


@pytest.fixture
def key(group):
    return APIKeyFactory(group=group)


def context_for(key, account=None):
    return billing_context(api_key_id=key.pk, account_id=account.pk if account else None)


def test_without_a_channel_the_catalog_prices_the_model(key):
    resolution = resolve_price(context=context_for(key), model="claude-sonnet-4-5-20250929")
    assert resolution.pricing_source == "catalog" and resolution.channel_id is None
    assert (resolution.price.input_price, resolution.price.output_price) == (per_mtok("3"), per_mtok("15"))
    assert resolution.price.cache_write_1h_price == per_mtok("6")


def test_a_model_nobody_prices_is_missing(key):
    resolution = resolve_price(context=context_for(key), model="acme-llm-9000")
    assert (resolution.price, resolution.pricing_source) == (None, "missing")


def test_the_channel_card_wins_over_the_catalog(group, key):
    channel = make_channel(group)
    make_card(channel, ["claude-sonnet-4-5"], input_price=per_mtok("2"), output_price=per_mtok("10"))
    resolution = resolve_price(context=context_for(key), model="claude-sonnet-4.5")
    assert (resolution.pricing_source, resolution.channel_id) == ("channel", channel.pk)
    assert resolution.price.input_price == per_mtok("2")


def test_an_exact_name_beats_a_wildcard_in_an_earlier_card(group, key):
    channel = make_channel(group)
    make_card(channel, ["claude-*"], sort_order=0, input_price=per_mtok("1"))
    make_card(channel, ["claude-opus-4-1"], sort_order=1, input_price=per_mtok("9"))
    context = context_for(key)
    assert resolve_price(context=context, model="claude-opus-4-1").price.input_price == per_mtok("9")
    assert resolve_price(context=context, model="claude-haiku-4-5").price.input_price == per_mtok("1")


def test_a_channel_without_a_card_for_the_model_falls_back_to_the_catalog(group, key):
    channel = make_channel(group)
    make_card(channel, ["claude-opus-*"], input_price=per_mtok("1"))
    make_card(channel, ["claude-sonnet-4-5"], platform="openai", input_price=per_mtok("1"))
    resolution = resolve_price(context=context_for(key), model="claude-sonnet-4-5")
    assert (resolution.pricing_source, resolution.channel_id) == ("catalog", channel.pk)
    assert resolution.price.input_price == per_mtok("3")


def test_a_disabled_channel_prices_nothing(group, key):
    channel = make_channel(group, status="disabled")
    make_card(channel, ["claude-sonnet-4-5"], input_price=per_mtok("2"))
    resolution = resolve_price(context=context_for(key), model="claude-sonnet-4-5")
    assert (resolution.pricing_source, resolution.channel_id) == ("catalog", None)


def test_loading_the_context_prices_later_requests_without_queries(group, key, django_assert_num_queries):
    channel = make_channel(group)
    card = make_card(channel, ["claude-*"], input_price=per_mtok("2"))
    PricingInterval.objects.create(card=card, min_tokens=200_000, input_price=per_mtok("4"))
    context = context_for(key, UpstreamAccountFactory())
    with django_assert_num_queries(0):
        price = resolve_price(context=context, model="claude-sonnet-4-5").price
    assert price.intervals[0].input_price == per_mtok("4")


@pytest.mark.parametrize(
    ("source", "billed"),
    [("requested", "sonnet-alias"), ("channel_mapped", "claude-sonnet-4-5"), ("upstream", "claude-opus-4-1")],
)
def test_the_channel_picks_which_model_name_is_billed(group, key, source, billed):
    channel = make_channel(group, source=source)
    make_card(channel, ["sonnet-alias"], input_price=per_mtok("1"))
    make_card(channel, ["claude-sonnet-4-5"], input_price=per_mtok("3"))
    make_card(channel, ["claude-opus-4-1"], input_price=per_mtok("15"))
    result = usage_record(
        request_id="r",
        api_key_id=key.pk,
        account_id=None,
        requested_model="sonnet-alias",
        mapped_model="claude-sonnet-4-5",
        upstream_model="claude-opus-4-1",
        usage=Usage(input_tokens=1_000_000),
    )
    log = UsageLog.objects.get(pk=result.usage_log_id)
    # 1,000,000 input tokens × $1 / $3 / $15 per MTok.
    expected = {"sonnet-alias": D("1"), "claude-sonnet-4-5": D("3"), "claude-opus-4-1": D("15")}[billed]
    assert (log.billing_model, log.billing_model_source, log.pricing_source) == (billed, source, "channel")
    assert log.total_cost == expected and log.channel_id == channel.pk


def test_a_missing_name_falls_back_along_the_chain():
    assert (
        pick_billing_model(source="upstream", requested_model="a", mapped_model="", upstream_model="") == "a"
    )
    assert (
        pick_billing_model(source="upstream", requested_model="a", mapped_model="b", upstream_model="") == "b"
    )
    assert (
        pick_billing_model(source="channel_mapped", requested_model="a", mapped_model="", upstream_model="c")
        == "a"
    )
    assert (
        pick_billing_model(source="requested", requested_model="a", mapped_model="b", upstream_model="c")
        == "a"
    )


@pytest.mark.parametrize(
    ("account_type", "override", "expected"),
    [
        (UpstreamAccount.Type.OAUTH, "5m", "5m"),
        (UpstreamAccount.Type.SETUP_TOKEN, "1h", "1h"),
        (UpstreamAccount.Type.OAUTH, "", None),
        (UpstreamAccount.Type.APIKEY, "1h", None),  # the override is for Anthropic OAuth / setup tokens
    ],
)
def test_the_cache_ttl_override_comes_from_the_account(key, account_type, override, expected):
    account = UpstreamAccountFactory(
        type=account_type, cache_ttl_override=override, rate_multiplier=D("0.25")
    )
    context = context_for(key, account)
    assert context.cache_ttl_override == expected
    assert context.account_rate_multiplier == D("0.25")


def test_a_5m_override_bills_1h_writes_at_the_5m_price(key):
    account = UpstreamAccountFactory(type=UpstreamAccount.Type.OAUTH, cache_ttl_override="5m")
    result = usage_record(
        request_id="r",
        api_key_id=key.pk,
        account_id=account.pk,
        requested_model="claude-sonnet-4-5",
        usage=Usage(cache_creation_1h_tokens=10_000),
    )
    # 10,000 × $3.75/MTok (5m) = 0.0375 rather than 10,000 × $6/MTok = 0.06.
    assert result.breakdown.cache_creation_cost == D("0.0375")
    assert "all cache writes billed as 5m (TTL override)" in result.breakdown.explain()


def test_the_catalog_long_context_tier_becomes_an_interval(key):
    result = usage_record(
        request_id="long",
        api_key_id=key.pk,
        account_id=None,
        requested_model="claude-sonnet-4-5",
        usage=Usage(input_tokens=250_000, output_tokens=1_000),
    )
    # Above 200k context the catalog's tier applies: 250,000 × $6 = 1.5; 1,000 × $22.50 = 0.0225.
    assert result.breakdown.total_cost == D("1.5225")
    assert result.breakdown.interval.min_tokens == 200_000


def test_catalog_gaps_bill_as_input_or_output_never_as_free():
    found = CatalogPrice(
        matched_name="x",
        provider="p",
        input_price=per_mtok("2"),
        output_price=per_mtok("8"),
        cache_write_price=None,
        cache_write_1h_price=None,
        cache_read_price=None,
        image_output_price=None,
        tiers=(CatalogTier(100_000, TierPrices(per_mtok("4"), per_mtok("16"), None, None, None)),),
    )
    price = price_from_catalog(found)
    assert (price.cache_write_price, price.cache_read_price) == (per_mtok("2"), per_mtok("2"))
    assert price.cache_write_1h_price is None  # falls back to the 5m price inside the engine
    assert price.image_output_price == per_mtok("8")
    tier = price.intervals[0]
    assert (tier.min_tokens, tier.max_tokens, tier.tier_label) == (100_000, None, ">100K")
    assert (tier.cache_write_price, tier.cache_read_price) == (per_mtok("4"), per_mtok("4"))


def test_a_catalog_entry_without_token_prices_is_not_a_price():
    found = CatalogPrice("x", "p", None, None, None, None, None, per_mtok("30"))
    assert price_from_catalog(found) is None


def test_the_catalog_card_for_an_image_model_keeps_its_image_price():
    price = catalog_price("gemini-2.5-flash-image")
    assert isinstance(price, Price) and price.image_output_price == per_mtok("30")


def test_empty_card_cache_prices_bill_as_input(group, key):
    channel = make_channel(group)
    make_card(channel, ["claude-*"], input_price=per_mtok("2"), output_price=per_mtok("8"))
    price = resolve_price(context=context_for(key), model="claude-sonnet-4-5").price
    assert (price.cache_write_price, price.cache_read_price, price.image_output_price) == (
        per_mtok("2"),
        per_mtok("2"),
        per_mtok("8"),
    )


def test_a_per_image_card_prices_by_size_tier(group, key):
    channel = make_channel(group)
    card = make_card(channel, ["imagen-*"], billing_mode="image", per_request_price=D("0.04"))
    PricingInterval.objects.create(card=card, tier_label="4K", per_request_price=D("0.12"))
    result = usage_record(
        request_id="img",
        api_key_id=key.pk,
        account_id=None,
        requested_model="imagen-4",
        usage=Usage(image_count=3, image_size_tier="4k"),
    )
    # 3 images × $0.12 (the 4K tier) = 0.36.
    log = UsageLog.objects.get(pk=result.usage_log_id)
    assert (log.billing_mode, log.unit_count, log.unit_cost, log.total_cost) == (
        "image",
        3,
        D("0.36"),
        D("0.36"),
    )
    assert "3 images (4k) × $0.12 (interval '4K') = $0.36" in log.explain()
