"""Reconcile runs and the prune that keeps them exact (docs/jobs.md#reconcile-runs, docs/jobs.md#prune).

A counter is recomputed by replaying the ledger onto it, row by row in time order, with the same
window functions (accounts/windows.py) that the charging UPDATEs encode as SQL: a window that has
ended when a row arrives restarts at that row, exactly as the charge restarted it. The replay
starts from the counter's last operator reset (`*_reset_at`) and from its carry-forward, the
state that pruned ledger rows left it in. Pruning replays the rows it deletes onto the
carry-forward first, so a reconcile after a prune finds what it found before.

Memory stays bounded whatever the ledger's size: entities are read in keyset-paginated chunks,
and each chunk's ledger rows are streamed (a server-side cursor on PostgreSQL) rather than loaded.
Each chunk is checked in one REPEATABLE READ transaction, so the stored counters and the ledger
are read from one snapshot (a charge commits its ledger row and its counters together), and a
fix made there refuses, rather than overwrites, a counter that a charge moved meanwhile.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Exists, F, OuterRef, Q, Sum
from django.utils import timezone

from accounts import windows
from accounts.models import APIKey, BalanceHistory, Subscription, UpstreamAccount, User, timezone_name
from accounts.roles import ConsoleRole, console_role_required
from accounts.rules import key_status
from accounts.snapshots import snapshots_changed
from billing.models import (
    ReconcileDiscrepancy,
    ReconcileMode,
    ReconcilePeriod,
    ReconcileRun,
    ReconcileScope,
    ReconcileStatus,
    UsageCarryForward,
    UsageLog,
)

logger = logging.getLogger(__name__)

ZERO = Decimal(0)
CHUNK_ENTITIES = 500
STREAM_ROWS = 5000
PRUNE_BATCH = 5000
SERIALIZATION_RETRIES = 3
PERIOD_LENGTHS = {
    ReconcilePeriod.DAY: timedelta(days=1),
    ReconcilePeriod.WEEK: timedelta(days=7),
    ReconcilePeriod.MONTH: timedelta(days=30),
}


class ReconcileRefused(Exception):
    """A run that may not start (another fix of the same scope is queued or running)."""


def host_id() -> str:
    return getattr(settings, "RECONCILE_HOST_ID", "") or socket.gethostname()


def new_batch_id(now: datetime | None = None) -> str:
    now = now or timezone.now()
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# --- Counters: one replayable state machine per stored counter -----------------------------------


@dataclass
class Counter:
    """One stored counter and how charges move it.

    A total (`end_of` None) only adds. A window has ended at a charge when the charge's time is
    at or past its end (`end_of(start)`: windows.key_window_end, subscription_window_end or
    period_end, the functions the charging UPDATE is written from); it then restarts at
    `new_start(at)` with the charge as its usage. The end is computed once per window, not per row.
    """

    name: str  # the carry-forward's name: quota, 5h, 1d, 7d, daily, weekly, monthly, total
    used_field: str
    start_field: str | None
    baseline: datetime | None  # the last operator reset: rows before it do not count
    end_of: Callable[[datetime], datetime] | None = None
    new_start: Callable[[datetime], datetime] | None = None
    used: Decimal = ZERO
    start: datetime | None = None
    end: datetime | None = None

    def load(self, carry: UsageCarryForward | None) -> None:
        if carry is not None and carry.baseline == self.baseline:
            self.used, self.start = carry.used, carry.window_start
            self.end = self.end_of(self.start) if self.end_of and self.start else None

    def add(self, at: datetime, amount: Decimal) -> bool:
        """Replay one charge; False when it does not count (a $0 row, or one before the reset)."""
        if amount <= 0 or (self.baseline is not None and at < self.baseline):
            return False
        if self.end_of is None:
            self.used += amount
        elif self.start is None or at >= self.end:  # type: ignore[operator]
            self.used, self.start = amount, self.new_start(at)  # type: ignore[misc]
            self.end = self.end_of(self.start)
        else:
            self.used += amount
        return True

    def expired(self, start: datetime | None, now: datetime) -> bool:
        return start is None or now >= self.end_of(start)  # type: ignore[misc]

    def effective(self, used: Decimal, start: datetime | None, now: datetime) -> Decimal:
        """The display rule: an ended window holds nothing (docs/windows.md#display-rule)."""
        if self.end_of is None:
            return used
        return ZERO if self.expired(start, now) else used


@dataclass
class Entity:
    kind: str  # key, subscription, account, user
    pk: int
    label: str
    stored: dict[str, Any]
    counters: list[Counter] = field(default_factory=list)


# Each scope: the entity model, its kind, the ledger column naming it, the amount it is charged.
@dataclass(frozen=True)
class ScopeSpec:
    kind: str
    model: type
    ledger_column: str
    amount_column: str
    extra_filter: Q = field(default_factory=Q)


SCOPES: dict[str, ScopeSpec] = {
    ReconcileScope.KEYS: ScopeSpec("key", APIKey, "api_key_id", "actual_cost"),
    ReconcileScope.SUBSCRIPTIONS: ScopeSpec("subscription", Subscription, "subscription_id", "actual_cost"),
    ReconcileScope.ACCOUNTS: ScopeSpec("account", UpstreamAccount, "account_id", "account_cost"),
    # Only rows not charged to a subscription came off the balance (billing.services.usage_record).
    ReconcileScope.USERS: ScopeSpec("user", User, "user_id", "actual_cost", Q(subscription_id__isnull=True)),
}
KIND_SCOPE = {spec.kind: scope for scope, spec in SCOPES.items()}


def _key_entities(ids: Iterable[int]) -> Iterator[Entity]:
    fields = ["quota_used_usd", "quota_reset_at", "windows_reset_at"]
    for _kind, _label, _limit, used, start in APIKey.WINDOWS:
        fields += [used, start]
    rows = APIKey.objects.filter(pk__in=list(ids)).order_by("pk").values("pk", "name", "timezone", *fields)
    for row in rows:
        tz = timezone_name(row["timezone"])
        counters = [Counter("quota", "quota_used_usd", None, row["quota_reset_at"])]
        for kind, _label, _limit, used, start in APIKey.WINDOWS:
            counters.append(
                Counter(
                    kind,
                    used,
                    start,
                    row["windows_reset_at"],
                    end_of=lambda start, k=kind: windows.key_window_end(k, start),
                    new_start=lambda at, k=kind, tz=tz: windows.key_window_start_for(k, at, tz),
                )
            )
        yield Entity("key", row["pk"], row["name"], row, counters)


def _subscription_entities(ids: Iterable[int]) -> Iterator[Entity]:
    fields = [f"{kind}_reset_at" for kind, *_ in Subscription.WINDOWS]
    for _kind, _label, _limit, used, start in Subscription.WINDOWS:
        fields += [used, start]
    rows = (
        Subscription.objects.filter(pk__in=list(ids))
        .order_by("pk")
        .values("pk", "starts_at", "expires_at", "group__timezone", "user__email", "group__name", *fields)
    )
    for row in rows:
        term = {"expires_at": row["expires_at"], "tz": timezone_name(row["group__timezone"])}
        steps = {"starts_at": row["starts_at"], "tz": term["tz"]}
        counters = [
            Counter(
                kind,
                used,
                start,
                row[f"{kind}_reset_at"],
                end_of=lambda start, k=kind, term=term: windows.subscription_window_end(k, start, **term),
                new_start=lambda at, k=kind, steps=steps: windows.subscription_window_start(k, at, **steps),
            )
            for kind, _label, _limit, used, start in Subscription.WINDOWS
        ]
        yield Entity("subscription", row["pk"], f"{row['user__email']} · {row['group__name']}", row, counters)


def _account_entities(ids: Iterable[int]) -> Iterator[Entity]:
    rows = (
        UpstreamAccount.objects.filter(pk__in=list(ids))
        .order_by("pk")
        .values(
            "pk",
            "name",
            "quota_timezone",
            "quota_reset_at",
            "quota_used_usd",
            "quota_daily_used_usd",
            "quota_daily_start",
            "quota_daily_reset_mode",
            "quota_daily_reset_hour",
            "quota_weekly_used_usd",
            "quota_weekly_start",
            "quota_weekly_reset_mode",
            "quota_weekly_reset_hour",
            "quota_weekly_reset_weekday",
        )
    )
    for row in rows:
        tz, reset = timezone_name(row["quota_timezone"]), row["quota_reset_at"]
        counters = [Counter("total", "quota_used_usd", None, reset)]
        for period in ("daily", "weekly"):
            rule = {
                "mode": row[f"quota_{period}_reset_mode"],
                "period": period,
                "reset_hour": row[f"quota_{period}_reset_hour"],
                "reset_weekday": row["quota_weekly_reset_weekday"] if period == "weekly" else 0,
                "tz": tz,
            }
            counters.append(
                Counter(
                    period,
                    f"quota_{period}_used_usd",
                    f"quota_{period}_start",
                    reset,
                    end_of=lambda start, rule=rule: windows.period_end(start, **rule),
                    new_start=lambda at: at,  # an account period starts at the charge itself
                )
            )
        yield Entity("account", row["pk"], row["name"], row, counters)


def _user_entities(ids: Iterable[int]) -> Iterator[Entity]:
    for row in User.objects.filter(pk__in=list(ids)).order_by("pk").values("pk", "email", "balance"):
        # The balance is not replayed: it is the history's net change less the charges.
        yield Entity("user", row["pk"], row["email"], row, [Counter("balance", "balance", None, None)])


ENTITY_LOADERS: dict[str, Callable[[Iterable[int]], Iterator[Entity]]] = {
    "key": _key_entities,
    "subscription": _subscription_entities,
    "account": _account_entities,
    "user": _user_entities,
}


def _load_carry(kind: str, ids: list[int], *, lock: bool = False) -> dict[tuple[int, str], UsageCarryForward]:
    carries = UsageCarryForward.objects.filter(entity_kind=kind, entity_id__in=ids)
    if lock:
        carries = carries.select_for_update()
    return {(carry.entity_id, carry.counter): carry for carry in carries}


def _ledger_rows(spec: ScopeSpec, ids: list[int]) -> Iterator[tuple[int, datetime, Decimal]]:
    """(entity id, created_at, amount) in replay order, streamed."""
    rows = (
        UsageLog.objects.filter(spec.extra_filter, **{f"{spec.ledger_column}__in": ids})
        .order_by(spec.ledger_column, "created_at", "id")
        .values_list(spec.ledger_column, "created_at", spec.amount_column)
    )
    return rows.iterator(chunk_size=STREAM_ROWS)


# --- Checking one chunk ---------------------------------------------------------------------------


@dataclass
class Finding:
    entity: Entity
    counter: Counter
    stored: Decimal
    recomputed: Decimal
    stored_raw: tuple[Decimal, datetime | None]

    @property
    def delta(self) -> Decimal:
        return self.recomputed - self.stored


def recompute(spec: ScopeSpec, ids: list[int]) -> list[Entity]:
    """Every entity of the chunk with its counters replayed from carry-forward and ledger."""
    entities = {entity.pk: entity for entity in ENTITY_LOADERS[spec.kind](ids)}
    carry = _load_carry(spec.kind, list(entities))
    for entity in entities.values():
        for counter in entity.counters:
            counter.load(carry.get((entity.pk, counter.name)))
    if spec.kind == "user":
        _recompute_balances(entities, carry)
        return list(entities.values())
    for entity_id, at, amount in _ledger_rows(spec, list(entities)):
        entity = entities.get(entity_id)
        if entity is not None:
            for counter in entity.counters:
                counter.add(at, amount)
    return list(entities.values())


def _recompute_balances(entities: dict[int, Entity], carry: dict) -> None:
    """balance = every history row's net change − the carried-forward charges − the ledger's.

    Aggregated in SQL: a balance has no window, so nothing needs replaying. Each history row
    records the balance before and after under the row lock, so a "set" counts as its difference
    and the sum is exact whatever the charges around it did."""
    ids = list(entities)
    changes = dict(
        BalanceHistory.objects.filter(user_id__in=ids)
        .values_list("user_id")
        .annotate(net=Sum(F("balance_after") - F("balance_before")))
        .order_by()
    )
    charges = dict(
        UsageLog.objects.filter(SCOPES[ReconcileScope.USERS].extra_filter, user_id__in=ids, actual_cost__gt=0)
        .values_list("user_id")
        .annotate(total=Sum("actual_cost"))
        .order_by()
    )
    for pk, entity in entities.items():
        counter = entity.counters[0]
        counter.used = (changes.get(pk) or ZERO) - counter.used - (charges.get(pk) or ZERO)


def compare(entities: list[Entity], now: datetime) -> list[Finding]:
    findings = []
    for entity in entities:
        for counter in entity.counters:
            stored_used = entity.stored[counter.used_field]
            stored_start = entity.stored.get(counter.start_field) if counter.start_field else None
            stored = counter.effective(stored_used, stored_start, now)
            recomputed = counter.effective(counter.used, counter.start, now)
            if stored != recomputed:
                findings.append(Finding(entity, counter, stored, recomputed, (stored_used, stored_start)))
    return findings


def _fix(finding: Finding, now: datetime) -> bool:
    """Move one counter to its recomputed value in one conditional UPDATE.

    A total moves by the delta (used = used + delta), so a charge that lands meanwhile is kept.
    A window is set to the replayed usage and start only if it still holds what was read, so a
    window a charge restarted meanwhile is left for the next run, never overwritten."""
    entity, counter = finding.entity, finding.counter
    model = SCOPES[KIND_SCOPE[entity.kind]].model
    rows = model.objects.filter(pk=entity.pk)
    if counter.start_field is None:
        if not rows.update(**{counter.used_field: F(counter.used_field) + finding.delta}):
            return False
        if entity.kind == "key":
            _key_status_refresh(entity.pk, now)
        return True
    stored_used, stored_start = finding.stored_raw
    rows = rows.filter(**{counter.used_field: stored_used})
    rows = (
        rows.filter(**{f"{counter.start_field}__isnull": True})
        if stored_start is None
        else rows.filter(**{counter.start_field: stored_start})
    )
    recomputed_live = not counter.expired(counter.start, now)
    used, start = (counter.used, counter.start) if recomputed_live else (ZERO, None)
    return bool(rows.update(**{counter.used_field: used, counter.start_field: start}))


def _key_status_refresh(key_id: int, now: datetime) -> None:
    """A corrected quota may exhaust or free a key: apply the key status rule (docs/windows.md#key-quota)
    to the row, locked by the correction's UPDATE until the chunk commits."""
    key = APIKey.objects.select_for_update().get(pk=key_id)
    status = key_status(key, now=now)
    if status != key.status:
        APIKey.objects.filter(pk=key_id).update(status=status)


SNAPSHOT_ARGUMENT = {
    "key": "key_ids",
    "subscription": "subscription_ids",
    "account": "account_ids",
    "user": "user_ids",
}


@dataclass
class ChunkResult:
    checked: int
    drifted: int
    fixed: int


def _snapshot() -> None:
    """One snapshot for the whole chunk: counters and ledger as one charge left them together."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def _check_chunk(run: ReconcileRun, spec: ScopeSpec, ids: list[int], now: datetime) -> ChunkResult:
    # Inside a caller's transaction (tests) the snapshot is the caller's to choose.
    own_transaction = not connection.in_atomic_block
    for attempt in range(SERIALIZATION_RETRIES):
        try:
            with transaction.atomic():
                if own_transaction:
                    _snapshot()
                entities = recompute(spec, ids)
                findings = compare(entities, now)
                fixed = 0
                records = []
                for finding in findings:
                    done = run.mode == ReconcileMode.FIX and _fix(finding, now)
                    fixed += done
                    records.append(_record(run, finding, fixed=done, now=now))
                ReconcileDiscrepancy.objects.bulk_create(records)
                changed = {record.entity_id for record in records if record.fixed}
                if changed:
                    # Like an operator's reset: caches of these rows hear it once the chunk commits.
                    snapshots_changed(**{SNAPSHOT_ARGUMENT[spec.kind]: changed})
                return ChunkResult(checked=len(entities), drifted=len(findings), fixed=fixed)
        except OperationalError:
            # A charge moved a counter of this chunk after our snapshot (serialization failure):
            # take a new snapshot and check the chunk again.
            if attempt == SERIALIZATION_RETRIES - 1:
                raise
            logger.info("reconcile %s: chunk changed while being fixed; checking it again", run.pk)
    raise AssertionError("unreachable")


def _record(run: ReconcileRun, finding: Finding, *, fixed: bool, now: datetime) -> ReconcileDiscrepancy:
    counter = finding.counter
    start = counter.start if counter.start_field else None
    until = min(counter.end, now) if counter.start_field and start is not None and counter.end else None
    note = ""
    if run.mode == ReconcileMode.FIX and not fixed:
        note = "Not fixed: a charge changed this counter during the run; run again."
    return ReconcileDiscrepancy(
        run=run,
        batch_id=run.batch_id,
        host_id=run.host_id,
        entity_kind=finding.entity.kind,
        entity_id=finding.entity.pk,
        entity_label=str(finding.entity.label)[:255],
        field=counter.used_field,
        stored=finding.stored,
        recomputed=finding.recomputed,
        delta=finding.delta,
        counted_from=start or counter.baseline,
        counted_until=until,
        fixed=fixed,
        fixed_at=now if fixed else None,
        note=note,
    )


# --- Runs -----------------------------------------------------------------------------------------


def reconcile_run_create(
    *,
    scope: str,
    period: str = ReconcilePeriod.ALL,
    mode: str = ReconcileMode.DRY_RUN,
    started_by: User | None = None,
    started_by_label: str = "",
    batch_id: str = "",
) -> ReconcileRun:
    """Queue one run. A second fix of a scope while one is queued or running is refused."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")
    label = started_by_label or (started_by.email if started_by else "command")
    try:
        with transaction.atomic():
            return ReconcileRun.objects.create(
                batch_id=batch_id or new_batch_id(),
                host_id=host_id(),
                scope=scope,
                period=ReconcilePeriod(period),
                mode=ReconcileMode(mode),
                started_by=started_by,
                started_by_label=label[:255],
            )
    except IntegrityError:
        busy = ReconcileRun.objects.filter(
            scope=scope, mode=ReconcileMode.FIX, status__in=[ReconcileStatus.QUEUED, ReconcileStatus.RUNNING]
        ).first()
        if busy is None:
            raise
        raise ReconcileRefused(
            f"A fix run of {ReconcileScope(scope).label.lower()} is already {busy.status} "
            f"(run {busy.pk}, batch {busy.batch_id}, started by {busy.started_by_label}); "
            "two fix runs of one scope never overlap. Wait for it to finish, or start a dry run."
        ) from None


