"""Holds and pending records: the writes around a request in flight (docs/gateway.md#holds-and-settle,
docs/gateway.md#pending-records).

- `pending_hold`: before relaying, ONE transaction writes the pending record (the outbox) and
  raises the `held` column of every counted row by the request's estimate, each with one
  conditional UPDATE that only matches while the estimate still fits every limit of that row.
  An UPDATE that matches nothing rolls the whole transaction back: nothing stays held, and the
  result names the limit that did not fit.
- `pending_hold_many`: the same for several requests of one key in one query string that ends
  with COMMIT (docs/gateway.md#hold-batches): the key's row is locked once per batch.
- `pending_hold_statement` / `pending_hold_finish`: the one-statement hold for a caller that
  sends it on its own connection (docs/gateway.md#holds-on-the-event-loop), then the rest.
- `pending_settle`: the recording transaction's step (billing.services.usage_record calls it
  right after the ledger row): deletes the pending record and lowers each hold it raised.
- `pending_take_many`: a batch recording's step: deletes the batch's pending records in one
  statement and answers what each held, summed per row; the batch lowers those holds inside the
  UPDATEs that charge the same rows (their `release_usd`), so settling adds one statement to a
  batch, not one per request.
- `pending_release`: the request ended with nothing to record (refused before any upstream
  answered, the client left first): the same as settle, in its own transaction.

PostgreSQL only: the statements are precompiled SQL (no query building per request) and the
settle step is one statement with data-modifying CTEs. The statements every request runs (the
one-statement hold, settle, release, a batch's take, a stream's observed usage) are prepared on
each connection and bound by the server (common.prepared): no quoting of parameters in Python,
no parse and plan per request. On other databases (SQLite, the embedded single-process default)
holds are skipped and the snapshot checks admit as before.

What "fits" means, per limit L with `used` (a window read by the display rule: an ended window
counts as empty), `held` and the estimate E: used + held + E <= L, or nothing else is held and
used < L (a lone request may spend the rest, as before holds: it may overshoot by at most its
own cost). A 0 key or account limit is no limit; a subscription window limit of None or
negative is none and 0 allows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from psycopg.types.numeric import Int8

from accounts import windows
from accounts.models import APIKey, Subscription, UpstreamAccount, User, timezone_name
from accounts.services.upstream import _period_threshold
from accounts.snapshots import AccountQuota
from billing.models import PendingRequest
from common.money import quantize_usd
from common.prepared import prepared_cursor
from common.statements import BuiltStatement, run_at_once

ZERO = Decimal(0)
NO_LIMIT = Decimal(-1)


@dataclass(frozen=True, slots=True)
class AccountHold:
    """One candidate account and what the request would hold on its quota."""

    account_id: int
    amount_usd: Decimal
    quota: AccountQuota | None  # limits and reset rules as the caller's snapshot has them; None: none apply

    @property
    def limited(self) -> bool:
        quota = self.quota
        return quota is not None and (
            quota.limit_usd > 0 or quota.daily_limit_usd > 0 or quota.weekly_limit_usd > 0
        )


@dataclass(frozen=True, slots=True)
class HoldResult:
    """Held (`refused` empty), or the limit that did not fit: "key_quota", "key_5h" / "key_1d" /
    "key_7d", "subscription_daily" / "_weekly" / "_monthly", "balance" or "account_quota"."""

    refused: str = ""
    account_id: int | None = None  # the account held on (None: no account quota applies)
    skipped_account_ids: tuple[int, ...] = ()  # candidates whose quota had no room

    @property
    def held(self) -> bool:
        return not self.refused


class _Refused(Exception):
    def __init__(self, limit: str) -> None:
        self.limit = limit


def holds_supported() -> bool:
    return connection.vendor == "postgresql"


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What `pending_hold` takes, for one request: `pending_hold_many` takes a list of them."""

    request_id: str
    api_key_id: int
    user_id: int
    amount_usd: Decimal
    now: datetime
    lease_seconds: float
    requested_model: str
    mapped_model: str
    protocol: str
    stream: bool
    estimate: dict[str, int]
    subscription_id: int | None = None
    subscription_limits: dict[str, Decimal | None] | None = None
    subscription_starts_at: datetime | None = None
    subscription_timezone: str = ""
    accounts: tuple[AccountHold, ...] = ()


