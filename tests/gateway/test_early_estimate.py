"""The hold's estimate priced on the event loop while the admission's round trip is under way
(docs/gateway.md#holds-and-settle): the same price, not priced twice, never before the catalog."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.snapshots import key_snapshot_load_by_id
from billing.cost import Usage
from channels import catalog
from channels.snapshots import channel_snapshot_for_group
from gateway.holds import Estimate, early_estimate, estimate, hold_request
from tests.factories import APIKeyFactory, GroupFactory, UserFactory

pytestmark = pytest.mark.django_db

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}


@pytest.fixture
def snapshots():
    key = APIKeyFactory(user=UserFactory(balance=Decimal("10")), group=GroupFactory(platform="openai"))
    return key_snapshot_load_by_id(key.pk), channel_snapshot_for_group(key.group_id)


def priced(snapshots, pricing=estimate):
    key, channel = snapshots
    return pricing(key=key, channel=channel, kind="chat", body=BODY, model="gpt-4o", mapped_model="gpt-4o")


def test_the_early_estimate_is_the_estimate_the_hold_would_price(snapshots):
    catalog.catalog_warm()
    early = priced(snapshots, early_estimate)
    assert early == priced(snapshots)
    assert early.usage.output_tokens == 24 and early.actual_usd > 0


def test_a_hold_takes_the_estimate_it_is_given_instead_of_pricing_again(snapshots):
    key, channel = snapshots
    given = Estimate(
        usage=Usage(input_tokens=7, output_tokens=24), actual_usd=Decimal("0.5"), total_usd=Decimal("0.4")
    )
    request = hold_request(
        request_id="r1",
        key=key,
        channel=channel,
        accounts=[],
        kind="chat",
        body=BODY,
        model="gpt-4o",
        mapped_model="gpt-4o",
        protocol="openai",
        stream=False,
        guess=given,
    )
    assert request.amount_usd == Decimal("0.5")
    assert request.estimate["input_tokens"] == 7


def test_nothing_is_priced_early_before_the_catalog_is_loaded(snapshots):
    catalog._snapshot.cache_clear()
    try:
        assert not catalog.catalog_loaded()
        assert priced(snapshots, early_estimate) is None
        assert not catalog.catalog_loaded(), "asking did not import the catalog on the event loop"
    finally:
        catalog.catalog_warm()
    assert priced(snapshots, early_estimate) is not None
