"""The gateway's recorder thread (docs/recording.md#batches): finished requests queued from the event
loop are recorded in shared transactions, every one exactly once, and a bad record costs only its
own row."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db.models import Sum

from accounts.models import APIKey, UpstreamAccount, User
from accounts.snapshots import key_snapshot_load_by_id, snapshot_listeners, upstream_account_snapshots_load
from billing.cost import Usage
from billing.models import UsageLog
from billing.pricing import billing_context_from, price_request
from channels.snapshots import channel_snapshot_for_group
from gateway.recorder import BatchRecorder, Entry, record_batch, refreshed
from tests import event_loop
from tests.factories import (
    APIKeyFactory,
    ChannelGroupFactory,
    GroupAccountFactory,
    GroupFactory,
    ModelPricingFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db(transaction=True)


def entry_for(key_id: int, account_id: int, request_id: str, tokens: int) -> Entry:
    key = key_snapshot_load_by_id(key_id)
    account = upstream_account_snapshots_load([account_id])[account_id]
    return Entry(
        request_id=request_id,
        key=key,
        channel=channel_snapshot_for_group(key.group_id),
        account=account,
        requested_model="claude-sonnet-4-5",
        mapped_model="claude-sonnet-4-5",
        upstream_model="claude-sonnet-4-5",
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 10),
        usage_source="reported",
        outcome="completed",
        stream=True,
        status_code=200,
        duration_ms=12,
        first_token_ms=3,
        client_ip="127.0.0.1",
        user_agent="test",
    )


def tenant():
    group = GroupFactory(rate_multiplier=Decimal("1.2"))
    account = UpstreamAccountFactory(rate_multiplier=Decimal("0.8"))
    GroupAccountFactory(group=group, account=account)
    user = UserFactory(balance=Decimal("100"))
    return [APIKeyFactory(user=user, group=group) for _ in range(2)], account, user


async def record_all(recorder: BatchRecorder, entries: list[Entry]) -> list:
    return await asyncio.gather(*(recorder.record(entry) for entry in entries), return_exceptions=True)


def test_requests_finishing_together_share_transactions_and_each_is_billed_once():
    keys, account, user = tenant()
    entries = [entry_for(keys[n % 2].pk, account.pk, f"req-{n}", 1_000 + n) for n in range(60)]
    entries += entries[:5]  # replays: the same request ids again
    recorder = BatchRecorder(size=16, wait=0.005)
    try:
        answers = event_loop.run(record_all(recorder, entries))
    finally:
        recorder.stop()

    assert not [answer for answer in answers if isinstance(answer, BaseException)]
    assert UsageLog.objects.count() == 60
    assert sum(1 for result, _fresh in answers if result.duplicate) == 5
    assert recorder.batches <= 65 // 16 + 2  # batches, not one transaction per request
    actual = UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    assert sum(result.charged_usd for result, _fresh in answers) == actual
    assert User.objects.get(pk=user.pk).balance == Decimal("100") - actual
    for key in keys:
        own = UsageLog.objects.filter(api_key=key).aggregate(s=Sum("actual_cost"))["s"]
        assert APIKey.objects.get(pk=key.pk).quota_used_usd == own
    account_cost = UsageLog.objects.aggregate(s=Sum("account_cost"))["s"]
    assert UpstreamAccount.objects.get(pk=account.pk).quota_used_usd == account_cost
    # The snapshot each request gets back carries the counters as its batch left them.
    assert min(fresh.user.balance for _result, fresh in answers) == User.objects.get(pk=user.pk).balance


def test_a_record_that_cannot_be_written_fails_alone_and_the_rest_of_its_batch_is_recorded():
    keys, account, _user = tenant()
    good = [entry_for(keys[0].pk, account.pk, f"req-{n}", 1_000) for n in range(5)]
    doomed = entry_for(keys[1].pk, account.pk, "req-doomed", 1_000)
    APIKey.objects.filter(pk=keys[1].pk).delete()  # gone between the response and its recording
    recorder = BatchRecorder(size=16, wait=0.05)
    try:
        answers = event_loop.run(record_all(recorder, [*good[:3], doomed, *good[3:]]))
    finally:
        recorder.stop()

    assert isinstance(answers[3], APIKey.DoesNotExist)
    assert sorted(UsageLog.objects.values_list("request_id", flat=True)) == [f"req-{n}" for n in range(5)]
    own = UsageLog.objects.aggregate(s=Sum("actual_cost"))["s"]
    assert APIKey.objects.get(pk=keys[0].pk).quota_used_usd == own


def test_stopping_records_everything_still_queued():
    keys, account, _user = tenant()
    recorder = BatchRecorder(size=4, wait=0.2)

    entries = [entry_for(keys[0].pk, account.pk, f"req-{n}", 900) for n in range(10)]

    async def submit_then_stop() -> list:
        pending = [asyncio.ensure_future(recorder.record(entry)) for entry in entries]
        await asyncio.sleep(0)  # every entry queued
        await asyncio.get_running_loop().run_in_executor(None, recorder.stop)
        return await asyncio.gather(*pending)

    answers = event_loop.run(submit_then_stop())
    assert len(answers) == 10 and UsageLog.objects.count() == 10


def test_a_batch_that_fills_up_is_recorded_at_once_and_its_thread_does_not_wake_for_each_entry():
    keys, account, _user = tenant()
    entries = [entry_for(keys[0].pk, account.pk, f"req-{n}", 900) for n in range(4)]
    recorder = BatchRecorder(size=4, wait=30.0)
    try:

        async def one_by_one() -> list:
            pending = []
            for entry in entries:  # each its own event-loop turn: the thread waits between them
                pending.append(asyncio.ensure_future(recorder.record(entry)))
                await asyncio.sleep(0.02)
            return await asyncio.wait_for(asyncio.gather(*pending), timeout=10)

        started = time.monotonic()
        answers = event_loop.run(one_by_one())
        took = time.monotonic() - started
    finally:
        recorder.stop()

    assert len(answers) == 4 and UsageLog.objects.count() == 4
    assert recorder.batches == 1
    assert took < 10  # not the 30-second window
    assert recorder.waits <= 1  # slept once for the three that trickled in, not once per entry


def test_stopping_does_not_wait_out_a_batch_window():
    keys, account, _user = tenant()
    recorder = BatchRecorder(size=16, wait=30.0)

    async def submit_then_stop():
        pending = asyncio.ensure_future(recorder.record(entry_for(keys[0].pk, account.pk, "req-0", 900)))
        await asyncio.sleep(0.05)  # the thread has it and waits for more
        await asyncio.get_running_loop().run_in_executor(None, recorder.stop)
        return await pending

    started = time.monotonic()
    event_loop.run(submit_then_stop())
    assert time.monotonic() - started < 10
    assert UsageLog.objects.count() == 1


def test_a_batched_row_keeps_the_time_its_request_finished():
    keys, account, _user = tenant()
    finished = [datetime(2026, 12, 1, 9, 0, second, tzinfo=UTC) for second in (5, 1, 3)]
    entries = [
        dataclasses.replace(entry_for(keys[0].pk, account.pk, f"req-{n}", 1_000), finished_at=at)
        for n, at in enumerate(finished)
    ]
    recorder = BatchRecorder(size=16, wait=0.05)
    try:
        event_loop.run(record_all(recorder, entries))
    finally:
        recorder.stop()

    assert recorder.batches == 1
    rows = dict(UsageLog.objects.values_list("request_id", "created_at"))
    assert rows == {f"req-{n}": at for n, at in enumerate(finished)}


def test_requests_sharing_a_snapshot_get_one_refreshed_snapshot_and_a_spent_key_is_announced_once():
    keys, account, _user = tenant()
    APIKey.objects.filter(pk=keys[0].pk).update(quota_usd=Decimal("0.000001"))  # spent at once
    spender = entry_for(keys[0].pk, account.pk, "req-0", 1_000)
    other = entry_for(keys[1].pk, account.pk, "req-other", 1_000)
    # The gateway's entries of one key carry the one snapshot it caches.
    entries = [dataclasses.replace(spender, request_id=f"req-{n}") for n in range(4)]
    entries += [other, dataclasses.replace(other, request_id="req-other-2")]
    changes = []
    snapshot_listeners.add(changes.append)
    try:
        answers = record_batch([*entries, entries[0]])  # the last one a replay
    finally:
        snapshot_listeners.discard(changes.append)

    for entry, (result, fresh) in zip([*entries, entries[0]], answers, strict=True):
        assert fresh == refreshed(entry.key, result)
    assert len({id(fresh) for _result, fresh in answers[:4]}) == 1
    assert answers[0][1].status == "quota_exhausted"
    assert answers[4][1] is answers[5][1] and answers[4][1].id == keys[1].pk
    assert answers[-1][0].duplicate and answers[-1][1] is spender.key
    assert [change.key_ids for change in changes] == [frozenset({keys[0].pk})]


def test_a_shared_key_snapshot_is_billed_by_each_requests_own_account_and_channel_and_charge():
    keys, account, _user = tenant()
    group = APIKey.objects.get(pk=keys[0].pk).group
    other_account = UpstreamAccountFactory(rate_multiplier=Decimal("1.5"))
    GroupAccountFactory(group=group, account=other_account)
    # The group's channel prices the model at twice the catalog's price.
    channel = ChannelGroupFactory(group=group).channel
    ModelPricingFactory(channel=channel, input_price=Decimal("0.000006"), output_price=Decimal("0.00003"))
    base = entry_for(keys[0].pk, account.pk, "req-channel", 1_000)
    assert base.channel is not None and base.channel.id == channel.pk
    unpriced = "tollgate-unpriced-model"
    # Every entry carries the one key snapshot the gateway caches.
    entries = [
        base,
        dataclasses.replace(
            base,
            request_id="req-other-account",
            account=upstream_account_snapshots_load([other_account.pk])[other_account.pk],
        ),
        dataclasses.replace(base, request_id="req-no-channel", channel=None),
        dataclasses.replace(
            base,
            request_id="req-unpriced",
            requested_model=unpriced,
            mapped_model=unpriced,
            upstream_model=unpriced,
        ),
        dataclasses.replace(base, request_id="req-channel-2"),
    ]
    answers = record_batch(entries)

    rows = {
        row["request_id"]: row
        for row in UsageLog.objects.values(
            "request_id", "account_id", "channel_id", "pricing_source", "actual_cost", "account_cost"
        )
    }
    assert [
        (
            rows[entry.request_id]["account_id"],
            rows[entry.request_id]["channel_id"],
            rows[entry.request_id]["pricing_source"],
        )
        for entry in entries
    ] == [
        (account.pk, channel.pk, "channel"),
        (other_account.pk, channel.pk, "channel"),
        (account.pk, None, "catalog"),
        (account.pk, channel.pk, "missing"),
        (account.pk, channel.pk, "channel"),
    ]
    for entry, (result, fresh) in zip(entries, answers, strict=True):
        context = billing_context_from(key=entry.key, channel=entry.channel, account=entry.account)
        _resolution, breakdown = price_request(
            context=context,
            usage=entry.usage,
            requested_model=entry.requested_model,
            mapped_model="",
            upstream_model=entry.upstream_model,
        )
        row = rows[entry.request_id]
        assert (row["actual_cost"], row["account_cost"]) == (breakdown.actual_cost, breakdown.account_cost)
        assert result.breakdown == breakdown
        assert fresh == refreshed(entry.key, result)
    assert rows["req-unpriced"]["actual_cost"] == 0 and rows["req-channel"]["actual_cost"] > 0
    charged = APIKey.objects.get(pk=keys[0].pk).quota_used_usd
    # The unpriced request charged nothing: its snapshot is the one it came with, the others' the
    # key as the batch left it.
    assert answers[3][1] is base.key and base.key.quota_used_usd == 0
    assert {fresh.quota_used_usd for i, (_result, fresh) in enumerate(answers) if i != 3} == {charged}
