"""Default prices from the genai-prices offline snapshot (pure, no DB, no network)."""

from __future__ import annotations

import datetime as dt
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import data as genai_data
from genai_prices import data_snapshot
from genai_prices.types import ModelPrice, TieredPrices

from channels import catalog
from channels.catalog import CatalogTier, default_prices_json, lookup_default_prices


def snapshot_prices(provider_id: str, model_id: str) -> ModelPrice:
    provider = next(p for p in genai_data.providers if p.id == provider_id)
    model = next(m for m in provider.models if m.id == model_id)
    assert isinstance(model.prices, ModelPrice), "expected one unconditional price set"
    return model.prices


def base(value) -> Decimal:
    return value.base if isinstance(value, TieredPrices) else value


def per_token(per_million) -> Decimal:
    return Decimal(str(per_million)) / Decimal(1_000_000)


SONNET_SPELLINGS = [
    "claude-sonnet-4-5",
    "Claude-Sonnet-4.5",
    "anthropic/claude-sonnet-4-5-20250929",
    "claude-sonnet-4-5@20250929",
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
]


@pytest.mark.parametrize("spelling", SONNET_SPELLINGS)
def test_it_finds_claude_sonnet_4_5(spelling):
    price = lookup_default_prices(spelling)
    assert price is not None
    assert (price.provider, price.matched_name) == ("anthropic", "claude-sonnet-4-5")
    assert price.source == "catalog default for claude-sonnet-4-5"
    assert price.input_price == Decimal("0.000003")
    assert price.output_price == Decimal("0.000015")
    assert price.cache_read_price == Decimal("0.0000003")
    assert price.cache_write_price == Decimal("0.00000375")
    assert price.cache_write_1h_price == Decimal("0.000006")
    assert price.image_output_price is None


def test_sonnet_prices_are_what_the_snapshot_says():
    snapshot = snapshot_prices("anthropic", "claude-sonnet-4-5")
    assert base(snapshot.input_mtok) == Decimal("3")
    assert base(snapshot.output_mtok) == Decimal("15")
    assert base(snapshot.cache_read_mtok) == Decimal("0.3")
    assert base(snapshot.cache_write_mtok) == Decimal("3.75")
    assert base(snapshot.cache_write_1h_mtok) == Decimal("6")

    price = lookup_default_prices("claude-sonnet-4-5")
    assert price.input_price == per_token(base(snapshot.input_mtok))
    assert price.cache_write_1h_price == per_token(base(snapshot.cache_write_1h_mtok))


def test_prices_are_exact_decimals_not_float_noise():
    price = lookup_default_prices("claude-sonnet-4-5")
    for value in (price.input_price, price.output_price, price.cache_read_price, price.cache_write_price):
        assert type(value) is Decimal
    # A float detour would give Decimal(3e-06) == 3.0000000000000001e-06, which is not equal.
    assert price.input_price != Decimal(3e-06)
    assert price.input_price.as_tuple() == Decimal("0.000003").as_tuple()
    assert price.cache_read_price * 1_000_000 == Decimal("0.3")


def test_it_offers_the_long_context_tier():
    snapshot = snapshot_prices("anthropic", "claude-sonnet-4-5")
    assert isinstance(snapshot.input_mtok, TieredPrices)
    (snapshot_tier,) = snapshot.input_mtok.tiers

    price = lookup_default_prices("claude-sonnet-4-5")
    (tier,) = price.tiers
    assert isinstance(tier, CatalogTier)
    assert tier.min_tokens == snapshot_tier.start == 200_000
    assert tier.prices.input_price == per_token(snapshot_tier.price) == Decimal("0.000006")
    assert tier.prices.output_price == Decimal("0.0000225")
    assert tier.prices.cache_read_price == Decimal("0.0000006")
    assert tier.prices.cache_write_price == Decimal("0.0000075")
    assert tier.prices.cache_write_1h_price == Decimal("0.000012")


def test_a_model_without_tiers_has_none():
    assert lookup_default_prices("claude-opus-4-1").tiers == ()


