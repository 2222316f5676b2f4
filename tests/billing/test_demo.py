"""The demo week of usage goes through usage_record, is idempotent, and leaves every counter
equal to its ledger; the same path runs on SQLite, the embedded default of `make run`."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.db.models import Sum

from accounts.models import GroupAccount
from billing import demo
from billing.models import UsageLog, UsageRollup
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

NOW = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_the_demo_week_is_billed_through_the_service_and_replays_as_a_no_op():
    group = GroupFactory(platform="anthropic", rate_multiplier=Decimal("1.2"))
    account = UpstreamAccountFactory()
    GroupAccount.objects.create(group=group, account=account)
    user = UserFactory(balance=Decimal("500"))
    key = APIKeyFactory(user=user, group=group)
    sub_group = SubscriptionGroupFactory()
    subscriber = UserFactory(balance=Decimal("5"))
    subscription = SubscriptionFactory(
        user=subscriber, group=sub_group, starts_at=datetime(2026, 11, 1, tzinfo=UTC)
    )
    sub_key = APIKeyFactory(user=subscriber, group=sub_group)
    APIKeyFactory(group=SubscriptionGroupFactory())  # no subscription: the gateway would refuse it

    added = demo.seed_usage(now=NOW)
    assert added == 2 * demo.REQUESTS_PER_KEY
    assert demo.seed_usage(now=NOW) == 0
    assert UsageLog.objects.count() == added

    logs = UsageLog.objects.all()
    assert logs.filter(pricing_source="missing").exists() and logs.filter(status_code__gte=400).exists()
    assert logs.filter(cache_read_tokens__gt=0).exists()
    assert logs.order_by("created_at").first().created_at >= datetime(2026, 11, 18, 18, tzinfo=UTC)
    assert logs.order_by("-created_at").first().created_at <= NOW

    spent = logs.filter(api_key=key).aggregate(s=Sum("actual_cost"))["s"]
    user.refresh_from_db()
    key.refresh_from_db()
    account.refresh_from_db()
    assert user.balance == Decimal("500") - spent and key.quota_used_usd == spent
    assert account.quota_used_usd == logs.filter(account=account).aggregate(s=Sum("account_cost"))["s"]
    subscription.refresh_from_db()
    subscriber.refresh_from_db()
    sub_spent = logs.filter(api_key=sub_key).aggregate(s=Sum("actual_cost"))["s"]
    assert subscription.monthly_usage_usd == sub_spent and subscriber.balance == Decimal("5")
    assert UsageRollup.objects.aggregate(s=Sum("actual_cost"))["s"] == spent + sub_spent


SQLITE_SCRIPT = """
from decimal import Decimal
from django.core.management import call_command
from django.db.models import Sum
call_command("migrate", verbosity=0)
from accounts.models import APIKey, Group, GroupAccount, UpstreamAccount, User
from billing import demo
from billing.models import UsageLog, UsageRollup
group = Group.objects.create(name="g", platform="anthropic", rate_multiplier=Decimal("1.5"))
account = UpstreamAccount.objects.create(name="a", platform="anthropic", type="apikey")
GroupAccount.objects.create(group=group, account=account)
user = User.objects.create_user(email="demo@example.com", balance=Decimal("100"))
APIKey.objects.create(user=user, group=group, name="k", key_hash="f" * 64, key_prefix="sk-demo", key_last4="ffff")
first, second = demo.seed_usage(), demo.seed_usage()
rollup = UsageRollup.objects.aggregate(n=Sum("requests"))["n"]
print(first, second, UsageLog.objects.count(), rollup)
"""


def test_the_upserts_run_on_sqlite_too(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "TOLLGATE_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    script = "import django; django.setup()\n" + SQLITE_SCRIPT
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    n = demo.REQUESTS_PER_KEY
    assert done.stdout.split() == [str(n), "0", str(n), str(n)]