def pending_hold(**request: Any) -> HoldResult:
    """Hold `amount_usd` on the key and on the subscription (when `subscription_id`) or else the
    balance, and an account's amount on one of `accounts`; write the pending record. One
    transaction; see the module docstring for "fits". Takes HoldRequest's fields.

    `accounts` lists the candidates in the order the gateway will try them: the first without a
    quota limit (nothing to hold: no statement, no lock on a row every key shares) or with room
    is chosen, and named on the record so recovery can charge the account that most likely
    served. When none is, the result is refused with "account_quota".
    """
    return _hold_one(HoldRequest(**request))


def _hold_one(hold: HoldRequest) -> HoldResult:
    at_once = _at_once_of(hold)
    if _hold_at_once(at_once):
        return _held_at_once(hold)
    return _hold_step_by_step(hold, at_once)


def pending_hold_many(requests: list[HoldRequest]) -> list[HoldResult | Exception]:
    """`pending_hold` for several requests of ONE key at once (docs/gateway.md#hold-batches): each
    request's one-statement hold, all in one query string that ends with COMMIT, so the key's row
    is locked once, for the time the server takes to run them, and the batch waits for one
    commit's flush instead of one each. Each statement still holds its own request all or nothing,
    on the rows as the statements before it left them.

    A request whose statement did not fit (or every request, when the string failed) then goes the
    step-by-step way alone, which names its refusal. A request's own error is its answer, so the
    others' holds still reach their requests (who settle or release them). The statements run in
    ascending order of the account they lock (none first), so the batch takes the key, its money
    row, then accounts by id: the order every hold and recording takes. Requests whose money row
    differs (a subscription that changed under a snapshot) are held one by one instead."""
    if len({request.api_key_id for request in requests}) != 1:
        raise ValueError("a hold batch is for one key's requests")
    money_rows = {(request.subscription_id, request.user_id) for request in requests}
    if len(requests) == 1 or len(money_rows) > 1:
        return [_hold_alone(request) for request in requests]
    at_once: dict[int, _AtOnce] = {}
    results: dict[int, HoldResult | Exception] = {}
    for index, request in enumerate(requests):
        try:
            at_once[index] = _at_once_of(request)
        except Exception as error:  # noqa: BLE001 - this request's answer
            results[index] = error
    order = sorted(at_once, key=lambda index: _account_order(at_once[index]))
    statements = [_at_once_statement(at_once[index]) for index in order]
    try:
        with transaction.atomic():
            answers = run_at_once(statements, commit=True)
    except (OperationalError, InterfaceError):
        # The connection failed: the server may have run the COMMIT before the answer was lost.
        # A request whose pending record exists now was held by this string.
        answers = _pending_now(requests[0].api_key_id, [requests[index].request_id for index in order])
    except DatabaseError:
        # A statement failed, so the string stopped before its COMMIT and nothing of it stays:
        # each request alone, as if it had come by itself.
        answers = [False] * len(order)
    for index, held in zip(order, answers, strict=True):
        if held:
            results[index] = _held_at_once(requests[index])
            continue
        try:
            results[index] = _hold_step_by_step(requests[index], at_once[index])
        except Exception as error:  # noqa: BLE001 - this request's own failure (its id held twice)
            results[index] = error
    return [results[index] for index in range(len(requests))]


def pending_hold_statement(hold: HoldRequest) -> BuiltStatement:
    """`hold`'s one-statement hold, for a caller that sends it on a connection of its own (the
    gateway's event loop, docs/gateway.md#holds-on-the-event-loop): it needs no transaction, and
    its read answers True when it held. Then `pending_hold_finish`."""
    return _at_once_statement(_at_once_of(hold))


def pending_hold_finish(hold: HoldRequest, *, held: bool) -> HoldResult | Exception:
    """After `pending_hold_statement` ran: the result when it held; else the step-by-step hold, in
    a transaction on this thread's connection (which names the refusal), or its own error."""
    if held:
        return _held_at_once(hold)
    try:
        return _hold_step_by_step(hold, _at_once_of(hold))
    except Exception as error:  # noqa: BLE001 - this request's answer
        return error


def pending_exists(*, request_id: str, api_key_id: int, ended_backend: tuple[int, str] | None = None) -> bool:
    """Whether the request's pending record is there: after a connection failed under a hold, it
    tells whether the hold committed before the answer was lost. `ended_backend`: that
    connection's (backend pid, application name). The server may not have noticed the lost client
    yet and still be running the statement (waiting for a row's lock, say): it is ended first
    (waiting up to 5 s for it to go), so that the answer cannot change afterwards."""
    if ended_backend is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE pid = %s AND application_name = %s AND usename = current_user",
                list(ended_backend),
            )
    return _pending_now(api_key_id, [request_id])[0]