def _entity_ids(spec: ScopeSpec, period: str, now: datetime):
    entities = spec.model.objects.all()
    if period in PERIOD_LENGTHS:
        used = UsageLog.objects.filter(
            **{spec.ledger_column: OuterRef("pk"), "created_at__gte": now - PERIOD_LENGTHS[period]}
        )
        entities = entities.filter(Exists(used))
    return entities.order_by("pk").values_list("pk", flat=True)


def reconcile_run_execute(
    *,
    run_id: int,
    chunk_size: int = CHUNK_ENTITIES,
    now: datetime | None = None,
    progress: Callable[[ReconcileRun], None] | None = None,
) -> ReconcileRun:
    """Work through a queued run chunk by chunk, saving its progress after each chunk."""
    claimed = ReconcileRun.objects.filter(pk=run_id, status=ReconcileStatus.QUEUED).update(
        status=ReconcileStatus.RUNNING, started_at=timezone.now(), host_id=host_id()
    )
    run = ReconcileRun.objects.get(pk=run_id)
    if not claimed:
        logger.info("reconcile run %s is %s, not queued: nothing to do", run_id, run.status)
        return run
    now = now or timezone.now()
    spec = SCOPES[run.scope]
    try:
        ids = _entity_ids(spec, run.period, now)
        run.total = ids.count()
        ReconcileRun.objects.filter(pk=run.pk).update(total=run.total)
        last = 0
        while True:
            chunk = list(ids.filter(pk__gt=last)[:chunk_size])
            if not chunk:
                break
            last = chunk[-1]
            result = _check_chunk(run, spec, chunk, now)
            run.checked = min(run.checked + result.checked, run.total or run.checked + result.checked)
            run.drifted += result.drifted
            run.fixed += result.fixed
            ReconcileRun.objects.filter(pk=run.pk).update(
                checked=run.checked, drifted=run.drifted, fixed=run.fixed
            )
            if progress:
                progress(run)
    except Exception as error:
        ReconcileRun.objects.filter(pk=run.pk).update(
            status=ReconcileStatus.FAILED,
            finished_at=timezone.now(),
            error=f"{type(error).__name__}: {error}",
        )
        logger.exception("reconcile run %s (batch %s, host %s) failed", run.pk, run.batch_id, run.host_id)
        raise
    ReconcileRun.objects.filter(pk=run.pk).update(
        status=ReconcileStatus.SUCCEEDED, finished_at=timezone.now()
    )
    run.refresh_from_db()
    logger.info(
        "reconcile run %s (batch %s, host %s, %s %s): %s checked, %s drifted, %s fixed",
        run.pk,
        run.batch_id,
        run.host_id,
        run.mode,
        run.scope,
        run.checked,
        run.drifted,
        run.fixed,
    )
    return run


