"""The one-statement hold of every shape goes to PostgreSQL in its own form ($1, $2…), rewritten
from `%(name)s` once per process (common.prepared.server_form): psycopg remembers its own rewrite
only for texts of at most 4096 characters, and the hold of a subscription key with an account
quota is longer, so it was rewritten in Python on every request
(docs/gateway.md#placeholders-rewritten-once)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from django.db import connection
from psycopg._queries import PostgresQuery, PostgresRawQuery
from psycopg.adapt import Transformer

from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.snapshots import AccountQuota
from billing.holds import AccountHold, HoldRequest, pending_hold, pending_hold_statement
from billing.models import PendingRequest
from common.prepared import server_form
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)
from tests.holds import held

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="holds need PostgreSQL"),
]

D = Decimal
ROLLING, FIXED = UpstreamAccount.ResetMode.ROLLING, UpstreamAccount.ResetMode.FIXED


def every_shape(request_id: str) -> list[HoldRequest]:
    """One hold of each shape: the balance or a subscription, with no account quota or one whose
    daily and weekly windows reset rolling/rolling, fixed/fixed, fixed/rolling or rolling/fixed
    (each pair a text of its own)."""
    balance_key = APIKeyFactory(user=UserFactory(balance=D("10")), group=GroupFactory(platform="openai"))
    group = SubscriptionGroupFactory(daily_limit_usd=D("5"))
    subscription = SubscriptionFactory(group=group)
    subscribed = APIKeyFactory(user=subscription.user, group=group)
    accounts = [
        UpstreamAccountFactory(platform="openai"),
        UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5")),
        *(
            UpstreamAccountFactory(
                platform="openai",
                quota_daily_limit_usd=D("5"),
                quota_daily_reset_mode=daily,
                quota_weekly_reset_mode=weekly,
            )
            for daily, weekly in ((FIXED, FIXED), (FIXED, ROLLING), (ROLLING, FIXED))
        ),
    ]
    return [
        HoldRequest(
            request_id=f"{request_id}-{key.pk}-{account.pk}",
            api_key_id=key.pk,
            user_id=key.user_id,
            amount_usd=D("0.1"),
            now=datetime.now(UTC),
            lease_seconds=60.0,
            requested_model="gpt-4o",
            mapped_model="gpt-4o",
            protocol="openai",
            stream=False,
            estimate={"input_tokens": 100, "output_tokens": 50},
            subscription_id=sub.pk if sub else None,
            subscription_limits={"daily": D("5"), "weekly": None, "monthly": None} if sub else None,
            subscription_starts_at=sub.starts_at if sub else None,
            subscription_timezone=group.timezone if sub else "",
            accounts=(
                AccountHold(account_id=account.pk, amount_usd=D("0.1"), quota=AccountQuota.of(account)),
            ),
        )
        for key, sub in ((balance_key, None), (subscribed, subscription))
        for account in accounts
    ]


def test_every_hold_shape_is_sent_as_psycopg_would_send_it_with_the_same_parameter_types():
    statements = [pending_hold_statement(hold) for hold in every_shape("r")]
    assert len({statement.sql for statement in statements}) == 10
    connection.ensure_connection()
    for statement in statements:
        text, order = server_form(statement.sql, connection.connection.info.encoding)
        ours = PostgresRawQuery(Transformer(connection.connection))
        ours.convert(text, [statement.params[name] for name in order])
        theirs = PostgresQuery(Transformer(connection.connection))
        theirs.convert(statement.sql, statement.params)
        assert b"%(" not in ours.query
        # The same text and parameter types: the same prepared statement, planned the same way.
        assert (ours.query, ours.types) == (theirs.query, theirs.types)


def test_no_hold_shape_is_rewritten_by_psycopg_and_each_is_rewritten_here_once(psycopg_rewrites):
    first = every_shape("a")
    assert all(pending_hold(**fields(hold)).held for hold in first)
    rewritten = server_form.cache_info().misses
    assert all(
        pending_hold(**fields(dataclasses.replace(hold, request_id=hold.request_id + "-2"))).held
        for hold in first
    )

    assert psycopg_rewrites == []
    assert server_form.cache_info().misses == rewritten, "the second hold of each shape rewrote nothing"
    assert PendingRequest.objects.count() == 20
    # Each key and its money row held five shapes twice; each account four holds when limited.
    balance, subscribed = first[0], first[-1]
    assert held(APIKey, balance.api_key_id) == held(APIKey, subscribed.api_key_id) == D("1.0")
    assert held(User, balance.user_id, "balance_held") == D("1.0")
    assert held(Subscription, subscribed.subscription_id) == D("1.0")
    accounts = [hold.accounts[0].account_id for hold in first[:5]]  # none, then the four pairs
    held_on_accounts = [held(UpstreamAccount, account, "quota_held_usd") for account in accounts]
    assert held_on_accounts == [0, *[D("0.4")] * 4]

    # The control: the same statement on psycopg's own cursor is rewritten there.
    statement = pending_hold_statement(dataclasses.replace(first[-1], request_id="control"))
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(statement.sql, statement.params, prepare=True)
        assert statement.read(cursor.fetchone())
    assert psycopg_rewrites == [statement.sql.encode()]


def fields(hold: HoldRequest) -> dict:
    """pending_hold's keyword arguments for `hold`."""
    return {field.name: getattr(hold, field.name) for field in dataclasses.fields(hold)}