def _hold_alone(request: HoldRequest) -> HoldResult | Exception:
    try:
        return _hold_one(request)
    except Exception as error:  # noqa: BLE001 - this request's answer
        return error


def _account_order(hold: _AtOnce) -> int:
    return -1 if hold.account is None else hold.account.account_id


def _pending_now(key_id: int, request_ids: list[str]) -> list[bool]:
    found = set(
        PendingRequest.objects.filter(api_key_id=key_id, request_id__in=request_ids).values_list(
            "request_id", flat=True
        )
    )
    return [request_id in found for request_id in request_ids]


def _at_once_of(hold: HoldRequest) -> _AtOnce:
    first = hold.accounts[0] if hold.accounts else None
    amount = quantize_usd(hold.amount_usd)
    return _AtOnce(
        key_id=hold.api_key_id,
        user_id=hold.user_id,
        subscription_id=hold.subscription_id,
        amount=amount,
        now=hold.now,
        subscription_limits=hold.subscription_limits or {},
        subscription_starts_at=hold.subscription_starts_at,
        subscription_timezone=hold.subscription_timezone,
        account=first if first is not None and first.limited else None,
        pending=[
            hold.request_id,
            hold.api_key_id,
            hold.user_id,
            hold.subscription_id,
            first.account_id if first else None,
            amount,
            quantize_usd(first.amount_usd) if first is not None and first.limited else ZERO,
            hold.requested_model[:200],
            hold.mapped_model[:200],
            hold.protocol,
            hold.stream,
            _json(hold.estimate),
            hold.now,
            hold.now + timedelta(seconds=hold.lease_seconds),
        ],
    )


def _held_at_once(hold: HoldRequest) -> HoldResult:
    return HoldResult(account_id=hold.accounts[0].account_id if hold.accounts else None)


def _hold_step_by_step(hold: HoldRequest, at_once: _AtOnce) -> HoldResult:
    """Something did not fit (or the statement lost a race): the whole hold again one statement at
    a time, each refusal named by its own row. Alone exact on every outcome; the one-statement
    hold is its common case in one round trip, and it held nothing."""
    amount = at_once.amount
    skipped: list[int] = []
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _hold_key(cursor, key_id=hold.api_key_id, amount=amount, now=hold.now)
            if hold.subscription_id is not None:
                _hold_subscription(
                    cursor,
                    subscription_id=hold.subscription_id,
                    amount=amount,
                    now=hold.now,
                    limits=hold.subscription_limits or {},
                    starts_at=hold.subscription_starts_at,
                    timezone=hold.subscription_timezone,
                )
            else:
                _hold_balance(cursor, user_id=hold.user_id, amount=amount)
            chosen: AccountHold | None = None
            account_amount = ZERO
            for candidate in hold.accounts:
                if not candidate.limited:
                    chosen = candidate
                    break
                if _hold_account(cursor, candidate, now=hold.now):
                    chosen, account_amount = candidate, quantize_usd(candidate.amount_usd)
                    break
                skipped.append(candidate.account_id)
            if hold.accounts and chosen is None:
                raise _Refused("account_quota")
            pending = list(at_once.pending)
            pending[4], pending[6] = (chosen.account_id if chosen else None), account_amount
            cursor.execute(_pending_insert_sql(), pending)
    except _Refused as refusal:
        return HoldResult(refused=refusal.limit, skipped_account_ids=tuple(skipped))
    return HoldResult(account_id=chosen.account_id if chosen else None, skipped_account_ids=tuple(skipped))