def test_it_finds_gpt_4o():
    snapshot = snapshot_prices("openai", "gpt-4o")
    price = lookup_default_prices("gpt-4o")
    assert (price.provider, price.matched_name) == ("openai", "gpt-4o")
    assert price.input_price == per_token(snapshot.input_mtok) == Decimal("0.0000025")
    assert price.output_price == per_token(snapshot.output_mtok) == Decimal("0.00001")
    assert price.cache_read_price == Decimal("0.00000125")
    assert price.cache_write_price is None
    assert price.cache_write_1h_price is None
    assert price.tiers == ()


def test_a_dated_name_the_catalog_prices_separately_keeps_its_price():
    assert lookup_default_prices("gpt-4o-2024-08-06").matched_name == "gpt-4o"
    dated = lookup_default_prices("gpt-4o-2024-05-13")
    assert dated.matched_name == "gpt-4o-2024-05-13"
    assert dated.input_price == Decimal("0.000005")


def test_it_strips_vendor_prefixes_the_catalog_does_not_know():
    assert lookup_default_prices("openai/gpt-4.1-mini").matched_name == "gpt-4.1-mini"
    assert lookup_default_prices("models/gemini-2.5-pro").matched_name == "gemini-2.5-pro"


def test_it_reads_image_output_prices():
    price = lookup_default_prices("gemini-2.5-flash-image")
    assert price.image_output_price == Decimal("0.00003")


@pytest.mark.parametrize("model", ["totally-unknown-model", "claude-unknown-99", "", "   "])
def test_an_unknown_model_is_not_found(model):
    assert lookup_default_prices(model) is None
    answer = default_prices_json(model)
    assert answer["found"] is False
    assert answer["input_price"] is None
    assert answer["tiers"] == []


def test_the_json_answer_uses_plain_decimal_strings():
    answer = default_prices_json("Claude-Sonnet-4.5")
    assert answer == {
        "found": True,
        "input_price": "0.000003",
        "output_price": "0.000015",
        "cache_write_price": "0.00000375",
        "cache_write_1h_price": "0.000006",
        "cache_read_price": "0.0000003",
        "image_output_price": None,
        "tiers": [
            {
                "min_tokens": 200_000,
                "max_tokens": None,
                "input_price": "0.000006",
                "output_price": "0.0000225",
                "cache_write_price": "0.0000075",
                "cache_write_1h_price": "0.000012",
                "cache_read_price": "0.0000006",
            }
        ],
        "source": "catalog default for claude-sonnet-4-5",
        "platform": "anthropic",
        "catalog": "genai-prices 0.2.3, prices as of 2026-11-10",
    }


def test_dated_price_changes_apply_from_their_start_date():
    # o3's price dropped from $10 to $2 input on 2025-06-10.
    before = catalog._lookup("o3", dt.date(2025, 6, 9))
    after = catalog._lookup("o3", dt.date(2025, 6, 10))
    assert before.input_price == Decimal("0.00001")
    assert after.input_price == Decimal("0.000002")


def test_time_of_day_windows_resolve_to_the_peak_price():
    # deepseek-chat: $0.135 off-peak, $0.27 in the 00:30-16:30 UTC window.
    price = lookup_default_prices("deepseek-chat")
    assert price.input_price == Decimal("0.00000027")
    assert price.output_price == Decimal("0.0000011")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the catalog must not touch the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    catalog._lookup.cache_clear()
    catalog._snapshot.cache_clear()
    yield
    catalog._lookup.cache_clear()
    catalog._snapshot.cache_clear()


def test_it_works_offline_and_ignores_a_custom_snapshot(no_network):
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=[], from_auto_update=True))
    try:
        price = lookup_default_prices("claude-sonnet-4-5")
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert price.input_price == Decimal("0.000003")


@pytest.mark.parametrize(
    ("model", "platform"),
    [
        ("gpt-4o", "openai"),
        ("claude-opus-4-1", "anthropic"),
        ("gemini-2.5-flash", "gemini"),
        ("deepseek-chat", None),
    ],
)
def test_a_models_vendor_names_its_platform_when_it_is_one_of_ours(model, platform):
    assert catalog.default_prices_json(model)["platform"] == platform


def test_the_catalog_named_on_the_form_is_the_installed_one():
    from importlib.metadata import version

    assert version(catalog.CATALOG_PACKAGE) == catalog.CATALOG_VERSION
    requirements = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    assert f"{catalog.CATALOG_PACKAGE}=={catalog.CATALOG_VERSION}" in requirements
