"""seed_demo's keys and subscriptions: every state, made through the services, idempotent."""

from __future__ import annotations

import pytest

from accounts import demo
from accounts.models import APIKey, Subscription
from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


def test_the_demo_has_keys_in_every_state_and_live_and_ended_subscriptions():
    admin = StaffFactory()
    demo.seed_customers(admin)
    demo.seed_keys_and_subscriptions(admin)  # on its own: it makes the groups it needs

    keys = {key.name: key for key in APIKey.objects.select_related("group")}
    assert {key.current_status for key in keys.values()} == {
        "active",
        "quota_exhausted",
        "expired",
        "disabled",
    }
    assert keys["bob-trial"].status == "quota_exhausted" and keys["carol-ci"].status == "expired"
    assert keys["dave-old-laptop"].status == "disabled"
    assert keys["alice-office"].is_ip_restricted and keys["alice-office"].status == "active"
    assert keys["frank-plus"].group.is_subscription and keys["frank-plus"].usage_5h_usd > 0

    statuses = {s.user.email: s.status for s in Subscription.objects.select_related("user")}
    assert statuses == {
        "frank@example.com": "active",
        "carol@example.com": "active",
        "bob@example.com": "suspended",
        "erin@example.com": "expired",
    }
    assert Subscription.objects.get(user__email="frank@example.com").weekly_usage_usd > 0

    counts = (APIKey.objects.count(), Subscription.objects.count())
    demo.seed_keys_and_subscriptions(admin)
    assert (APIKey.objects.count(), Subscription.objects.count()) == counts


def test_the_demo_reuses_the_groups_seeded_before_it():
    admin = StaffFactory()
    demo.seed_groups_and_accounts()
    demo.seed_customers(admin)
    demo.seed_keys_and_subscriptions(admin)
    frank = APIKey.objects.select_related("group").get(name="frank-plus")
    assert frank.group.name == "openai-subscription" and frank.group.accounts.exists()