def pending_move_account(*, request_id: str, api_key_id: int, to: AccountHold, now: datetime) -> bool:
    """Failover: the request moves to another account. One transaction: hold its amount on the
    new account (when a quota applies there), give the old account's hold back, and name the new
    account on the pending record, so a recovery charges the account that served. False, with
    nothing changed, when the new account's quota has no room (the gateway then skips it). True
    without a change when the request holds nothing (no pending record) or already names it.

    The pending record is locked first, as a recording does; the two account rows in ascending id
    order, so two requests moving in opposite directions queue instead of deadlocking."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_pending_account_sql(), {"request_id": request_id, "key": api_key_id})
            row = cursor.fetchone()
            if row is None or row[0] == to.account_id:
                return True
            old_account_id, old_amount = row
            new_amount = quantize_usd(to.amount_usd) if to.limited else ZERO
            steps = []
            if old_account_id is not None and old_amount > 0:
                steps.append((old_account_id, "release"))
            if new_amount > 0:
                steps.append((to.account_id, "hold"))
            for _account_id, step in sorted(steps):
                if step == "release":
                    holds_lower(model=UpstreamAccount, row_id=old_account_id, amount=old_amount)
                elif not _hold_account(cursor, to, now=now):
                    raise _Refused("account_quota")
            cursor.execute(
                _pending_account_move_sql(),
                {"request_id": request_id, "key": api_key_id, "account": to.account_id, "amount": new_amount},
            )
    except _Refused:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _AtOnce:
    """What the one-statement hold needs: the rows, the amounts, and the pending record's values
    (in _PENDING_COLUMNS order)."""

    key_id: int
    user_id: int
    subscription_id: int | None
    amount: Decimal
    now: datetime
    subscription_limits: dict[str, Decimal | None]
    subscription_starts_at: datetime | None
    subscription_timezone: str
    account: AccountHold | None  # the first candidate, when a quota applies to it
    pending: list


def _hold_at_once(hold: _AtOnce) -> bool:
    """The whole hold in one statement, all or nothing: True when it held the key, the balance or
    subscription, the first account (when limited) and wrote the pending record; False when any
    did not fit, and then it changed nothing (the caller names the refusal step by step).

    It locks the rows first (key, then money, then account: the step-by-step order, so holds and
    recordings queue rather than deadlock) and reads whether the estimate fits each as it stands
    once locked; the UPDATEs and the INSERT run only when all fit. Being one statement, it needs no
    transaction of its own: outside one it commits by itself, and no row stays locked while this
    thread waits for a round trip or for Python's GIL (a BEGIN … COMMIT around it kept the hot key
    row locked for as long as the thread took to send the COMMIT). Prepared (common.prepared):
    every id goes as a bigint, every other value has psycopg's type for it or a cast in the SQL;
    the text, over 5 kB for a subscription with an account quota, goes in PostgreSQL's own form,
    rewritten once per process (docs/gateway.md#placeholders-rewritten-once)."""
    statement = _at_once_statement(hold)
    with prepared_cursor() as cursor:
        cursor.execute(statement.sql, statement.params)
        return statement.read(cursor.fetchone())


def _at_once_statement(hold: _AtOnce) -> BuiltStatement:
    """The one-statement hold, built (common.statements): its row reads True when it held."""
    params: dict[str, Any] = {"key_id": Int8(hold.key_id), "amount": hold.amount}
    for kind, length in windows.KEY_WINDOW_LENGTHS.items():
        params[f"expired_{kind}"] = hold.now - length
    if hold.subscription_id is not None:
        params["money_id"] = Int8(hold.subscription_id)
        params.update(
            _subscription_params(
                now=hold.now,
                limits=hold.subscription_limits,
                starts_at=hold.subscription_starts_at,
                timezone=hold.subscription_timezone,
            )
        )
    else:
        params["money_id"] = Int8(hold.user_id)
    modes = None
    if hold.account is not None:
        rules = hold.account.quota
        modes = (rules.daily_reset_mode, rules.weekly_reset_mode)
        params["account_id"] = Int8(hold.account.account_id)
        params["account_amount"] = quantize_usd(hold.account.amount_usd)
        params.update(_account_params(hold.account, now=hold.now))
    for (name, sql_type), value in zip(_PENDING_COLUMNS.items(), hold.pending, strict=True):
        params[f"p_{name}"] = Int8(value) if sql_type == "bigint" and value is not None else value
    return BuiltStatement(_at_once_sql(hold.subscription_id is not None, modes), params, _read_held)


def _read_held(row: tuple | None) -> bool:
    return bool(row and row[-1])


@cache
def _at_once_sql(subscription: bool, account_modes: tuple[str, str] | None) -> str:
    quote = connection.ops.quote_name
    locks: list[str] = []
    changes: list[str] = []

    def step(name: str, table: str, held: str, amount: str, row: str, conditions: tuple) -> None:
        fits = " AND ".join(condition for _name, condition in conditions)
        where = f"{quote('id')} = %({row})s"
        locks.append(f"l{name} AS (SELECT ({fits}) AS fits FROM {quote(table)} WHERE {where} FOR UPDATE)")  # noqa: S608
        changes.append(
            f"{name} AS (UPDATE {quote(table)} SET {quote(held)} = {quote(held)} + {amount} "  # noqa: S608
            f"WHERE {where} AND (SELECT fits FROM go) RETURNING 1)"
        )

    step("k", APIKey._meta.db_table, "held_usd", "%(amount)s", "key_id", _key_conditions())
    if subscription:
        step(
            "m", Subscription._meta.db_table, "held_usd", "%(amount)s", "money_id", _subscription_conditions()
        )
    else:
        step("m", User._meta.db_table, "balance_held", "%(amount)s", "money_id", _balance_conditions())
    if account_modes is not None:
        conditions = _account_conditions(*account_modes, amount="%(account_amount)s")
        step(
            "a",
            UpstreamAccount._meta.db_table,
            "quota_held_usd",
            "%(account_amount)s",
            "account_id",
            conditions,
        )
    names = [f"l{lock[1]}" for lock in locks]  # lk, lm, la
    # A row that is gone (a deleted key) fits nothing: COALESCE of no row is false.
    fits_all = " AND ".join(f"COALESCE((SELECT fits FROM {name}), false)" for name in names)  # noqa: S608
    columns = ", ".join(quote(name) for name in _PENDING_COLUMNS)
    values = ", ".join(f"%(p_{name})s::{sql_type}" for name, sql_type in _PENDING_COLUMNS.items())
    changes.append(
        f"p AS (INSERT INTO {quote(PendingRequest._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT {values} WHERE (SELECT fits FROM go) RETURNING 1)"
    )
    # The main query reads the locks left to right (key, money, account: the rows are locked in
    # that order) before the pending record, whose WHERE starts the writes.
    read_locks = ", ".join(f"(SELECT fits FROM {name})" for name in names)  # noqa: S608
    return (
        f"WITH {', '.join(locks)}, go AS (SELECT {fits_all} AS fits), {', '.join(changes)} "  # noqa: S608
        f"SELECT {read_locks}, EXISTS (SELECT 1 FROM p)"
    )


def pending_settle(*, request_id: str, api_key_id: int) -> bool:
    """Delete the request's pending record and lower every hold it raised, in the caller's
    transaction (the recording's). False when there was none (no hold, or already settled)."""
    if not holds_supported():
        return False
    with prepared_cursor() as cursor:
        cursor.execute(_settle_sql(), {"request_id": request_id, "key": Int8(api_key_id)})
        row = cursor.fetchone()
    return bool(row and row[0])


def pending_release(*, request_id: str, api_key_id: int) -> bool:
    """A request that ends with nothing to record gives its holds back (its own transaction)."""
    if not holds_supported():
        return False
    with transaction.atomic():
        return pending_settle(request_id=request_id, api_key_id=api_key_id)


@dataclass(slots=True)
class TakenHolds:
    """What the pending records a batch deleted held, summed per counted row (id -> amount)."""

    keys: dict[int, Decimal]
    balances: dict[int, Decimal]  # user id
    subscriptions: dict[int, Decimal]
    accounts: dict[int, Decimal]


def pending_take_many(requests: list[tuple[str, int]]) -> TakenHolds:
    """Delete the pending records of (request id, key id) pairs, in the caller's transaction, and
    answer their holds summed per row. The holds themselves stay raised until the caller lowers
    them (billing.services.usage_record_batch does, in its charge UPDATEs). Nothing on other
    databases, which hold nothing."""
    taken = TakenHolds(keys={}, balances={}, subscriptions={}, accounts={})
    if not requests or not holds_supported():
        return taken
    with prepared_cursor() as cursor:
        cursor.execute(
            _take_many_sql(),
            {"request_ids": [rid for rid, _key in requests], "keys": [Int8(key) for _rid, key in requests]},
        )
        rows = cursor.fetchall()
    for key_id, user_id, subscription_id, account_id, held, account_held in rows:
        taken.keys[key_id] = taken.keys.get(key_id, ZERO) + held
        if subscription_id is None:
            taken.balances[user_id] = taken.balances.get(user_id, ZERO) + held
        else:
            taken.subscriptions[subscription_id] = taken.subscriptions.get(subscription_id, ZERO) + held
        if account_id is not None and account_held > 0:
            taken.accounts[account_id] = taken.accounts.get(account_id, ZERO) + account_held
    return taken


def holds_lower(*, model: type, row_id: int, amount: Decimal) -> None:
    """Lower one row's held amount by `amount`, for a row a batch settles but does not charge
    (a free request, a replay); in the caller's transaction."""
    statement = holds_lower_statement(model=model, row_id=row_id, amount=amount)
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, statement.params)


