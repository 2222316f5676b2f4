"""Key and upstream-account snapshots: what they hold, their JSON form, and what loading them costs."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.crypto import encrypt_credentials
from accounts.snapshots import (
    AccountQuota,
    KeySnapshot,
    SnapshotSchemaError,
    UpstreamAccountSnapshot,
    key_snapshot_load,
    key_snapshot_load_by_id,
    upstream_account_snapshots_load,
)
from tests.factories import (
    APIKeyFactory,
    GroupAccountFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
NOW = datetime(2026, 5, 18, 12, tzinfo=UTC)


@pytest.fixture
def group():
    fallback = GroupFactory(name="fallback")
    group = GroupFactory(
        name="claude-pro",
        rate_multiplier=D("1.25"),
        rpm_limit=60,
        timezone="Europe/Berlin",
        fallback_group=fallback,
        claude_code_only=True,
        image_price_2k=D("0.134"),
    )
    second = UpstreamAccountFactory(priority=1)
    first = UpstreamAccountFactory(priority=99)
    GroupAccountFactory(group=group, account=second, priority=20)
    GroupAccountFactory(group=group, account=first, priority=10)
    group.model_routing = {"claude-opus-*": [second.pk]}
    group.model_routing_enabled = True
    group.save()
    return group


@pytest.fixture
def key(group):
    user = UserFactory(balance=D("12.5"), concurrency=4, rpm_limit=30)
    exclusive = GroupFactory(is_exclusive=True)
    user.allowed_groups.set([exclusive])
    user.group_rates.create(group=group, rate_multiplier=D("0.9"))
    return APIKeyFactory(
        user=user,
        group=group,
        name="laptop",
        ip_allowlist=["10.0.0.0/8", "203.0.113.7"],
        ip_denylist=["10.9.0.0/16"],
        quota_usd=D("50"),
        quota_used_usd=D("7.5"),
        rate_limit_5h_usd=D("2"),
        usage_5h_usd=D("1.25"),
        window_5h_start=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(days=3),
        timezone="Asia/Tokyo",
    )


def test_a_key_snapshot_holds_the_key_its_user_and_its_group(key, group):
    snapshot = key_snapshot_load(key.key_hash)

    assert (snapshot.id, snapshot.name, snapshot.user_id, snapshot.group_id) == (
        key.pk,
        "laptop",
        key.user_id,
        group.pk,
    )
    assert snapshot.ip_allowlist == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("203.0.113.7/32"),
    )
    assert snapshot.ip_denylist == (ipaddress.ip_network("10.9.0.0/16"),)
    assert (snapshot.quota_usd, snapshot.quota_used_usd) == (D("50"), D("7.5"))
    assert (snapshot.rate_limit_5h_usd, snapshot.usage_5h_usd) == (D("2"), D("1.25"))
    assert snapshot.window_5h_start == NOW - timedelta(hours=1)
    assert snapshot.expires_at == NOW + timedelta(days=3)
    assert snapshot.timezone_name == "Asia/Tokyo"

    user = snapshot.user
    assert (user.id, user.balance, user.concurrency, user.rpm_limit) == (key.user_id, D("12.5"), 4, 30)
    assert user.allowed_group_ids == set(key.user.allowed_groups.values_list("pk", flat=True))
    assert user.group_rate_multiplier == D("0.9") and user.is_enabled

    snap_group = snapshot.group
    assert (snap_group.name, snap_group.rate_multiplier, snap_group.rpm_limit) == (
        "claude-pro",
        D("1.25"),
        60,
    )
    assert snap_group.fallback_group_id == group.fallback_group_id
    assert snap_group.claude_code_only and snap_group.image_price_2k == D("0.134")
    assert snap_group.timezone_name == "Europe/Berlin" and not snap_group.is_subscription
    # Members in the group's own priority order, not the accounts' global one.
    assert [(m.priority) for m in snap_group.members] == [10, 20]
    assert snap_group.model_routing_enabled
    assert snap_group.model_routing == {"claude-opus-*": (snap_group.members[1].account_id,)}
    assert snap_group.routed_account_ids("Claude-Opus-4-5") == [snap_group.members[1].account_id]
    assert snap_group.routed_account_ids("claude-haiku-4-5") is None
    assert snapshot.subscription is None


def test_an_unknown_hash_has_no_snapshot_and_the_id_loader_finds_the_same(key):
    assert key_snapshot_load("0" * 64) is None
    by_id = key_snapshot_load_by_id(key.pk)
    by_hash = key_snapshot_load(key.key_hash)
    assert by_id.id == by_hash.id and by_id.user == by_hash.user and by_id.group == by_hash.group


def test_a_user_without_an_override_has_none_and_a_key_without_a_group_has_no_group():
    key = APIKeyFactory(group=None)
    snapshot = key_snapshot_load(key.key_hash)
    assert snapshot.group is None and snapshot.user.group_rate_multiplier is None


def test_a_subscription_group_key_carries_the_live_subscription_else_the_latest():
    group = SubscriptionGroupFactory(daily_limit_usd=D("5"))
    user = UserFactory()
    key = APIKeyFactory(user=user, group=group)
    old = SubscriptionFactory(user=user, group=group, status="revoked", starts_at=NOW - timedelta(days=90))
    assert key_snapshot_load(key.key_hash).subscription.id == old.pk  # only one: the latest
    live = SubscriptionFactory(user=user, group=group, starts_at=NOW - timedelta(days=1))
    # A revoked one that ran later still loses to the live one.
    SubscriptionFactory(
        user=user, group=group, status="revoked", starts_at=NOW, expires_at=NOW + timedelta(days=300)
    )
    snapshot = key_snapshot_load(key.key_hash)
    assert snapshot.subscription.id == live.pk
    assert snapshot.subscription.starts_at == NOW - timedelta(days=1)
    assert snapshot.subscription.is_live(NOW)
    assert snapshot.group.daily_limit_usd == D("5") and snapshot.group.is_subscription


@pytest.mark.parametrize(
    ("shape", "queries"),
    [("no group", 2), ("standard group", 3), ("subscription group", 4)],
)
def test_loading_a_key_snapshot_is_a_fixed_number_of_queries(shape, queries, django_assert_num_queries):
    user = UserFactory()
    user.allowed_groups.set([GroupFactory(is_exclusive=True) for _ in range(5)])
    if shape == "no group":
        group = None
    elif shape == "standard group":
        group = GroupFactory()
    else:
        group = SubscriptionGroupFactory()
        for _ in range(4):
            SubscriptionFactory(user=user, group=group, status="revoked")
        SubscriptionFactory(user=user, group=group)
    if group is not None:
        for _ in range(6):
            GroupAccountFactory(group=group)
        user.group_rates.create(group=group, rate_multiplier=D("2"))
    key = APIKeyFactory(user=user, group=group)
    with django_assert_num_queries(queries):
        key_snapshot_load(key.key_hash)


def test_a_key_snapshot_survives_json_unchanged(key):
    SubscriptionFactory(user=key.user, group=SubscriptionGroupFactory())
    snapshot = key_snapshot_load(key.key_hash)
    text = json.dumps(snapshot.as_dict())
    assert KeySnapshot.from_dict(json.loads(text)) == snapshot
    data = json.loads(text)
    # Money travels as exact strings, never floats.
    assert data["quota_used_usd"] == "7.50000000" and data["user"]["balance"] == "12.50000000"
    assert data["ip_allowlist"] == ["10.0.0.0/8", "203.0.113.7/32"]


def test_a_key_snapshot_with_a_subscription_survives_json_unchanged():
    group = SubscriptionGroupFactory()
    user = UserFactory()
    SubscriptionFactory(
        user=user, group=group, daily_usage_usd=D("0.12345678"), daily_window_start=NOW - timedelta(hours=2)
    )
    snapshot = key_snapshot_load(APIKeyFactory(user=user, group=group).key_hash)
    assert KeySnapshot.from_dict(json.loads(json.dumps(snapshot.as_dict()))) == snapshot


def test_a_stored_snapshot_of_another_schema_is_refused(key):
    data = key_snapshot_load(key.key_hash).as_dict()
    data["schema"] = KeySnapshot.SCHEMA + 1
    with pytest.raises(SnapshotSchemaError):
        KeySnapshot.from_dict(data)


# --- Upstream accounts ---------------------------------------------------------------------------


def test_an_account_snapshot_holds_scheduling_quota_and_the_ciphertext_only():
    token = encrypt_credentials({"api_key": "sk-ant-secret", "base_url": "https://relay.example"})
    account = UpstreamAccountFactory(
        name="relay",
        type="upstream",
        priority=7,
        concurrency=9,
        rate_multiplier=D("0.5"),
        schedulable=False,
        rate_limited_until=NOW,
        quota_limit_usd=D("100"),
        quota_used_usd=D("100"),
        quota_daily_reset_mode="fixed",
        quota_daily_reset_hour=6,
        quota_timezone="America/New_York",
        credentials_encrypted=token,
    )
    snapshot = upstream_account_snapshots_load([account.pk])[account.pk]
    assert (snapshot.name, snapshot.type, snapshot.priority, snapshot.concurrency) == (
        "relay",
        "upstream",
        7,
        9,
    )
    assert (snapshot.schedulable, snapshot.rate_limited_until, snapshot.rate_multiplier) == (
        False,
        NOW,
        D("0.5"),
    )
    assert snapshot.base_url == "https://relay.example"
    assert snapshot.credentials_encrypted == token and "sk-ant-secret" not in json.dumps(snapshot.as_dict())
    assert snapshot.quota == AccountQuota.of(account) and snapshot.quota_applies
    assert snapshot.quota.period("daily") == ("fixed", 6, 0) and snapshot.quota.zone == "America/New_York"
    assert snapshot.is_quota_exceeded(NOW)


def test_the_cache_ttl_override_is_kept_only_where_the_account_type_honours_it():
    oauth = UpstreamAccountFactory(type="oauth", cache_ttl_override="1h")
    apikey = UpstreamAccountFactory(type="apikey", cache_ttl_override="1h")
    plain = UpstreamAccountFactory(type="oauth")
    loaded = upstream_account_snapshots_load([oauth.pk, apikey.pk, plain.pk])
    assert [loaded[a.pk].cache_ttl_override for a in (oauth, apikey, plain)] == ["1h", None, None]


def test_account_snapshots_load_in_one_query_and_skip_unknown_ids(django_assert_num_queries):
    accounts = [UpstreamAccountFactory() for _ in range(12)]
    with django_assert_num_queries(1):
        loaded = upstream_account_snapshots_load([a.pk for a in accounts] + [987654])
    assert set(loaded) == {a.pk for a in accounts}
    with django_assert_num_queries(0):
        assert upstream_account_snapshots_load([]) == {}


def test_an_account_snapshot_survives_json_unchanged():
    account = UpstreamAccountFactory(
        expires_at=NOW,
        quota_weekly_limit_usd=D("3"),
        quota_weekly_used_usd=D("1.5"),
        quota_weekly_start=NOW - timedelta(days=1),
        credentials_encrypted=encrypt_credentials({"api_key": "k"}),
    )
    snapshot = upstream_account_snapshots_load([account.pk])[account.pk]
    assert UpstreamAccountSnapshot.from_dict(json.loads(json.dumps(snapshot.as_dict()))) == snapshot


def test_credentials_no_key_opens_still_load_the_account_without_a_base_url():
    account = UpstreamAccountFactory(credentials_encrypted="gAAAAAnot-a-token")
    snapshot = upstream_account_snapshots_load([account.pk])[account.pk]
    assert snapshot.base_url == "" and snapshot.credentials_encrypted == "gAAAAAnot-a-token"