def reconcile_batch_create(
    *,
    scopes: Iterable[str] | None = None,
    period: str,
    mode: str,
    started_by: User | None = None,
    label: str = "",
) -> list[ReconcileRun]:
    """One run per scope, sharing a batch id. A refused scope refuses the whole batch.

    `started_by` is the acting staff member: a dry run needs an operator (the view's role), a
    fix an admin (docs/console.md#roles); None is the system (the schedule, a command)."""
    if mode == ReconcileMode.FIX:
        console_role_required(started_by, ConsoleRole.ADMIN, doing="start a reconcile fix run")
    batch = new_batch_id()
    with transaction.atomic():
        return [
            reconcile_run_create(
                scope=scope,
                period=period,
                mode=mode,
                started_by=started_by,
                started_by_label=label,
                batch_id=batch,
            )
            for scope in scopes or SCOPES
        ]


# --- Prune ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    cutoff: datetime
    deleted: int
    batches: int


def usage_prune(
    *, older_than: timedelta | None = None, now: datetime | None = None, batch_size: int = PRUNE_BATCH
) -> PruneResult:
    """Delete ledger rows created before now − older_than (default USAGE_RETENTION_DAYS), in
    batches, oldest first. Rollups stay. Each batch, in its own transaction, first replays its rows
    onto every counted entity's carry-forward (key, subscription, account, user), so the counters
    reconcile exactly as before."""
    if older_than is None:
        older_than = timedelta(days=settings.USAGE_RETENTION_DAYS)
    cutoff = (now or timezone.now()) - older_than
    deleted = batches = 0
    columns = [
        "id",
        "created_at",
        "actual_cost",
        "account_cost",
        *(spec.ledger_column for spec in SCOPES.values()),
    ]
    columns.append("subscription_id")
    columns = list(dict.fromkeys(columns))
    while True:
        with transaction.atomic():
            rows = list(
                UsageLog.objects.filter(created_at__lt=cutoff)
                .order_by("created_at", "id")
                .values(*columns)[:batch_size]
            )
            if not rows:
                break
            for spec in SCOPES.values():
                _fold(spec, rows, cutoff)
            deleted += UsageLog.objects.filter(pk__in=[row["id"] for row in rows]).delete()[0]
            batches += 1
    if deleted:
        logger.info("usage prune: %s ledger rows before %s deleted in %s batches", deleted, cutoff, batches)
    return PruneResult(cutoff=cutoff, deleted=deleted, batches=batches)