def holds_lower_statement(*, model: type, row_id: int, amount: Decimal) -> BuiltStatement:
    """holds_lower's UPDATE, built but not run (common.statements)."""
    column = _HELD_COLUMNS[model]
    quote = connection.ops.quote_name
    return BuiltStatement(
        f"UPDATE {quote(model._meta.db_table)} SET {quote(column)} = {quote(column)} - %s "  # noqa: S608
        f"WHERE {quote('id')} = %s",
        [amount, row_id],
    )


_HELD_COLUMNS = {
    APIKey: "held_usd",
    User: "balance_held",
    Subscription: "held_usd",
    UpstreamAccount: "quota_held_usd",
}


def pending_observe(*, request_id: str, api_key_id: int, observed: dict[str, int]) -> None:
    """Keep the usage a stream has reported so far, for recovery to bill if the process dies."""
    if not holds_supported():
        return  # nothing is held, so there is no pending record to keep it on
    with prepared_cursor() as cursor:
        cursor.execute(
            _observe_sql(), {"request_id": request_id, "key": Int8(api_key_id), "observed": _json(observed)}
        )


# -- Conditions ----------------------------------------------------------------------------------
# Every condition is a SQL boolean over the row's own columns and named parameters; the same text
# filters the UPDATE and, after a refusal, names the limit that failed (_which_failed).


