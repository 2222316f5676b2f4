"""What the gateway writes, on its database threads, after a response (docs/gateway.md#stream-accounting).

- `record`: the request's one ledger row, through billing.services.usage_record, with the
  BillingContext composed from the snapshots the request was admitted on (no query before the
  transaction's statements), the outcome and where the usage came from;
- `record_batch` and `BatchRecorder`: the same for several finished requests in one transaction
  (billing.services.usage_record_batch), drained from a queue by one recorder thread per process
  (docs/recording.md#batches): what the proxy uses;
- `account_rate_limited` / `account_failed`: the marks failover puts on an account.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections
from django.utils import timezone

from accounts.services.upstream import upstream_account_mark_error, upstream_account_mark_rate_limited
from accounts.snapshots import KeySnapshot, snapshots_changed
from billing.cost import Usage
from billing.pricing import BillingContext, billing_context_from
from billing.services import BatchRecord, UsageRecordResult, usage_record, usage_record_batch
from gateway.checks import key_window_refusal, subscription_window_refusal

NO_USAGE = Usage(input_tokens=0, output_tokens=0)
logger = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class Entry:
    request_id: str
    key: Any  # KeySnapshot
    channel: Any  # ChannelSnapshot | None
    account: Any  # UpstreamAccountSnapshot
    requested_model: str
    mapped_model: str
    upstream_model: str
    usage: Usage
    usage_source: str
    outcome: str
    stream: bool
    status_code: int
    duration_ms: int
    first_token_ms: int | None
    client_ip: str
    user_agent: str
    pending_id: int | None = None  # the request's pending record (issue 13 holds), settled with it
    # When the request finished: its ledger time, not when the recorder's batch commits (up to
    # GATEWAY_RECORD_BATCH_WAIT_MS later).
    finished_at: datetime | None = None


def _recorded_fields(entry: Entry, context: BillingContext) -> dict[str, Any]:
    """What the ledger is told about a finished request, alone (usage_record) or in a batch."""
    return {
        "request_id": entry.request_id,
        "api_key_id": entry.key.id,
        "account_id": entry.account.id,
        "requested_model": entry.requested_model,
        "mapped_model": entry.mapped_model if entry.mapped_model != entry.requested_model else "",
        "upstream_model": entry.upstream_model,
        "usage": entry.usage,
        "context": context,
        "stream": entry.stream,
        "duration_ms": entry.duration_ms,
        "first_token_ms": entry.first_token_ms,
        "status_code": entry.status_code,
        "client_ip": entry.client_ip or None,
        "user_agent": entry.user_agent,
        "outcome": entry.outcome,
        "usage_source": entry.usage_source,
        "created_at": entry.finished_at,
    }


def record(entry: Entry) -> tuple[UsageRecordResult, KeySnapshot]:
    """Record the request; the key snapshot with the counters the charge left (docs/gateway.md#auth-snapshot)."""
    context = billing_context_from(key=entry.key, channel=entry.channel, account=entry.account)
    result = usage_record(**_recorded_fields(entry, context))
    fresh = refreshed(entry.key, result)
    announce_spent(entry, fresh, result)
    return result, fresh


def record_batch(entries: list[Entry]) -> list[tuple[UsageRecordResult, KeySnapshot]]:
    """Record several requests in one transaction; for each, what `record` answers.

    The entries of a batch mostly share their snapshots (a busy key's requests), and their results
    share the counters the batch left: each context, refreshed snapshot and announcement is made
    once per distinct set of them (by identity), not once per request.
    """
    contexts: dict[tuple[int, int, int], BillingContext] = {}
    records = []
    for entry in entries:
        shared = (id(entry.key), id(entry.channel), id(entry.account))
        context = contexts.get(shared)
        if context is None:
            context = billing_context_from(key=entry.key, channel=entry.channel, account=entry.account)
            contexts[shared] = context
        records.append(BatchRecord(**_recorded_fields(entry, context), pending_id=entry.pending_id))
    results = usage_record_batch(records)
    fresh_of: dict[tuple, KeySnapshot] = {}
    announced: set[tuple[int, int, int]] = set()
    answers = []
    for entry, result in zip(entries, results, strict=True):
        # Every object in these keys is held by `entries` or `results` until the loop ends, so
        # no id is reused within it.
        counters = (
            id(entry.key),
            result.duplicate,
            id(result.key_charge),
            id(result.balance_usd),
            id(result.subscription_windows),
        )
        fresh = fresh_of.get(counters)
        if fresh is None:
            fresh = fresh_of[counters] = refreshed(entry.key, result)
        spent = (id(fresh), id(entry.account), id(result.account_quota))
        if spent not in announced:
            announced.add(spent)
            announce_spent(entry, fresh, result)
        answers.append((result, fresh))
    return answers


_STOP = object()


class _Call:
    def __init__(self, function: Any) -> None:
        self.function = function
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.function()
        except Exception:
            logger.exception("a call on the recorder thread failed")
        finally:
            self.done.set()


class BatchRecorder:
    """One thread that records finished requests in batches, on its own database connection.

    `record` queues an entry and waits for its answer. The thread takes whatever is queued (up to
    `size`), waits up to `wait` seconds for more while the batch is not full, and records them in
    one transaction: when requests finish faster than one transaction commits, they share one.
    While it waits it sleeps until the deadline or until the batch could be full, not waking for
    each entry: a wake is a handover of the GIL that the event loop pays for
    (docs/recording.md#batches). The answers of a batch go back to each event loop in one call.
    A batch that fails is retried one record at a time, so one bad record (a key deleted in the
    meantime) costs only its own row. `stop` records everything queued before it, then ends the thread.
    """

    def __init__(self, *, size: int, wait: float) -> None:
        self.size = max(1, min(size, 100))
        self.wait = max(0.0, wait)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # While a batch waits for more: set by `record` once the queue holds `_wanted` entries
        # (what would fill the batch), and by `stop`. No lock: a stale `_wanted` only makes the
        # thread wake early or at its deadline, and the thread looks at the queue after clearing.
        self._more = threading.Event()
        self._wanted = self.size + 1  # nothing to wake for until a batch waits
        self._stopping = False
        self.waits = 0  # times a batch slept waiting for more, for tests
        self.batches = 0  # transactions committed or tried, for tests and the benchmark
        self._thread = threading.Thread(target=self._run, name="gateway-recorder", daemon=True)
        self._thread.start()

    async def record(self, entry: Entry) -> tuple[UsageRecordResult, KeySnapshot]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((entry, loop, future))
        if self._queue.qsize() >= self._wanted:
            self._more.set()
        return await future

    def stop(self) -> None:
        self._queue.put(_STOP)
        # After the put: a thread that sees the flag finds _STOP queued. The flag, not the event
        # alone, because the thread may clear the event between this set and its next look.
        self._stopping = True
        self._more.set()
        self._thread.join()

    def on_thread(self, function: Any) -> None:
        """Run `function` on the recorder thread (its connection is that thread's), between
        batches; block until it has run."""
        call = _Call(function)
        self._queue.put(call)
        call.done.wait(timeout=30)

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                if isinstance(item, _Call):
                    item.run()
                    continue
                batch, calls = [item], []
                stopping = self._gather(batch, calls)
                self._flush(batch)
                for call in calls:
                    call.run()
                if stopping:
                    return
        finally:
            connections.close_all()

    def _gather(self, batch: list, calls: list) -> bool:
        """Add what is queued to `batch` (calls to `calls`) until it is full or `wait` has passed
        since its first entry; True when `stop` was called meanwhile."""
        deadline = time.monotonic() + self.wait
        while True:
            while len(batch) < self.size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    return True
                if isinstance(more, _Call):
                    calls.append(more)
                else:
                    batch.append(more)
            remaining = deadline - time.monotonic()
            if len(batch) >= self.size or remaining <= 0:
                self._wanted = self.size + 1
                return False
            self._wanted = self.size - len(batch)
            self._more.clear()
            # Cleared before looking: an entry queued after the look sets it again.
            if not self._stopping and self._queue.qsize() < self._wanted:
                self.waits += 1
                self._more.wait(remaining)

    def _flush(self, batch: list) -> None:
        entries = [entry for entry, _loop, _future in batch]
        self.batches += 1
        try:
            answers: list = record_batch(entries)
        except Exception:
            logger.warning("recording a batch of %s failed; recording them one by one", len(entries))
            self._forget_broken_connection()
            answers = []
            for entry in entries:
                try:
                    answers.append(record(entry))
                except Exception as error:  # noqa: BLE001 - handed to the request that waits for it
                    self._forget_broken_connection()
                    answers.append(error)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (entry, loop, future), answer in zip(batch, answers, strict=True):
            by_loop.setdefault(loop, []).append((entry, future, answer))
        for loop, answered in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, answered)
            except RuntimeError:  # the event loop has closed: nobody waits for these answers
                for entry, _future, _answer in answered:
                    logger.info("request %s recorded after its event loop closed", entry.request_id)

    @staticmethod
    def _forget_broken_connection() -> None:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()