def _fold(spec: ScopeSpec, rows: list[dict], cutoff: datetime) -> None:
    """Replay one prune batch onto the carry-forward of every entity of one kind it touches."""
    if spec.kind == "user":
        rows = [row for row in rows if row["subscription_id"] is None]
    ids = sorted({row[spec.ledger_column] for row in rows if row[spec.ledger_column] is not None})
    if not ids:
        return
    entities = {entity.pk: entity for entity in ENTITY_LOADERS[spec.kind](ids)}
    carry = _load_carry(spec.kind, ids, lock=True)
    folded: dict[tuple[int, str], int] = {}
    for entity in entities.values():
        for counter in entity.counters:
            counter.load(carry.get((entity.pk, counter.name)))
    for row in rows:  # already in created_at order
        entity = entities.get(row[spec.ledger_column])
        if entity is None:
            continue
        for counter in entity.counters:
            if counter.add(row["created_at"], row[spec.amount_column]):
                folded[(entity.pk, counter.name)] = folded.get((entity.pk, counter.name), 0) + 1
    for entity in entities.values():
        for counter in entity.counters:
            key = (entity.pk, counter.name)
            if key not in folded:
                continue
            existing = carry.get(key)
            previous = (
                existing.rows_folded if existing is not None and existing.baseline == counter.baseline else 0
            )
            UsageCarryForward.objects.update_or_create(
                entity_kind=spec.kind,
                entity_id=entity.pk,
                counter=counter.name,
                defaults={
                    "used": counter.used,
                    "window_start": counter.start,
                    "baseline": counter.baseline,
                    "rows_folded": previous + folded[key],
                    "folded_through": cutoff,
                },
            )