def _fits(used: str, held: str, limit: str, amount: str = "%(amount)s") -> str:
    return f"({used} + {held} + {amount} <= {limit} OR ({held} = 0 AND {used} < {limit}))"


@cache
def _key_conditions() -> tuple[tuple[str, str], ...]:
    quote = connection.ops.quote_name
    held = quote("held_usd")
    found = [
        (
            "key_quota",
            f"({quote('quota_usd')} <= 0 OR {_fits(quote('quota_used_usd'), held, quote('quota_usd'))})",
        )
    ]
    for kind, _label, limit, used, start in APIKey.WINDOWS:
        start = quote(start)
        effective = (
            f"(CASE WHEN {start} IS NULL OR {start} <= %(expired_{kind})s THEN 0 ELSE {quote(used)} END)"
        )
        found.append((f"key_{kind}", f"({quote(limit)} <= 0 OR {_fits(effective, held, quote(limit))})"))
    return tuple(found)


@cache
def _subscription_conditions() -> tuple[tuple[str, str], ...]:
    quote = connection.ops.quote_name
    held = quote("held_usd")
    found = []
    for kind, _label, _limit, used, start in Subscription.WINDOWS:
        start = quote(start)
        ended = f"{start} < %(current_{kind})s" if kind == "daily" else f"{start} <= %(ended_{kind})s"
        expired = f"{start} IS NULL OR {ended} OR {quote('expires_at')} <= %(now)s"
        effective = f"(CASE WHEN {expired} THEN 0 ELSE {quote(used)} END)"
        limit = f"%(limit_{kind})s"
        found.append((f"subscription_{kind}", f"({limit} < 0 OR {_fits(effective, held, limit)})"))
    return tuple(found)


@cache
def _balance_conditions() -> tuple[tuple[str, str], ...]:
    quote = connection.ops.quote_name
    balance, held = quote("balance"), quote("balance_held")
    return (("balance", f"({balance} - {held} - %(amount)s >= 0 OR ({held} = 0 AND {balance} > 0))"),)


@cache
def _account_conditions(
    daily_mode: str, weekly_mode: str, amount: str = "%(amount)s"
) -> tuple[tuple[str, str], ...]:
    """`amount`: the placeholder of the account's amount (the one-statement hold names it apart)."""
    quote = connection.ops.quote_name
    held = quote("quota_held_usd")
    total_limit = quote("quota_limit_usd")
    found = [
        (
            "account_quota",
            f"({total_limit} <= 0 OR {_fits(quote('quota_used_usd'), held, total_limit, amount)})",
        )
    ]
    for period, mode in (("daily", daily_mode), ("weekly", weekly_mode)):
        used, start = quote(f"quota_{period}_used_usd"), quote(f"quota_{period}_start")
        limit = quote(f"quota_{period}_limit_usd")
        compare = "<=" if mode == UpstreamAccount.ResetMode.ROLLING else "<"
        effective = f"(CASE WHEN {start} IS NULL OR {start} {compare} %({period})s THEN 0 ELSE {used} END)"
        found.append(("account_quota", f"({limit} <= 0 OR {_fits(effective, held, limit, amount)})"))
    return tuple(found)


@cache
def _hold_sql(table: str, held: str, conditions: tuple[tuple[str, str], ...]) -> str:
    quote = connection.ops.quote_name
    where = " AND ".join(condition for _name, condition in conditions)
    return (
        f"UPDATE {quote(table)} SET {quote(held)} = {quote(held)} + %(amount)s "  # noqa: S608
        f"WHERE {quote('id')} = %(id)s AND {where} RETURNING 1"
    )


