"""Nothing served is lost (docs/gateway.md#pending-records): a gateway process killed with -9 in
the middle of 20 streams leaves pending records and holds; once their lease has passed, recovery
(here: a new process's start-up) bills every request the upstream served exactly once and gives
every hold back, and a replayed request id bills nothing twice."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest
from django.db.models import Sum

from accounts.models import APIKey, UpstreamAccount, User
from billing.cost import Usage
from billing.models import PendingRequest, UsageLog
from billing.services import usage_record
from gateway.tasks import pending_recover_task
from tests.gateway.conftest import anthropic_sdk, ledger_rows, make_tenant
from tests.gateway.processes import GatewayProcess

pytestmark = pytest.mark.django_db(transaction=True)

STREAMS = 20
LEASE_SECONDS = 3
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 24}


def stream_until_cut(client: openai.OpenAI) -> str:
    try:
        for _chunk in client.chat.completions.create(**BODY, stream=True):
            pass
    except openai.APIError as error:
        return type(error).__name__
    return "completed"


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_gateway_leaves_every_served_request_billed_once_and_nothing_held(
    fake_upstream, transactional_db
):
    # Slow streams (24 chunks, half a second apart): all 20 are mid-stream when the process dies.
    tenant = make_tenant(
        fake_upstream, platform="openai", scenarios=("slow=500",), user_fields={"concurrency": 0}
    )
    account_id = tenant.accounts[0].pk
    UpstreamAccount.objects.filter(pk=account_id).update(concurrency=0, quota_limit_usd=Decimal("100"))
    victim = GatewayProcess(GATEWAY_HOLD_LEASE_SECONDS=str(LEASE_SECONDS)).wait()
    survivor = None
    try:
        client = openai.OpenAI(api_key=tenant.secret, base_url=victim.url + "/v1", max_retries=0, timeout=60)
        with ThreadPoolExecutor(STREAMS) as pool:
            streams = [pool.submit(stream_until_cut, client) for _ in range(STREAMS)]
            wait_until(lambda: fake_upstream.health()["in_flight"] == STREAMS, 60, "20 streams in flight")
            # Every request in flight holds its estimate and has its pending record.
            assert PendingRequest.objects.count() == STREAMS
            key = APIKey.objects.get(pk=tenant.key.pk)
            assert key.held_usd == PendingRequest.objects.aggregate(total=Sum("held_usd"))["total"] > 0
            victim.kill()
            assert {stream.result() for stream in streams} == {"APIConnectionError"}
        served = fake_upstream.wait_for(lambda log: len(log) == STREAMS and all_ended(log), timeout=30)
        assert all(entry["client_disconnected"] for entry in served)
        assert not UsageLog.objects.exists()  # the dead process recorded nothing

        # After the lease, a process starting up recovers what the dead one left.
        lease_end = max(PendingRequest.objects.values_list("lease_expires_at", flat=True))
        wait_until(lambda: time.time() > lease_end.timestamp(), LEASE_SECONDS + 10, "the lease to pass")
        survivor = GatewayProcess().wait()
        rows = ledger_rows(STREAMS, timeout=30)
        wait_until(lambda: not PendingRequest.objects.exists(), 30, "every pending record settled")
    finally:
        victim.stop()
        if survivor is not None:
            survivor.stop()

    # One ledger row for every request the fake upstream served, marked as estimated.
    assert sorted(row.request_id for row in rows) == sorted(entry["tollgate_request_id"] for entry in served)
    assert {(row.usage_source, row.outcome) for row in rows} == {("estimate", "gateway_stopped")}
    # Every counter is its ledger sum and nothing stays held.
    spent = UsageLog.objects.aggregate(total=Sum("actual_cost"))["total"]
    key = APIKey.objects.get(pk=tenant.key.pk)
    user = User.objects.get(pk=tenant.user.pk)
    account = UpstreamAccount.objects.get(pk=account_id)
    assert (key.quota_used_usd, key.held_usd) == (spent, 0)
    assert (user.balance, user.balance_held) == (Decimal(10) - spent, 0)
    assert (account.quota_used_usd, account.quota_held_usd) == (
        UsageLog.objects.aggregate(total=Sum("account_cost"))["total"],
        0,
    )

    # Replaying a request id after recovery bills nothing twice: the dead process's recording
    # arriving late, and the recovery job running again.
    replay = usage_record(
        request_id=rows[0].request_id,
        api_key_id=tenant.key.pk,
        account_id=account_id,
        requested_model="gpt-4o",
        usage=Usage(input_tokens=5, output_tokens=24),
    )
    assert replay.duplicate
    assert pending_recover_task() == 0
    assert UsageLog.objects.count() == STREAMS
    assert APIKey.objects.get(pk=tenant.key.pk).quota_used_usd == spent
    assert User.objects.get(pk=tenant.user.pk).balance == Decimal(10) - spent


def stream_message_until_cut(client) -> str:
    try:
        with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=24, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _text in stream.text_stream:
                pass
    except Exception:  # noqa: BLE001 - mid-stream the SDK lets the transport's own error through
        return "cut"
    return "completed"


def all_ended(log: list[dict]) -> bool:
    """Whether the fake upstream has finished every request of its log. A request enters the log
    when it arrives and gets its outcome and what it billed when the upstream sees the client go:
    on a loaded machine that can come well after the gateway died."""
    return all(entry["ended_at"] is not None for entry in log)


def test_a_killed_gateway_bills_what_its_streams_had_observed(fake_upstream, transactional_db):
    # Anthropic streams report their input in message_start; the gateway keeps what each stream
    # has seen on its pending record every second, so recovery bills that, not the estimate.
    tenant = make_tenant(
        fake_upstream, platform="anthropic", scenarios=("slow=400",), user_fields={"concurrency": 0}
    )
    UpstreamAccount.objects.filter(pk=tenant.accounts[0].pk).update(concurrency=0)
    victim = GatewayProcess(
        GATEWAY_HOLD_LEASE_SECONDS=str(LEASE_SECONDS), GATEWAY_OBSERVE_EVERY_SECONDS="1"
    ).wait()
    survivor = None
    count = 4
    try:
        client = anthropic_sdk(victim.url, tenant.secret)
        with ThreadPoolExecutor(count) as pool:
            streams = [pool.submit(stream_message_until_cut, client) for _ in range(count)]
            # Each checkpoint has seen the input and some text.
            wait_until(
                lambda: (
                    PendingRequest.objects.count() == count
                    and all(
                        (observed or {}).get("output_tokens", 0) > 0
                        for observed in PendingRequest.objects.values_list("observed", flat=True)
                    )
                ),
                30,
                "a checkpoint with output on every stream",
            )
            victim.kill()
            assert {stream.result() for stream in streams} == {"cut"}
        served = fake_upstream.wait_for(lambda log: len(log) == count and all_ended(log), timeout=30)
        lease_end = max(PendingRequest.objects.values_list("lease_expires_at", flat=True))
        wait_until(lambda: time.time() > lease_end.timestamp(), LEASE_SECONDS + 10, "the lease to pass")
        survivor = GatewayProcess().wait()
        rows = ledger_rows(count, timeout=30)
        wait_until(lambda: not PendingRequest.objects.exists(), 30, "every pending record settled")
    finally:
        victim.stop()
        if survivor is not None:
            survivor.stop()

    billed = {entry["tollgate_request_id"]: entry["billed"] for entry in served}
    assert {(row.usage_source, row.outcome) for row in rows} == {("observed", "gateway_stopped")}
    for row in rows:
        # The input is what the upstream reported; the output is estimated from the text relayed
        # by the last checkpoint (a token per four characters): some, and less than the 24 the
        # admission estimate held for (max_tokens), which is what recovery billed before.
        assert row.input_tokens == billed[row.request_id]["input_tokens"]
        assert 0 < row.output_tokens < 24
    assert APIKey.objects.get(pk=tenant.key.pk).held_usd == 0
