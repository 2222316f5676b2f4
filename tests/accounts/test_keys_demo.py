"""seed_demo's keys and subscriptions: every state, made through the services, idempotent."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models import Sum

from accounts import demo
from accounts.models import APIKey, Subscription, UpstreamAccount
from billing.models import UsageLog
from tests.factories import StaffFactory

pytestmark = pytest.mark.django_db


def test_the_demo_has_keys_in_every_state_and_live_and_ended_subscriptions():
    call_command("seed_demo", password="demo-password-1", stdout=StringIO())

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
    assert keys["frank-plus"].group.is_subscription and keys["frank-plus"].quota_used_usd > 0

    statuses = {s.user.email: s.status for s in Subscription.objects.select_related("user")}
    assert statuses == {
        "frank@example.com": "active",
        "carol@example.com": "active",
        "bob@example.com": "suspended",
        "erin@example.com": "expired",
    }
    assert Subscription.objects.get(user__email="frank@example.com").monthly_usage_usd > 0

    # Every counter the console shows agrees with the ledger: demo usage went through usage_record.
    for key in keys.values():
        spent = UsageLog.objects.filter(api_key=key).aggregate(s=Sum("actual_cost"))["s"] or Decimal(0)
        assert key.quota_used_usd == spent, key.name
    for account in UpstreamAccount.objects.all():
        cost = UsageLog.objects.filter(account=account).aggregate(s=Sum("account_cost"))["s"] or Decimal(0)
        assert account.quota_used_usd == cost, account.name

    counts = (APIKey.objects.count(), Subscription.objects.count(), UsageLog.objects.count())
    call_command("seed_demo", password="demo-password-1", stdout=StringIO())
    assert (APIKey.objects.count(), Subscription.objects.count(), UsageLog.objects.count()) == counts


def test_the_demo_reuses_the_groups_seeded_before_it():
    admin = StaffFactory()
    demo.seed_groups_and_accounts()
    demo.seed_customers(admin)
    demo.seed_keys_and_subscriptions(admin)
    frank = APIKey.objects.select_related("group").get(name="frank-plus")
    assert frank.group.name == "openai-subscription" and frank.group.accounts.exists()