@cache
def _diagnose_sql(table: str, conditions: tuple[tuple[str, str], ...]) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(condition for _name, condition in conditions)
    return f"SELECT {columns} FROM {quote(table)} WHERE {quote('id')} = %(id)s"  # noqa: S608


def _hold(cursor: Any, table: str, held: str, conditions: tuple, params: dict) -> bool:
    cursor.execute(_hold_sql(table, held, conditions), params)
    return cursor.fetchone() is not None


# A refusal names its limit by reading the row again. Between the refused UPDATE and that read an
# in-flight request may settle and make room; the read then finds every limit fitting, and the
# request is tried again instead of being refused under a limit that did not fail.
HOLD_ATTEMPTS = 5


def _hold_or_refuse(cursor: Any, table: str, held: str, conditions: tuple, params: dict) -> None:
    """Hold on one row, or raise _Refused naming the limit that does not fit."""
    for _attempt in range(HOLD_ATTEMPTS):
        if _hold(cursor, table, held, conditions, params):
            return
        failed = _which_failed(cursor, table, conditions, params)
        if failed is not None:
            raise _Refused(failed)
    # Room kept appearing and vanishing: name the first limit, as the row last stood over it.
    raise _Refused(conditions[0][0])


def _which_failed(cursor: Any, table: str, conditions: tuple, params: dict) -> str | None:
    """The first limit that does not fit now; None when the row has since made room."""
    cursor.execute(_diagnose_sql(table, conditions), params)
    row = cursor.fetchone()
    if row is None:
        return conditions[0][0]
    for (name, _condition), fits in zip(conditions, row, strict=True):
        if not fits:
            return name
    return None


def _hold_key(cursor: Any, *, key_id: int, amount: Decimal, now: datetime) -> None:
    params: dict[str, Any] = {"id": key_id, "amount": amount}
    for kind, length in windows.KEY_WINDOW_LENGTHS.items():
        params[f"expired_{kind}"] = now - length
    _hold_or_refuse(cursor, APIKey._meta.db_table, "held_usd", _key_conditions(), params)


def _hold_subscription(
    cursor: Any,
    *,
    subscription_id: int,
    amount: Decimal,
    now: datetime,
    limits: dict[str, Decimal | None],
    starts_at: datetime | None,
    timezone: str,
) -> None:
    params: dict[str, Any] = {"id": subscription_id, "amount": amount}
    params.update(_subscription_params(now=now, limits=limits, starts_at=starts_at, timezone=timezone))
    _hold_or_refuse(cursor, Subscription._meta.db_table, "held_usd", _subscription_conditions(), params)


def _hold_balance(cursor: Any, *, user_id: int, amount: Decimal) -> None:
    params = {"id": user_id, "amount": amount}
    if not _hold(cursor, User._meta.db_table, "balance_held", _balance_conditions(), params):
        raise _Refused("balance")


def _subscription_params(
    *, now: datetime, limits: dict[str, Decimal | None], starts_at: datetime | None, timezone: str
) -> dict[str, Any]:
    tz = timezone_name(timezone)
    params: dict[str, Any] = {"now": now}
    for kind, _label, _limit, _used, _start in Subscription.WINDOWS:
        limit = limits.get(kind)
        params[f"limit_{kind}"] = NO_LIMIT if limit is None or limit < 0 else limit
        if kind == "daily":
            params["current_daily"] = windows.subscription_window_start(kind, now, starts_at=starts_at, tz=tz)
        else:
            params[f"ended_{kind}"] = now - windows.SUBSCRIPTION_STEPS[kind]
    return params


def _account_params(candidate: AccountHold, *, now: datetime) -> dict[str, Any]:
    rules = candidate.quota
    params: dict[str, Any] = {}
    for period in ("daily", "weekly"):
        mode, hour, weekday = rules.period(period)
        params[period] = _period_threshold(
            now=now, period=period, mode=mode, hour=hour, weekday=weekday, tz=rules.zone
        )
    return params


def _hold_account(cursor: Any, candidate: AccountHold, *, now: datetime) -> bool:
    rules = candidate.quota
    params: dict[str, Any] = {"id": candidate.account_id, "amount": quantize_usd(candidate.amount_usd)}
    params.update(_account_params(candidate, now=now))
    conditions = _account_conditions(rules.daily_reset_mode, rules.weekly_reset_mode)
    return _hold(cursor, UpstreamAccount._meta.db_table, "quota_held_usd", conditions, params)


