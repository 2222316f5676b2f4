"""Bursts against money limits through the gateway (docs/gateway.md#holds-and-settle): 64 streams
at once, over real HTTP with the official SDK, on a limit with room for about ten. Each limit
admits what fits, refuses the rest with its own code, and every counter ends equal to its ledger
sum; with one gateway process or two sharing PostgreSQL and Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import openai
import pytest
from django.db.models import Sum

from accounts.models import APIKey, UpstreamAccount, User
from accounts.snapshots import key_snapshot_load_by_id
from billing.models import PendingRequest, UsageLog
from channels.snapshots import channel_snapshot_for_group
from gateway.holds import estimate
from tests.concurrency import run_naive_increments
from tests.factories import GroupFactory, SubscriptionFactory, UserFactory
from tests.gateway.conftest import Tenant, ledger_rows, make_tenant
from tests.gateway.processes import GatewayProcess, started

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 64
ROOM = Decimal("10.5")  # estimates: room for ten requests, not eleven
# max_tokens equal to what the fake upstream generates: the estimate is the real cost exactly
# (input: "hi" is 4 + 1 tokens by both rules), so exactly ten fit.
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}


@dataclass
class Outcome:
    status: int
    code: str | None


def one_stream(client: openai.OpenAI) -> Outcome:
    try:
        stream = client.chat.completions.create(**BODY, stream=True)
        for _chunk in stream:
            pass
    except openai.APIStatusError as error:
        return Outcome(error.status_code, error.code)
    return Outcome(200, None)


def burst(urls: list[str], secret: str) -> list[Outcome]:
    """BURST streams at once, split across `urls` in turn (one SDK client per URL, shared by the
    threads, as an application would)."""
    clients = [
        openai.OpenAI(api_key=secret, base_url=url + "/v1", max_retries=0, timeout=120) for url in urls
    ]
    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(lambda index: one_stream(clients[index % len(clients)]), range(BURST)))


def request_cost(tenant: Tenant) -> Decimal:
    """The estimate the gateway will hold for BODY on this key (the same code, the same card)."""
    key = key_snapshot_load_by_id(tenant.key.pk)
    channel = channel_snapshot_for_group(tenant.group.pk)
    return estimate(
        key=key, channel=channel, kind="chat", body=BODY, model="gpt-4o", mapped_model="gpt-4o"
    ).actual_usd


def tenant_for(fake_upstream, **kwargs) -> Tenant:
    # Slow streams, so the burst is in flight together; no concurrency limit in the way.
    kwargs.setdefault("user_fields", {"concurrency": 0})
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("slow=15",), **kwargs)
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    return tenant


def settled(served: int) -> list[UsageLog]:
    rows = ledger_rows(served, timeout=30)
    deadline = time.monotonic() + 30
    while PendingRequest.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


def rows_of(tenant: Tenant) -> list[UsageLog]:
    return list(UsageLog.objects.filter(api_key_id=tenant.key.pk))


def assert_exact(
    tenant: Tenant, outcomes: list[Outcome], *, status: int, code: str, limit: Decimal, cost: Decimal
):
    served = [outcome for outcome in outcomes if outcome.status == 200]
    refused = [outcome for outcome in outcomes if outcome.status != 200]
    rows = settled(len(served))
    # Ten fit by their holds; an eleventh only by the lone-request rule (nothing else held, the
    # limit not yet reached: it may spend the rest), when it arrives after the ten have settled.
    assert len(served) in (10, 11), outcomes
    assert {(outcome.status, outcome.code) for outcome in refused} == {(status, code)}
    assert len(rows) == len(served)
    spent = sum((row.actual_cost for row in rows), Decimal(0))
    assert spent <= limit + cost  # at most one request's cost over
    assert spent - cost < limit  # and every request served started below the limit
    key = APIKey.objects.get(pk=tenant.key.pk)
    assert key.quota_used_usd == spent == key.usage_5h_usd
    account = UpstreamAccount.objects.get(pk=tenant.accounts[0].pk)
    assert account.quota_used_usd == UsageLog.objects.aggregate(total=Sum("account_cost"))["total"]
    # Nothing stays held, no pending record is left.
    assert (key.held_usd, account.quota_held_usd) == (0, 0)
    assert User.objects.get(pk=tenant.user.pk).balance_held == 0
    assert not PendingRequest.objects.exists()
    return spent


def test_a_burst_on_a_key_quota_spends_what_fits_and_refuses_the_rest_with_its_code(
    fake_upstream, gateway_url
):
    tenant = tenant_for(fake_upstream)
    cost = request_cost(tenant)
    limit = cost * ROOM
    APIKey.objects.filter(pk=tenant.key.pk).update(quota_usd=limit)
    outcomes = burst([gateway_url], tenant.secret)
    spent = assert_exact(tenant, outcomes, status=429, code="API_KEY_QUOTA_EXHAUSTED", limit=limit, cost=cost)
    assert User.objects.get(pk=tenant.user.pk).balance == Decimal(10) - spent
    assert len(fake_upstream.requests()) == len(rows_of(tenant))  # the refused never reached the upstream


def test_a_burst_on_a_key_window_refuses_with_the_window_code(fake_upstream, gateway_url):
    tenant = tenant_for(fake_upstream)
    cost = request_cost(tenant)
    APIKey.objects.filter(pk=tenant.key.pk).update(rate_limit_5h_usd=cost * ROOM)
    outcomes = burst([gateway_url], tenant.secret)
    assert_exact(tenant, outcomes, status=429, code="rate_limit_exceeded", limit=cost * ROOM, cost=cost)


def test_a_burst_on_a_balance_spends_what_fits(fake_upstream, gateway_url):
    tenant = tenant_for(fake_upstream)
    cost = request_cost(tenant)
    User.objects.filter(pk=tenant.user.pk).update(balance=cost * ROOM)
    outcomes = burst([gateway_url], tenant.secret)
    spent = assert_exact(
        tenant, outcomes, status=403, code="INSUFFICIENT_BALANCE", limit=cost * ROOM, cost=cost
    )
    assert User.objects.get(pk=tenant.user.pk).balance == cost * ROOM - spent


def test_a_burst_on_a_subscription_window_spends_what_fits(fake_upstream, gateway_url):
    group = GroupFactory(platform="openai", subscription_type="subscription", daily_limit_usd=Decimal("1"))
    subscription = SubscriptionFactory(user=UserFactory(concurrency=0), group=group)
    tenant = tenant_for(fake_upstream, group=group, user=subscription.user)
    cost = request_cost(tenant)
    group.daily_limit_usd = cost * ROOM
    group.save(update_fields=["daily_limit_usd"])
    outcomes = burst([gateway_url], tenant.secret)
    spent = assert_exact(
        tenant, outcomes, status=429, code="USAGE_LIMIT_EXCEEDED", limit=cost * ROOM, cost=cost
    )
    subscription.refresh_from_db()
    assert (subscription.daily_usage_usd, subscription.held_usd) == (spent, 0)
    assert User.objects.get(pk=tenant.user.pk).balance == Decimal(10)  # a subscription pays, not the balance


def test_a_burst_on_an_account_quota_spends_what_fits(fake_upstream, gateway_url):
    tenant = tenant_for(fake_upstream)
    cost = request_cost(tenant)  # the group's multiplier is 1, so the account's cost is the same
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(quota_limit_usd=cost * ROOM)
    outcomes = burst([gateway_url], tenant.secret)
    assert_exact(tenant, outcomes, status=503, code="NO_ACCOUNT_AVAILABLE", limit=cost * ROOM, cost=cost)


def test_a_burst_failing_over_to_an_account_with_a_quota_spends_only_what_fits_there(
    fake_upstream, gateway_url
):
    # The first account (no quota: the requests hold on it) answers 500 every time; each request
    # then moves its account hold to the second, whose quota has room for ten.
    tenant = make_tenant(
        fake_upstream, platform="openai", scenarios=("status=500", "slow=15"), user_fields={"concurrency": 0}
    )
    broken, spare = tenant.accounts
    UpstreamAccount.objects.filter(pk__in=[broken.pk, spare.pk]).update(concurrency=0)
    cost = request_cost(tenant)
    UpstreamAccount.objects.filter(pk=spare.pk).update(quota_limit_usd=cost * ROOM)
    outcomes = burst([gateway_url], tenant.secret)

    served = [outcome for outcome in outcomes if outcome.status == 200]
    rows = settled(len(served))
    assert len(served) in (10, 11), outcomes
    assert {(o.status, o.code) for o in outcomes if o.status != 200} == {(503, "NO_ACCOUNT_AVAILABLE")}
    assert {row.account_id for row in rows} == {spare.pk}
    spent = sum((row.account_cost for row in rows), Decimal(0))
    assert spent - cost < cost * ROOM  # every request served started below the spare's quota
    spare.refresh_from_db()
    broken.refresh_from_db()
    assert (spare.quota_used_usd, spare.quota_held_usd, broken.quota_held_usd) == (spent, 0, 0)
    key = APIKey.objects.get(pk=tenant.key.pk)
    assert key.held_usd == 0 and key.quota_used_usd == sum((row.actual_cost for row in rows), Decimal(0))
    assert User.objects.get(pk=tenant.user.pk).balance_held == 0
    assert not PendingRequest.objects.exists()


def test_a_burst_split_across_two_gateway_processes_spends_what_fits_once(fake_upstream, transactional_db):
    tenant = tenant_for(fake_upstream)
    cost = request_cost(tenant)
    limit = cost * ROOM
    APIKey.objects.filter(pk=tenant.key.pk).update(quota_usd=limit)
    processes = [GatewayProcess(), GatewayProcess()]
    try:
        started(*processes)
        outcomes = burst([process.url for process in processes], tenant.secret)
        assert_exact(tenant, outcomes, status=429, code="API_KEY_QUOTA_EXHAUSTED", limit=limit, cost=cost)
    finally:
        for process in processes:
            process.stop()


def test_the_burst_harness_sees_a_race_on_a_quota_counter(transactional_db):
    # Control: the same database and real threads, counting the wrong way, lose updates.
    from tests.factories import APIKeyFactory

    key = APIKeyFactory(group=GroupFactory(platform="openai"))
    assert (
        run_naive_increments(16, model=APIKey, pk=key.pk, field="quota_used_usd", amount=Decimal("1")) == []
    )
    assert APIKey.objects.get(pk=key.pk).quota_used_usd < 16
