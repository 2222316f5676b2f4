"""Holds sent from the event loop on connections of their own (docs/gateway.md#holds-on-the-event-loop):
the same rows held as on a database thread, refusals named, broken connections survived."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connection

import gateway.holds
from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.snapshots import key_snapshot_load_by_id, upstream_account_snapshots_load
from billing.holds import HoldResult, pending_exists, pending_hold_statement
from billing.models import PendingRequest
from channels.catalog import catalog_warm
from channels.snapshots import channel_snapshot_for_group
from gateway.db import DatabaseThreads
from gateway.holds import (
    LOOP_HOLDS_APPLICATION,
    LoopHolds,
    estimate,
    hold_request,
    loop_connection_params,
    reserve_many,
)
from tests import event_loop
from tests.factories import (
    APIKeyFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
)
from tests.gateway.conftest import (
    background_finished,
    gateway_app,
    ledger_rows,
    make_tenant,
    openai_sdk,
)
from tests.holds import held

pytestmark = pytest.mark.django_db(transaction=True)

D = Decimal
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}


def gateway_request(key, request_id: str, accounts=(), *, priced: bool = True) -> dict:
    """What the proxy hands the hold queue for one request (gateway.proxy.Proxy._hold)."""
    snapshot = key_snapshot_load_by_id(key.pk)
    channel = channel_snapshot_for_group(key.group_id)
    loaded = upstream_account_snapshots_load([account.pk for account in accounts])
    fields = {"key": snapshot, "channel": channel, "kind": "chat", "body": BODY, "model": "gpt-4o"}
    return {
        **fields,
        "request_id": request_id,
        "accounts": [loaded[account.pk] for account in accounts],
        "mapped_model": "gpt-4o",
        "protocol": "openai",
        "stream": False,
        "guess": estimate(**fields, mapped_model="gpt-4o") if priced else None,
    }


def cost(key) -> Decimal:
    return gateway_request(key, "price")["guess"].actual_usd


def on_loop(work):
    """Run `work(loop_holds)` on a fresh event loop with two database threads; then close both."""
    catalog_warm()
    db = DatabaseThreads(2)

    async def run():
        loop_holds = LoopHolds(db=db, size=2, fallback=reserve_many)
        try:
            return await work(loop_holds)
        finally:
            await loop_holds.close()

    try:
        return event_loop.run(run())
    finally:
        db.shutdown()


def backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def terminate(pid: int) -> None:
    """End a backend as a database restart or a network cut would."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_lone_hold_is_sent_from_the_event_loop_and_holds_every_counted_row(key):
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    before = backends()

    first, second = gateway_request(key, "r1", [account]), gateway_request(key, "r2", [account])

    async def work(loop_holds):
        (result,) = await loop_holds.hold(first)
        (again,) = await loop_holds.hold(second)
        return result, again, loop_holds.held, loop_holds._open

    result, again, sent, opened = on_loop(work)
    assert result == again == HoldResult(account_id=account.pk)
    assert (sent, opened) == (2, 1), "both sent from the loop, on one connection kept between them"
    assert held(APIKey, key.pk) == held(User, key.user_id, "balance_held") == 2 * cost(key)
    assert held(UpstreamAccount, account.pk, "quota_held_usd") == 2 * cost(key)
    assert sorted(PendingRequest.objects.values_list("request_id", flat=True)) == ["r1", "r2"]
    assert backends() == before, "closed with the gateway"


def test_a_hold_from_the_event_loop_goes_in_postgresqls_own_form_however_long_its_text(psycopg_rewrites):
    # A subscription key's hold with an account quota: 5,070 characters, over the 4096 psycopg
    # caches its own rewrite for (docs/gateway.md#placeholders-rewritten-once). The spy sees
    # psycopg's cached rewrite too, so the test does not depend on the length.
    subscription = SubscriptionFactory(group=SubscriptionGroupFactory(daily_limit_usd=D("5")))
    key = APIKeyFactory(user=subscription.user, group=subscription.group)
    account = UpstreamAccountFactory(platform="openai", quota_limit_usd=D("5"))
    requests = [gateway_request(key, f"r{n}", [account]) for n in range(2)]

    async def work(loop_holds):
        return [await loop_holds.hold(request) for request in requests], loop_holds.held

    results, sent = on_loop(work)
    assert results == [[HoldResult(account_id=account.pk)]] * 2 and sent == 2
    assert psycopg_rewrites == []
    assert (
        held(Subscription, subscription.pk)
        == held(UpstreamAccount, account.pk, "quota_held_usd")
        == 2 * cost(key)
    )


def test_a_hold_that_does_not_fit_is_refused_by_its_limit_on_a_database_thread(key):
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=key.quota_usd)

    request = gateway_request(key, "r1")

    async def work(loop_holds):
        (refused,) = await loop_holds.hold(request)
        return refused, loop_holds.held, len(loop_holds._idle)

    refused, sent, idle = on_loop(work)
    assert refused.refused == "key_quota"
    assert (sent, idle) == (0, 1), "not counted as held; its connection is kept for the next"
    assert held(APIKey, key.pk) == 0 and not PendingRequest.objects.exists()


def test_a_connection_that_breaks_under_a_hold_is_replaced_and_the_hold_taken_once(key):
    requests = [gateway_request(key, name) for name in ("r1", "r2", "r3")]

    async def work(loop_holds):
        await loop_holds.hold(requests[0])
        (link,) = loop_holds._idle
        await loop_holds.db.run(terminate, link.info.backend_pid)
        (result,) = await loop_holds.hold(requests[1])
        (after,) = await loop_holds.hold(requests[2])
        return result, after, loop_holds.held, loop_holds._open

    result, after, sent, opened = on_loop(work)
    assert result.held and after.held
    assert (sent, opened) == (2, 1), "r2 held on a database thread; r3 on a new connection"
    assert held(APIKey, key.pk) == 3 * cost(key)
    assert PendingRequest.objects.count() == 3