# -- Statements ----------------------------------------------------------------------------------

# Each column's type, for the casts of the one-statement hold's INSERT ... SELECT: psycopg sends
# a str or a None untyped, and a SELECT list would read an untyped value as text.
_PENDING_COLUMNS = {
    "request_id": "varchar",
    "api_key_id": "bigint",
    "user_id": "bigint",
    "subscription_id": "bigint",
    "account_id": "bigint",
    "held_usd": "numeric",
    "account_held_usd": "numeric",
    "requested_model": "varchar",
    "mapped_model": "varchar",
    "protocol": "varchar",
    "stream": "boolean",
    "estimate": "jsonb",
    "created_at": "timestamptz",
    "lease_expires_at": "timestamptz",
}


@cache
def _pending_insert_sql() -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(name) for name in _PENDING_COLUMNS)
    return (
        f"INSERT INTO {quote(PendingRequest._meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(_PENDING_COLUMNS))})"
    )


@cache
def _settle_sql() -> str:
    """Delete the pending record and lower each hold it raised: one statement (data-modifying
    CTEs), so settling adds one round trip to the recording. Rows are touched in the recording's
    own order (key, then balance or subscription, then account)."""
    quote = connection.ops.quote_name
    pending = quote(PendingRequest._meta.db_table)
    key, user = quote(APIKey._meta.db_table), quote(User._meta.db_table)
    subscription, account = quote(Subscription._meta.db_table), quote(UpstreamAccount._meta.db_table)
    held, balance_held, quota_held = quote("held_usd"), quote("balance_held"), quote("quota_held_usd")
    return f"""
        WITH p AS (
            DELETE FROM {pending} WHERE request_id = %(request_id)s::varchar AND api_key_id = %(key)s::bigint
            RETURNING api_key_id AS key_id, user_id AS owner_id, subscription_id AS sub_id,
                      account_id AS acct_id, held_usd AS amount, account_held_usd AS account_amount
        ), k AS (
            UPDATE {key} SET {held} = {key}.{held} - p.amount FROM p WHERE {key}.id = p.key_id RETURNING 1
        ), u AS (
            UPDATE {user} SET {balance_held} = {user}.{balance_held} - p.amount FROM p
            WHERE p.sub_id IS NULL AND {user}.id = p.owner_id RETURNING 1
        ), s AS (
            UPDATE {subscription} SET {held} = {subscription}.{held} - p.amount FROM p
            WHERE {subscription}.id = p.sub_id RETURNING 1
        ), a AS (
            UPDATE {account} SET {quota_held} = {account}.{quota_held} - p.account_amount FROM p
            WHERE p.account_amount > 0 AND {account}.id = p.acct_id RETURNING 1
        )
        SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM k), (SELECT count(*) FROM u),
               (SELECT count(*) FROM s), (SELECT count(*) FROM a)
    """  # noqa: S608 - only quoted model metadata goes in


@cache
def _pending_account_sql() -> str:
    quote = connection.ops.quote_name
    return (
        f"SELECT {quote('account_id')}, {quote('account_held_usd')} "  # noqa: S608
        f"FROM {quote(PendingRequest._meta.db_table)} "
        f"WHERE request_id = %(request_id)s AND api_key_id = %(key)s FOR UPDATE"
    )


@cache
def _pending_account_move_sql() -> str:
    quote = connection.ops.quote_name
    return (
        f"UPDATE {quote(PendingRequest._meta.db_table)} "  # noqa: S608
        f"SET {quote('account_id')} = %(account)s, {quote('account_held_usd')} = %(amount)s "
        f"WHERE request_id = %(request_id)s AND api_key_id = %(key)s"
    )


@cache
def _observe_sql() -> str:
    quote = connection.ops.quote_name
    return (
        f"UPDATE {quote(PendingRequest._meta.db_table)} SET {quote('observed')} = %(observed)s::jsonb "  # noqa: S608
        f"WHERE request_id = %(request_id)s::varchar AND api_key_id = %(key)s::bigint"
    )


@cache
def _take_many_sql() -> str:
    quote = connection.ops.quote_name
    pending = quote(PendingRequest._meta.db_table)
    return f"""
        DELETE FROM {pending} USING unnest(%(request_ids)s::varchar[], %(keys)s::bigint[]) AS r(rid, kid)
        WHERE {pending}.request_id = r.rid AND {pending}.api_key_id = r.kid
        RETURNING api_key_id, user_id, subscription_id, account_id, held_usd, account_held_usd
    """  # noqa: S608 - only quoted model metadata goes in


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
