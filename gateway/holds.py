"""Holding a request's estimate before it is relayed (docs/gateway.md#holds-and-settle).

`estimate` prices what a request may cost from its body alone: input tokens by the text rule of
docs/gateway.md#stream-accounting (a token per four characters plus four per message), output
tokens from `max_tokens` / `max_completion_tokens` / `max_output_tokens` or
`GATEWAY_DEFAULT_OUTPUT_TOKENS`, priced by the card the recording will bill it with (the same
BillingContext, billing model and multipliers). `HoldQueue` holds it with the pending record,
together with the same key's other holds waiting then (`reserve_many` on a database thread,
billing.holds.pending_hold_many; docs/gateway.md#hold-batches); the recording settles it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection

from billing.cost import Usage
from billing.holds import (
    AccountHold,
    HoldRequest,
    HoldResult,
    pending_exists,
    pending_hold_finish,
    pending_hold_many,
    pending_hold_statement,
    pending_move_account,
    pending_release,
)
from billing.pricing import billing_context_from, price_request
from channels.catalog import catalog_loaded
from common.money import quantize_usd
from common.prepared import PreparingAsyncCursor
from gateway.checks import QUOTA_RETRY_SECONDS
from gateway.errors import GatewayError
from gateway.usage import EMBEDDINGS, estimate_input_tokens

logger = logging.getLogger("gateway")

OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    usage: Usage
    actual_usd: Decimal  # what the user would pay: held on the key and the balance or subscription
    total_usd: Decimal  # before multipliers: an account's quota holds this × its multiplier


def output_tokens(kind: str, body: dict) -> int:
    if kind == EMBEDDINGS:
        return 0
    for field in OUTPUT_FIELDS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return settings.GATEWAY_DEFAULT_OUTPUT_TOKENS


def estimate(*, key: Any, channel: Any, kind: str, body: dict, model: str, mapped_model: str) -> Estimate:
    usage = Usage(input_tokens=estimate_input_tokens(kind, body), output_tokens=output_tokens(kind, body))
    context = billing_context_from(key=key, channel=channel, account=None)
    _resolution, breakdown = price_request(
        context=context,
        usage=usage,
        requested_model=model,
        mapped_model=mapped_model,
        upstream_model=mapped_model,
    )
    return Estimate(usage=usage, actual_usd=breakdown.actual_cost, total_usd=breakdown.total_cost)


def early_estimate(
    *, key: Any, channel: Any, kind: str, body: dict, model: str, mapped_model: str
) -> Estimate | None:
    """The estimate priced on the event loop while the admission's Redis round trip is under way
    (docs/gateway.md#holds-and-settle), so that the hold does not wait for it; None when the
    catalog is not loaded yet (its import would stall the loop) or the body cannot be priced
    (the hold then prices it on its database thread, and answers that body's own error)."""
    if not catalog_loaded():
        return None
    try:
        return estimate(
            key=key, channel=channel, kind=kind, body=body, model=model, mapped_model=mapped_model
        )
    except Exception:  # noqa: BLE001 - the hold prices it again and answers the error there
        return None


def hold_request(
    *,
    request_id: str,
    key: Any,
    channel: Any,
    accounts: list,
    kind: str,
    body: dict,
    model: str,
    mapped_model: str,
    protocol: str,
    stream: bool,
    guess: Estimate | None = None,
) -> HoldRequest:
    """What to hold for one request: the key, the balance or subscription, and the first of
    `accounts` (candidates in the order they will be tried) whose quota has room. `guess`: the
    request's estimate when the caller has priced it already (`early_estimate`); without it this
    prices it, which may load the catalog, so it then runs on a database thread."""
    if guess is None:
        guess = estimate(
            key=key, channel=channel, kind=kind, body=body, model=model, mapped_model=mapped_model
        )
    group = key.group
    subscription = key.subscription if group is not None and group.is_subscription else None
    candidates = tuple(
        AccountHold(
            account_id=account.id,
            amount_usd=quantize_usd(guess.total_usd * account.rate_multiplier),
            quota=account.quota if account.quota_applies else None,
        )
        for account in accounts
    )
    usage = guess.usage
    return HoldRequest(
        request_id=request_id,
        api_key_id=key.id,
        user_id=key.user_id,
        amount_usd=guess.actual_usd,
        now=datetime.now(UTC),
        lease_seconds=settings.GATEWAY_HOLD_LEASE_SECONDS,
        requested_model=model,
        mapped_model=mapped_model,
        protocol=protocol,
        stream=stream,
        estimate={"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        subscription_id=subscription.id if subscription is not None else None,
        subscription_limits=(
            {
                "daily": group.daily_limit_usd,
                "weekly": group.weekly_limit_usd,
                "monthly": group.monthly_limit_usd,
            }
            if subscription is not None
            else None
        ),
        subscription_starts_at=subscription.starts_at if subscription is not None else None,
        subscription_timezone=group.timezone if subscription is not None else "",
        accounts=candidates,
    )


def reserve_many(requests: list[dict[str, Any]]) -> list[HoldResult | Exception]:
    """Estimate and hold several requests of one key at once (on a database thread), each with
    `hold_request`'s arguments (docs/gateway.md#hold-batches); a request's own error (a body the
    estimate cannot read, a database error of its own) is its answer, and costs the others nothing."""
    answers: list[HoldResult | Exception | None] = [None] * len(requests)
    holdable: list[tuple[int, HoldRequest]] = []
    for index, request in enumerate(requests):
        try:
            holdable.append((index, hold_request(**request)))
        except Exception as error:  # noqa: BLE001 - this request's answer
            answers[index] = error
    if holdable:
        results = pending_hold_many([hold for _index, hold in holdable])
        for (index, _hold), result in zip(holdable, results, strict=True):
            answers[index] = result
    if any(isinstance(answer, Exception) for answer in answers):
        connection.close_if_unusable_or_obsolete()  # as a failed job does (gateway.db)
    return answers  # type: ignore[return-value]  # every index is answered above


LOOP_HOLDS_APPLICATION = "tollgate gateway holds"  # pg_stat_activity's application_name
CONNECT_RETRY_SECONDS = 5.0  # after a connection for holds could not be opened


def loop_connection_params() -> dict[str, Any] | None:
    """What `LoopHolds` connects with: Django's own parameters for its database (read on a
    database thread), as a connection in autocommit that prepares every statement; None when
    Django's connection needs a setup of its own that these would skip (`assume_role`)."""
    if connection.settings_dict.get("OPTIONS", {}).get("assume_role"):
        return None
    params = dict(connection.get_connection_params())
    params.pop("cursor_factory", None)  # Django's is a synchronous cursor
    return {**params, "autocommit": True, "prepare_threshold": 0, "application_name": LOOP_HOLDS_APPLICATION}


def _finish_on_thread(hold: HoldRequest) -> HoldResult | Exception:
    """The step-by-step rest of a hold the event loop's statement did not take (a database thread)."""
    result = pending_hold_finish(hold, held=False)
    if isinstance(result, Exception):
        connection.close_if_unusable_or_obsolete()  # as reserve_many does
    return result


class LoopHolds:
    """Lone holds sent from the event loop, on connections of their own
    (docs/gateway.md#holds-on-the-event-loop).

    A hold that goes alone (its key has no other waiting) is one statement that needs no
    transaction: the event loop sends it on a psycopg AsyncConnection and reads the answer, so the
    request does not wait for a database thread to take the job, nor for the event loop to take
    the answer back. At most `size` connections; when all are busy, or the request's estimate was
    not priced early, or a connection cannot be opened, `fallback` (`reserve_many`, on a database
    thread) holds it as before. The statement is prepared once per connection, its text rewritten
    for the server once per process (common.prepared.PreparingAsyncCursor). The rest of a hold
    (refused: the step-by-step transaction that names the limit) runs on a database thread. A
    connection that breaks under a statement is closed, and the pending record tells whether the
    hold committed before the answer was lost.
    """

    def __init__(
        self, *, db: Any, size: int, fallback: Callable[[list], list[HoldResult | Exception]]
    ) -> None:
        self.db = db
        self.size = size
        self.fallback = fallback
        self.held = 0  # holds this sent from the event loop, for tests and the benchmark
        # Told each statement before it is sent, as Django's execute wrappers are on its own
        # connections (tracing, tests): these connections are not Django's.
        self.observers: list[Callable[[str], None]] = []
        self.closed = False
        self._params: dict[str, Any] | None = None
        self._idle: list[psycopg.AsyncConnection] = []
        self._open = 0  # connections open or opening, idle or in use
        self._closing: set[asyncio.Task] = set()
        self._connect_after = 0.0  # loop time: no new connection before (a connect failed)

    async def hold(self, request: dict[str, Any]) -> list[HoldResult | Exception]:
        """`reserve_many([request])`'s answer."""
        if request.get("guess") is None or not self._can_take():
            return await self.db.run(self.fallback, [request])
        try:
            hold = hold_request(**request)
            statement = pending_hold_statement(hold)
        except Exception as error:  # noqa: BLE001 - this request's answer, as reserve_many gives it
            return [error]
        for observer in self.observers:
            observer(statement.sql)
        try:
            link = await self._take()
        except (psycopg.Error, OSError):
            self._connect_after = asyncio.get_running_loop().time() + CONNECT_RETRY_SECONDS
            logger.warning(
                "a connection for holds on the event loop could not be opened; the database "
                "threads hold for the next %.0f s",
                CONNECT_RETRY_SECONDS,
                exc_info=True,
            )
            return await self.db.run(self.fallback, [request])
        if link is None:  # these connections cannot be set up as Django's are
            return await self.db.run(self.fallback, [request])
        backend = (link.info.backend_pid, LOOP_HOLDS_APPLICATION)
        try:
            cursor = await PreparingAsyncCursor(link).execute(statement.sql, statement.params)
            held = statement.read(await cursor.fetchone())
        except psycopg.Error as error:
            if not link.broken and not link.closed:
                self._give(link)
                held = False  # the statement failed alone (autocommit): it held nothing
                # Usually a request id held twice; a statement the loop cannot send at all (its
                # text or values, common.prepared) would otherwise go to the threads unseen.
                logger.debug("a hold on the event loop failed (%s); a database thread takes it", error)
            else:
                await self._discard(link)
                held = await self.db.run(
                    pending_exists,
                    request_id=hold.request_id,
                    api_key_id=hold.api_key_id,
                    ended_backend=backend,
                )
        except BaseException:
            await self._discard(link)  # cut off mid-statement: the connection's state is unknown
            raise
        else:
            self._give(link)
        if held:
            self.held += 1
            return [pending_hold_finish(hold, held=True)]
        return [await self.db.run(_finish_on_thread, hold)]

    def _can_take(self) -> bool:
        if self.closed:
            return False
        if self._idle:
            return True
        return self._open < self.size and asyncio.get_running_loop().time() >= self._connect_after

    async def _take(self) -> psycopg.AsyncConnection | None:
        if self._idle:
            return self._idle.pop()
        self._open += 1
        try:
            if self._params is None:
                self._params = await self.db.run(loop_connection_params)
                if self._params is None:
                    logger.warning("holds go through the database threads: Django's connection sets a role")
                    self.closed = True
            if self.closed:
                self._open -= 1
                return None
            return await psycopg.AsyncConnection.connect(**self._params)
        except BaseException:
            self._open -= 1
            raise

    def _give(self, link: psycopg.AsyncConnection) -> None:
        if self.closed:
            task = asyncio.ensure_future(self._discard(link))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._idle.append(link)

    async def _discard(self, link: psycopg.AsyncConnection) -> None:
        self._open -= 1
        try:
            await link.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail: it is gone either way
            logger.debug("closing a connection for holds failed", exc_info=True)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Shutting down: close the idle connections, and wait (up to `timeout`) for those in use
        to come back and be closed."""
        self.closed = True
        idle, self._idle = self._idle, []
        for link in idle:
            await self._discard(link)
        deadline = asyncio.get_running_loop().time() + timeout
        while (self._open or self._closing) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


class HoldQueue:
    """The holds of one process, taken in batches per key (docs/gateway.md#hold-batches).

    A key with no hold running has its request's hold started at once, alone, so a key that is not
    busy waits for nothing. Holds of that key that arrive while one runs wait for it, and then go
    together as the next batch (up to `size`): a hot key's requests lock its row once per batch,
    and wait for one commit, instead of queueing on the row one by one. Keys never wait for each
    other. `hold_many` runs on a database thread and answers each request's HoldResult (or its own
    error). A request that stops waiting (cancelled) before its batch starts is left out of it; one
    whose hold was taken all the same (cancelled while its batch ran, or just after) has it given
    back with `release`, in the background: `tasks` lists what is still running, for a drain.
    """

    def __init__(
        self,
        *,
        db: Any,
        size: int,
        hold_many: Callable[[list], list[HoldResult | Exception]],
        release: Callable[[Any], Any],
        alone: Callable[[Any], Awaitable[list[HoldResult | Exception]]] | None = None,
    ) -> None:
        self.db = db
        self.size = max(1, size)
        self.hold_many = hold_many
        self.release = release
        self.alone = alone  # a batch of one, on the event loop (LoopHolds.hold), else hold_many
        self.batches = 0  # hold batches run, for tests and the benchmark
        self._waiting: dict[int, list[tuple[Any, asyncio.Future]]] = {}
        self._running: dict[int, asyncio.Task] = {}
        self._releasing: set[asyncio.Task] = set()

    @property
    def tasks(self) -> set[asyncio.Task]:
        return {*self._running.values(), *self._releasing}

    @property
    def idle(self) -> bool:
        return not self._running and not self._releasing

    async def reserve(self, key_id: int, request: Any) -> HoldResult:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key_id, []).append((request, future))
        if key_id not in self._running:
            self._start(key_id)
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled after its answer was set but before it resumed: the hold is this request's.
            if (
                future.done()
                and not future.cancelled()
                and future.exception() is None
                and future.result().held
            ):
                self._release_later(request)
            raise

    def _start(self, key_id: int) -> None:
        # A context of its own: a batch's log lines belong to no one request of it.
        task = asyncio.get_running_loop().create_task(self._run(key_id), context=contextvars.Context())
        self._running[key_id] = task
        task.add_done_callback(functools.partial(self._ended, key_id))

    async def _run(self, key_id: int) -> None:
        try:
            while waiting := self._waiting.pop(key_id, None):
                live = [(request, future) for request, future in waiting if not future.done()]
                batch, rest = live[: self.size], live[self.size :]
                if rest:
                    self._waiting[key_id] = rest
                if batch:
                    await self._hold(batch)
        finally:
            # Here, not in a done callback: a request arriving once this returns starts a new run.
            if self._running.get(key_id) is asyncio.current_task():
                del self._running[key_id]

    def _ended(self, key_id: int, task: asyncio.Task) -> None:
        if self._running.get(key_id) is task:  # cancelled before it ever ran
            del self._running[key_id]
        if task.cancelled() or task.exception() is not None:
            for _request, future in self._waiting.pop(key_id, []):
                future.cancel()

    async def _hold(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.batches += 1
        if len(batch) == 1 and self.alone is not None:
            work = self.alone(batch[0][0])
        else:
            work = self.db.run(self.hold_many, [request for request, _ in batch])
        job = asyncio.ensure_future(work)
        try:
            results = await asyncio.shield(job)
        except asyncio.CancelledError:
            # Shutting down: the database thread finishes the batch anyway; what it holds for
            # requests that will never relay goes back once it has.
            for _request, future in batch:
                future.cancel()
            job.add_done_callback(functools.partial(self._answer_finished, batch))
            raise
        except Exception as error:  # noqa: BLE001 - handed to each request that waits for it
            for _request, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._answer(batch, results)

    def _answer_finished(self, batch: list[tuple[Any, asyncio.Future]], job: asyncio.Future) -> None:
        if not job.cancelled() and job.exception() is None:
            self._answer(batch, job.result())

    def _answer(self, batch: list[tuple[Any, asyncio.Future]], results: list) -> None:
        for (request, future), result in zip(batch, results, strict=True):
            if future.done():  # it stopped waiting while its batch ran
                if not isinstance(result, Exception) and result.held:
                    self._release_later(request)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _release_later(self, request: Any) -> None:
        task = asyncio.ensure_future(self._release(request))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, request: Any) -> None:
        try:
            await self.db.run(self.release, request)
        except Exception:
            logger.exception(
                "giving back a hold whose request stopped waiting failed: recovery settles its "
                "pending record when the lease ends"
            )


def release_reserved(request: dict[str, Any]) -> None:
    """Give back the hold of a request (`hold_request`'s arguments) that will not be relayed."""
    pending_release(request_id=request["request_id"], api_key_id=request["key"].id)


def move(
    *,
    request_id: str,
    key: Any,
    channel: Any,
    account: Any,
    kind: str,
    body: dict,
    model: str,
    mapped_model: str,
) -> bool:
    """Failover (on a database thread): hold the request's estimate on `account`'s quota instead
    of the account it held on; False when that quota has no room (billing.holds.pending_move_account)."""
    guess = estimate(key=key, channel=channel, kind=kind, body=body, model=model, mapped_model=mapped_model)
    return pending_move_account(
        request_id=request_id,
        api_key_id=key.id,
        to=AccountHold(
            account_id=account.id,
            amount_usd=quantize_usd(guess.total_usd * account.rate_multiplier),
            quota=account.quota if account.quota_applies else None,
        ),
        now=datetime.now(UTC),
    )


class BesideAdmission:
    """Whether a request's hold may start beside its admission instead of after it
    (docs/gateway.md#the-hold-beside-the-admission).

    Beside, a request that the admission then refuses (its user's or key's concurrency, the RPM)
    has held its estimate for a moment for nothing, and another request of the key could be
    refused for that moment's sake. So a key whose user or key this process has just seen refused
    by the admission, or whose hold was refused, holds after the admission again for `pause`
    seconds. Process-local: another process learns it from its own refusals.
    """

    def __init__(self, *, enabled: bool, pause: float = 10.0, size: int = 10_000) -> None:
        self.enabled = enabled
        self.pause = pause
        self.size = size
        self._until: dict[tuple[str, int], float] = {}  # ("key" | "user", id) -> monotonic time

    def allows(self, key: Any) -> bool:
        if not self.enabled:
            return False
        if not self._until:
            return True
        now = time.monotonic()
        return (
            self._until.get(("key", key.id), 0.0) <= now
            and self._until.get(("user", key.user_id), 0.0) <= now
        )

    def refused(self, key: Any) -> None:
        now = time.monotonic()
        if len(self._until) >= self.size:
            self._until = {scope: until for scope, until in self._until.items() if until > now}
            if len(self._until) >= self.size:
                self._until.clear()
        self._until[("key", key.id)] = self._until[("user", key.user_id)] = now + self.pause


def refusal(limit: str, key: Any, model: str) -> GatewayError:
    """The code of the limit a hold did not fit (docs/gateway.md#checks): in-flight requests hold
    the rest, so trying again once they finish may succeed."""
    if limit == "key_quota":
        return GatewayError(
            "API_KEY_QUOTA_EXHAUSTED",
            f"This API key's quota of ${key.quota_usd} has no room for this request.",
            retry_after=QUOTA_RETRY_SECONDS if key.quota_used_usd >= key.quota_usd else 1,
        )
    if limit.startswith("key_"):
        kind = limit.removeprefix("key_")
        return GatewayError(
            "rate_limit_exceeded",
            f"This key's {kind} spend limit of ${getattr(key, f'rate_limit_{kind}_usd')} has no room for this request.",
            retry_after=1,
        )
    if limit.startswith("subscription_"):
        kind = limit.removeprefix("subscription_")
        return GatewayError(
            "USAGE_LIMIT_EXCEEDED",
            f"The subscription's {kind} limit has no room for this request.",
            retry_after=1,
        )
    if limit == "balance":
        return GatewayError(
            "INSUFFICIENT_BALANCE", "The account's balance does not cover this request: add funds."
        )
    return GatewayError(
        "NO_ACCOUNT_AVAILABLE",
        f"No account of this key's group has quota left for {model!r} right now.",
        retry_after=settings.GATEWAY_NO_ACCOUNT_RETRY_SECONDS,
    )
