"""Every service that changes a row a snapshot reads announces it, after commit and never on rollback.

A recording listener hears what `snapshots_changed` delivers. Each case drives one write service
and names exactly the ids that must arrive; a last test fails when a service module gains a
public function that no case drives and that is not listed as changing no snapshot.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from accounts.crypto import encrypt_credentials
from accounts.models import APIKey, Subscription, UpstreamAccount
from accounts.services import groups as group_services
from accounts.services import keys as key_services
from accounts.services import subscriptions as subscription_services
from accounts.services import upstream as account_services
from accounts.services import users as user_services
from accounts.snapshots import SnapshotChange, snapshot_listeners, snapshots_changed
from billing.cost import Usage
from billing.services import usage_record
from channels import services as channel_services
from channels.rules import CardSpec
from tests.factories import (
    APIKeyFactory,
    ChannelFactory,
    ChannelGroupFactory,
    GroupAccountFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
KINDS = ("key_ids", "user_ids", "group_ids", "subscription_ids", "account_ids", "channel_ids")


class World:
    """Rows every case can act on: a standard group with two accounts, a channel and a key, a
    second group of the platform, a subscription group with a live subscription."""

    def __init__(self) -> None:
        self.user = UserFactory()
        self.group = GroupFactory(name="main")
        self.other_group = GroupFactory(name="other")
        self.account = UpstreamAccountFactory(credentials_encrypted=encrypt_credentials({"api_key": "k"}))
        self.spare_account = UpstreamAccountFactory()
        GroupAccountFactory(group=self.group, account=self.account)
        GroupAccountFactory(group=self.group, account=self.spare_account)
        self.channel = ChannelFactory()
        ChannelGroupFactory(channel=self.channel, group=self.group)
        self.key = APIKeyFactory(user=self.user, group=self.group)
        self.sub_group = SubscriptionGroupFactory()
        self.subscription = SubscriptionFactory(user=self.user, group=self.sub_group)
        # Ids as they were: a deleted instance forgets its own.
        self.account_id, self.channel_id, self.other_group_id = (
            self.account.pk,
            self.channel.pk,
            self.other_group.pk,
        )


def ids(**kinds) -> dict[str, set[int]]:
    return {kind: set(kinds.get(kind, ())) for kind in KINDS}


def expire_key_when_due(w: World) -> None:
    APIKey.objects.filter(pk=w.key.pk).update(expires_at=timezone.now() + timedelta(days=1))
    key_services.api_key_expire_due(now=timezone.now() + timedelta(days=2))


def delete_a_fallback_group(w: World) -> int:
    """Delete a group another group falls back to, in a channel of its own; that channel's id."""
    group_services.group_update(group=w.group, fields={"fallback_group": w.other_group}, actor=None)
    link = ChannelGroupFactory(group=w.other_group)
    group_services.group_delete(group=w.other_group, actor=None)
    return link.channel_id


def clear_an_error(w: World) -> None:
    UpstreamAccount.objects.filter(pk=w.account.pk).update(status="error", error_message="401")
    account_services.upstream_account_clear_error(account_id=w.account.pk)