def test_a_request_id_held_twice_is_its_own_error_and_the_connection_stays_usable(key):
    first, second = gateway_request(key, "r1"), gateway_request(key, "r2")

    async def work(loop_holds):
        await loop_holds.hold(first)
        (twice,) = await loop_holds.hold(first)
        (next_one,) = await loop_holds.hold(second)
        return twice, next_one, loop_holds.held, loop_holds._open

    twice, next_one, sent, opened = on_loop(work)
    assert isinstance(twice, Exception) and "pending" in str(twice).lower()
    assert next_one.held and (sent, opened) == (2, 1)
    assert held(APIKey, key.pk) == 2 * cost(key)


def test_a_statement_the_loop_cannot_send_goes_to_a_database_thread_and_says_why(key, monkeypatch, caplog):
    # A mistake in how the loop's statement is built (here its values as a list, which its
    # %(name)s text refuses) must not hide behind the threads' fallback.
    def built_wrong(hold):
        statement = pending_hold_statement(hold)
        return dataclasses.replace(statement, params=list(statement.params.values()))

    monkeypatch.setattr(gateway.holds, "pending_hold_statement", built_wrong)

    async def work(loop_holds):
        (result,) = await loop_holds.hold(gateway_request(key, "r1"))
        return result, loop_holds.held

    with caplog.at_level(logging.DEBUG, logger="gateway"):
        result, sent = on_loop(work)
    assert result.held and sent == 0, "held on a database thread"
    assert "a hold on the event loop failed (named placeholders (%(name)s) require a mapping" in caplog.text
    assert held(APIKey, key.pk) == cost(key)


def test_a_hold_not_priced_early_or_beyond_the_connections_goes_to_a_database_thread(key):
    unpriced_request, request = gateway_request(key, "r1", priced=False), gateway_request(key, "r2")

    async def work(loop_holds):
        (unpriced,) = await loop_holds.hold(unpriced_request)
        loop_holds.size = 0  # every connection busy
        (crowded,) = await loop_holds.hold(request)
        return unpriced, crowded, loop_holds.held, loop_holds._open

    unpriced, crowded, sent, opened = on_loop(work)
    assert unpriced.held and crowded.held
    assert (sent, opened) == (0, 0)
    assert held(APIKey, key.pk) == 2 * cost(key)


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({}, id="slots to take: the estimate is priced while the admission runs"),
        pytest.param({"concurrency": 0}, id="no slots: admitted at once, the estimate priced after"),
    ],
)
def test_a_request_through_the_gateway_is_held_from_its_event_loop(fake_upstream, gateway_url, limits):
    tenant = make_tenant(fake_upstream, platform="openai", user_fields=limits)
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=limits.get("concurrency", 1))
    loop_holds = gateway_app().proxy.loop_holds
    background_finished()
    before = loop_holds.held
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(**BODY)
    assert loop_holds.held == before + 1
    (row,) = ledger_rows(1)
    background_finished()
    assert held(APIKey, tenant.key.pk) == 0 and not PendingRequest.objects.exists()
    assert APIKey.objects.get(pk=tenant.key.pk).quota_used_usd == row.actual_cost


def test_a_lost_connections_statement_still_waiting_is_ended_before_its_hold_is_read_back(key):
    # A connection cut while its hold waits for a row's lock: the server has not noticed (it only
    # reads from the client between statements), so the statement would still commit once the
    # lock is free, after the gateway had read back "not held" and held the request again.
    params = loop_connection_params()  # the gateway's own, as LoopHolds opens them
    statement = pending_hold_statement(hold_request(**gateway_request(key, "r1")))
    locker = psycopg.connect(**{**params, "autocommit": False})
    locker.execute("SELECT 1 FROM accounts_apikey WHERE id = %s FOR UPDATE", [key.pk])  # as a recording
    lost = psycopg.connect(**params)
    pid = lost.info.backend_pid
    outcome = []

    def send() -> None:
        try:
            lost.execute(statement.sql, statement.params)
            outcome.append("committed")
        except psycopg.OperationalError:
            outcome.append("ended")

    sender = threading.Thread(target=send)
    sender.start()
    try:
        while not waits_for_a_lock(pid):
            time.sleep(0.01)
        assert not pending_exists(
            request_id="r1", api_key_id=key.pk, ended_backend=(pid, LOOP_HOLDS_APPLICATION)
        )
        locker.rollback()  # the row is free: a statement still running would now commit
        sender.join(10)
    finally:
        locker.close()
        lost.close()
    assert outcome == ["ended"]
    assert not PendingRequest.objects.exists() and held(APIKey, key.pk) == 0


def waits_for_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row and row[0] == "Lock")


def test_a_connection_that_cannot_be_opened_sends_holds_to_the_threads_and_is_not_retried_at_once(
    key, caplog
):
    requests = [gateway_request(key, name) for name in ("r1", "r2")]
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]  # nothing listens there once this is closed

    async def work(loop_holds):
        params = await loop_holds.db.run(loop_connection_params)
        loop_holds._params = {**params, "host": "127.0.0.1", "port": closed_port, "connect_timeout": 2}
        answers = [(await loop_holds.hold(request))[0] for request in requests]
        return answers, loop_holds.held, loop_holds._open

    with caplog.at_level(logging.WARNING, logger="gateway"):
        answers, sent, opened = on_loop(work)
    assert all(answer.held for answer in answers) and (sent, opened) == (0, 0)
    assert caplog.text.count("could not be opened") == 1, "the second hold did not try again"
    assert held(APIKey, key.pk) == 2 * cost(key)