def _resolve_all(answered: list) -> None:
    for entry, future, answer in answered:
        if future.done():
            continue
        try:
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        except Exception:  # one answer that cannot be set must not leave the others waiting
            logger.exception("handing request %s its recording failed", entry.request_id)
            future.cancel()


def refreshed(key: KeySnapshot, result: UsageRecordResult) -> KeySnapshot:
    """`key` with every counter the charge returned (the rest as the snapshot had it)."""
    if result.duplicate:
        return key
    changes: dict[str, Any] = {}
    if result.key_charge is not None:
        changes.update(status=result.key_charge.status, quota_used_usd=result.key_charge.quota_used_usd)
        changes.update(result.key_charge.windows)
    if result.balance_usd is not None:
        changes["user"] = dataclasses.replace(key.user, balance=result.balance_usd)
    if result.subscription_windows is not None and key.subscription is not None:
        changes["subscription"] = dataclasses.replace(key.subscription, **result.subscription_windows)
    return dataclasses.replace(key, **changes) if changes else key


def announce_spent(entry: Entry, fresh: KeySnapshot, result: UsageRecordResult) -> None:
    """A charge that spent a limit drops the snapshots that would let the next request through, in
    every process (the counters as the database has them, from the charge's RETURNING)."""
    now = timezone.now()
    key_ids, user_ids, subscription_ids, account_ids = [], [], [], []
    if (
        fresh.status != "active"
        or (fresh.quota_usd > 0 and fresh.quota_used_usd >= fresh.quota_usd)
        or key_window_refusal(fresh, now) is not None
    ):
        key_ids.append(fresh.id)
    group = fresh.group
    if group is not None and group.is_subscription:
        if fresh.subscription is not None and subscription_window_refusal(fresh, now) is not None:
            subscription_ids.append(fresh.subscription.id)
    elif fresh.user.balance <= 0:
        user_ids.append(fresh.user_id)
    quota = result.account_quota
    if quota is not None and entry.account.quota_applies and quota.is_exceeded(now):
        account_ids.append(entry.account.id)
    if key_ids or user_ids or subscription_ids or account_ids:
        snapshots_changed(
            key_ids=key_ids, user_ids=user_ids, subscription_ids=subscription_ids, account_ids=account_ids
        )


def account_rate_limited(*, account_id: int, until: datetime) -> None:
    upstream_account_mark_rate_limited(account_id=account_id, until=until)


def account_failed(*, account_id: int, message: str) -> None:
    upstream_account_mark_error(account_id=account_id, message=message)
