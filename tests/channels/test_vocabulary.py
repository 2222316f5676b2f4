"""One pricing vocabulary: each choice list, price type, selection rule and money format is defined once."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

from billing.models import UsageLog, UsageRollup
from channels.models import Channel, ModelPricing
from channels.patterns import select_interval, select_tier_interval
from channels.pricing import BillingMode, BillingModelSource, PriceInterval, PricingSource

ROOT = Path(__file__).resolve().parent.parent.parent
APPS = ("common", "accounts", "channels", "billing", "gateway", "console", "config", "bench")
# name -> the one module allowed to define it
HOMES = {
    "BillingMode": "channels/pricing.py",
    "BillingModelSource": "channels/pricing.py",
    "PricingSource": "channels/pricing.py",
    "Price": "channels/pricing.py",
    "PriceInterval": "channels/pricing.py",
    "ChannelCard": "channels/pricing.py",
    "price_lookup": "channels/pricing.py",
    "price_from_catalog": "channels/pricing.py",
    "select_interval": "channels/patterns.py",
    "select_tier_interval": "channels/patterns.py",
    "format_usd": "common/money.py",
    "format_usd_exact": "common/money.py",
    "format_per_mtok": "common/money.py",
    "format_per_mtok_exact": "common/money.py",
    "format_multiplier": "common/money.py",
}


def defined_names(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            yield node.name
        elif isinstance(node, ast.TypeAlias):
            yield node.name.id
        elif isinstance(node, ast.Assign):
            yield from (target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield node.target.id


def definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for name in defined_names(ast.parse(path.read_text(), filename=str(path))):
                if name in HOMES:
                    found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_each_pricing_concept_and_money_format_is_defined_in_one_place():
    assert definitions() == {name: [home] for name, home in HOMES.items()}


def test_the_ledger_and_the_channel_models_store_the_same_choices():
    assert UsageLog._meta.get_field("pricing_source").choices == PricingSource.choices
    assert UsageRollup._meta.get_field("pricing_source").choices == PricingSource.choices
    assert UsageLog._meta.get_field("billing_mode").choices == BillingMode.choices
    assert ModelPricing._meta.get_field("billing_mode").choices == BillingMode.choices
    assert UsageLog._meta.get_field("billing_model_source").choices == BillingModelSource.choices
    assert Channel._meta.get_field("billing_model_source").choices == BillingModelSource.choices


def test_intervals_are_chosen_in_card_order_whatever_order_they_arrive_in():
    wide = PriceInterval(min_tokens=0, max_tokens=None, tier_label="4K", sort_order=20)
    narrow = PriceInterval(
        min_tokens=0, max_tokens=100, tier_label="4k", per_request_price=Decimal(1), sort_order=10
    )
    assert select_interval((wide, narrow), 50) is narrow
    assert select_tier_interval((wide, narrow), " 4K ") is narrow