def pause_an_expired_account(w: World) -> None:
    UpstreamAccount.objects.filter(pk=w.account.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    account_services.upstream_account_pause_expired()


def resume_a_suspended_subscription(w: World) -> None:
    Subscription.objects.filter(pk=w.subscription.pk).update(status="suspended")
    subscription_services.subscription_resume(subscription_id=w.subscription.pk)


SONNET = CardSpec(platform="anthropic", models=("claude-sonnet-4-5",), input_price=D(0), output_price=D(0))

# name -> (action(world) -> result, expected(world, result) -> ids)
CASES = {
    # --- keys
    "api_key_create": (
        lambda w: key_services.api_key_create(user=w.user, group=w.group, name="new")[0],
        lambda w, key: ids(key_ids=[key.pk]),
    ),
    "api_key_update": (
        lambda w: key_services.api_key_update(key=w.key, fields={"quota_usd": D("5")}),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_quota_reset": (
        lambda w: key_services.api_key_quota_reset(key_id=w.key.pk),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_expiration_clear": (
        lambda w: key_services.api_key_expiration_clear(key_id=w.key.pk),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_windows_reset": (
        lambda w: key_services.api_key_windows_reset(key_id=w.key.pk),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_set_enabled": (
        lambda w: key_services.api_key_set_enabled(key_id=w.key.pk, enabled=False),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_delete": (
        lambda w: key_services.api_key_delete(key_id=w.key.pk),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    "api_key_expire_due": (
        lambda w: expire_key_when_due(w),
        lambda w, _: ids(key_ids=[w.key.pk]),
    ),
    # --- users
    "user_update": (
        lambda w: user_services.user_update(
            user=w.user, fields={"rpm_limit": 7, "allowed_groups": [w.other_group]}, actor=None
        ),
        lambda w, _: ids(user_ids=[w.user.pk]),
    ),
    "user_set_status": (
        lambda w: user_services.user_set_status(user=w.user, status="disabled", actor=None),
        lambda w, _: ids(user_ids=[w.user.pk]),
    ),
    "user_balance_adjust": (
        lambda w: user_services.user_balance_adjust(
            user_id=w.user.pk, operation="add", amount=D("3"), note="", changed_by=None
        ),
        lambda w, _: ids(user_ids=[w.user.pk]),
    ),
    "user_group_rate_set": (
        lambda w: user_services.user_group_rate_set(
            user=w.user, group_id=w.group.pk, rate_multiplier=D("2"), actor=None
        ),
        lambda w, _: ids(user_ids=[w.user.pk]),
    ),
    "user_group_rate_remove": (
        lambda w: user_services.user_group_rate_remove(
            user=w.user,
            rate_id=w.user.group_rates.create(group=w.group, rate_multiplier=D("2")).pk,
            actor=None,
        ),
        lambda w, _: ids(user_ids=[w.user.pk]),
    ),
    # --- groups
    "group_update": (
        lambda w: group_services.group_update(group=w.group, fields={"rpm_limit": 3}, actor=None),
        lambda w, _: ids(group_ids=[w.group.pk]),
    ),
    "group_set_account_priority": (
        lambda w: group_services.group_set_account_priority(
            group=w.group, account_id=w.account.pk, priority=1
        ),
        lambda w, _: ids(group_ids=[w.group.pk]),
    ),
    "group_delete": (
        lambda w: delete_a_fallback_group(w),
        lambda w, channel_id: ids(group_ids=[w.other_group_id, w.group.pk], channel_ids=[channel_id]),
    ),
    "group_delete_rebinding_keys": (
        lambda w: group_services.group_delete_rebinding_keys(
            group=w.group, target_group_id=w.other_group.pk, actor=None
        ),
        lambda w, _: ids(
            key_ids=[w.key.pk], group_ids=[w.group.pk, w.other_group.pk], channel_ids=[w.channel.pk]
        ),
    ),
    # --- upstream accounts
    "upstream_account_create": (
        lambda w: account_services.upstream_account_create(
            fields={"name": "new", "platform": "anthropic", "type": "apikey"},
            credentials={"api_key": "sk-new"},
            groups=[w.other_group],
            actor=None,
        ),
        lambda w, account: ids(account_ids=[account.pk], group_ids=[w.other_group.pk]),
    ),
    "upstream_account_update": (
        lambda w: account_services.upstream_account_update(
            account=w.account, fields={"priority": 5}, credentials={}, groups=[w.other_group], actor=None
        ),
        lambda w, _: ids(account_ids=[w.account.pk], group_ids=[w.group.pk, w.other_group.pk]),
    ),
    "upstream_account_set_schedulable": (
        lambda w: account_services.upstream_account_set_schedulable(
            account_id=w.account.pk, schedulable=False
        ),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_clear_error": (
        lambda w: clear_an_error(w),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_pause_expired": (
        lambda w: pause_an_expired_account(w),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_quota_reset": (
        lambda w: account_services.upstream_account_quota_reset(account_id=w.account.pk),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_mark_rate_limited": (
        lambda w: account_services.upstream_account_mark_rate_limited(
            account_id=w.account.pk, until=timezone.now() + timedelta(minutes=1)
        ),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_mark_error": (
        lambda w: account_services.upstream_account_mark_error(account_id=w.account.pk, message="HTTP 401"),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    "upstream_account_delete": (
        lambda w: account_services.upstream_account_delete(account=w.account, actor=None),
        lambda w, _: ids(account_ids=[w.account_id], group_ids=[w.group.pk]),
    ),
    "rotate_credentials (command)": (
        lambda w: call_command("rotate_credentials", stdout=None),
        lambda w, _: ids(account_ids=[w.account.pk]),
    ),
    # --- subscriptions
    "subscription_assign": (
        lambda w: (
            subscription_services.subscription_assign(user=UserFactory(), group=w.sub_group).subscription
        ),
        lambda w, sub: ids(subscription_ids=[sub.pk], user_ids=[sub.user_id]),
    ),
    "subscription_assign (extends the live one)": (
        lambda w: subscription_services.subscription_assign(user=w.user, group=w.sub_group, days=5),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    "subscription_assign_bulk": (
        lambda w: subscription_services.subscription_assign_bulk(
            users=[w.user, UserFactory()], group=w.sub_group, days=5
        ),
        lambda w, done: ids(
            subscription_ids=[a.subscription.pk for a in done],
            user_ids=[a.subscription.user_id for a in done],
        ),
    ),
    "subscription_extend": (
        lambda w: subscription_services.subscription_extend(subscription_id=w.subscription.pk, days=3),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    "subscription_windows_reset": (
        lambda w: subscription_services.subscription_windows_reset(
            subscription_id=w.subscription.pk, kinds=["daily"]
        ),
        lambda w, _: ids(subscription_ids=[w.subscription.pk]),
    ),
    "subscription_suspend": (
        lambda w: subscription_services.subscription_suspend(subscription_id=w.subscription.pk),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    "subscription_resume": (
        lambda w: resume_a_suspended_subscription(w),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    "subscription_revoke": (
        lambda w: subscription_services.subscription_revoke(subscription_id=w.subscription.pk),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    "subscription_expire_due": (
        lambda w: subscription_services.subscription_expire_due(now=timezone.now() + timedelta(days=400)),
        lambda w, _: ids(subscription_ids=[w.subscription.pk], user_ids=[w.user.pk]),
    ),
    # --- channels
    "channel_create": (
        lambda w: channel_services.channel_create(
            fields={"name": "new"}, group_ids=[w.other_group.pk], cards=[SONNET], actor=None
        ),
        lambda w, channel: ids(channel_ids=[channel.pk], group_ids=[w.other_group.pk]),
    ),
    "channel_update": (
        lambda w: channel_services.channel_update(
            channel=w.channel,
            fields={"name": "moved"},
            group_ids=[w.other_group.pk],
            cards=[],
            mapping=[],
            actor=None,
        ),
        lambda w, _: ids(channel_ids=[w.channel.pk], group_ids=[w.group.pk, w.other_group.pk]),
    ),
    "channel_delete": (
        lambda w: channel_services.channel_delete(channel=w.channel, actor=None),
        lambda w, _: ids(channel_ids=[w.channel_id], group_ids=[w.group.pk]),
    ),
}

# Public functions of the service modules that change no row a snapshot reads, and why.
CHANGES_NO_SNAPSHOT = {
    "user_create": "a new user is in no snapshot until a key of theirs is",
    "group_create": "a new group is in no snapshot until a key or account joins it",
    "group_reorder": "sort order is not in any snapshot",
    "api_key_usage_charge": "a counter charge, not configuration",
    "user_balance_charge": "a counter charge, not configuration",
    "subscription_usage_charge": "a counter charge, not configuration",
    "upstream_account_quota_charge": "a counter charge, not configuration",
    "api_key_usage_charge_statement": "builds a counter charge's statement; runs nothing",
    "user_balance_charge_statement": "builds a counter charge's statement; runs nothing",
    "subscription_usage_charge_statement": "builds a counter charge's statement; runs nothing",
    "upstream_account_quota_charge_statement": "builds a counter charge's statement; runs nothing",
}


@pytest.fixture
def heard():
    changes: list[SnapshotChange] = []
    snapshot_listeners.add(changes.append)
    yield changes
    snapshot_listeners.discard(changes.append)


def merged(changes: list[SnapshotChange]) -> dict[str, set[int]]:
    return {kind: {i for change in changes for i in getattr(change, kind)} for kind in KINDS}


@pytest.mark.parametrize("name", list(CASES))
def test_each_write_service_announces_the_ids_it_changed_after_commit(
    name, heard, django_capture_on_commit_callbacks
):
    action, expected = CASES[name]
    world = World()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = action(world)
        assert heard == []  # nothing before the commit
    for callback in callbacks:
        callback()
    assert heard, f"{name} announced nothing"
    assert merged(heard) == expected(world, result)


class Rollback(Exception):
    pass


@pytest.mark.parametrize("name", list(CASES))
def test_a_rolled_back_change_is_never_announced(name, heard, django_capture_on_commit_callbacks):
    action, _ = CASES[name]
    world = World()
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(Rollback),
        transaction.atomic(),
    ):
        action(world)
        raise Rollback
    assert callbacks == [] and heard == []


def test_recording_usage_moves_counters_and_announces_nothing(heard, django_capture_on_commit_callbacks):
    world = World()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        usage_record(
            request_id="r1",
            api_key_id=world.key.pk,
            account_id=world.account.pk,
            requested_model="claude-sonnet-4-5",
            usage=Usage(input_tokens=1000),
        )
    assert callbacks == [] and heard == []


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_the_change_is_delivered_at_once(heard):
    snapshots_changed(key_ids=[1, 2], channel_ids=[None, 3])
    assert heard == [SnapshotChange(key_ids=frozenset({1, 2}), channel_ids=frozenset({3}))]
    snapshots_changed()  # nothing changed: nothing said
    assert len(heard) == 1


def test_one_failing_listener_does_not_silence_the_others(heard, django_capture_on_commit_callbacks):
    def broken(change):
        raise RuntimeError("listener bug")

    snapshot_listeners.add(broken)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            snapshots_changed(user_ids=[5])
    finally:
        snapshot_listeners.discard(broken)
    assert heard == [SnapshotChange(user_ids=frozenset({5}))]


def test_a_change_survives_json_as_the_gateway_broadcasts_it():
    change = SnapshotChange(key_ids=frozenset({3, 1}), group_ids=frozenset({9}))
    assert SnapshotChange.from_dict(change.as_dict()) == change
    assert change.as_dict()["key_ids"] == [1, 3]


def test_every_public_service_function_is_driven_or_said_to_change_no_snapshot():
    modules = (key_services, user_services, group_services, account_services, subscription_services)
    modules += (channel_services,)
    writes = {
        name
        for module in modules
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__ and not name.startswith("_")
    }
    driven = {name.split(" ")[0] for name in CASES}
    assert writes - driven - set(CHANGES_NO_SNAPSHOT) == set()


# --- Django admin, the fallback that writes rows without the services ----------------------------


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_an_admin_edit_is_announced(admin_client, heard, django_capture_on_commit_callbacks):
    user, group = UserFactory(), GroupFactory()
    rate = user.group_rates.create(group=group, rate_multiplier=D("2"))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/django-admin/accounts/usergrouprate/{rate.pk}/change/",
            {"user": user.pk, "group": group.pk, "rate_multiplier": "1.5"},
        )
    assert response.status_code == 302
    rate.refresh_from_db()
    assert rate.rate_multiplier == D("1.5")
    assert merged(heard) == ids(user_ids=[user.pk])


def test_an_admin_delete_is_announced(admin_client, heard, django_capture_on_commit_callbacks):
    key = APIKeyFactory()
    key_id = key.pk
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/django-admin/accounts/apikey/{key_id}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not APIKey.objects.filter(pk=key_id).exists()
    assert merged(heard) == ids(key_ids=[key_id])
