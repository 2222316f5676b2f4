"""Reconcile runs: counters recomputed from the ledger with the counters' own window rules,
drift found with its exact delta and fixed, dry runs that write nothing, one fix per scope,
and prune folding into the carry-forward so a later reconcile still finds nothing."""

from __future__ import annotations

import threading
import tracemalloc
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.services.keys import api_key_quota_reset, api_key_windows_reset
from accounts.services.subscriptions import subscription_windows_reset
from accounts.services.upstream import upstream_account_quota_reset
from accounts.services.users import user_balance_adjust
from billing.cost import Usage
from billing.models import (
    ReconcileDiscrepancy,
    ReconcileRun,
    ReconcileStatus,
    UsageCarryForward,
    UsageLog,
    UsageRollup,
)
from billing.reconcile import ReconcileRefused, reconcile_run_create, reconcile_run_execute, usage_prune
from billing.services import usage_record
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal
SCOPES = ("keys", "subscriptions", "accounts", "users")


def reconcile(scope: str, mode: str = "dry_run", **kwargs) -> ReconcileRun:
    run = reconcile_run_create(scope=scope, mode=mode, started_by_label="test")
    return reconcile_run_execute(run_id=run.pk, **kwargs)


class Ledger:
    """A user paying from the balance with one key, a subscription with another, one account,
    and charges spread so that the 5h and 1d windows and the account's fixed daily period restart."""

    def __init__(self, hours_ago: tuple[float, ...] = (50, 30, 26, 7, 6, 3, 1, 0.2)) -> None:
        self.now = timezone.now()
        # The daily boundaries (the account's fixed reset, the subscription's local midnight) fall
        # four to five hours ago, between the charges 6 and 3 hours old, whatever the time of day
        # the suite runs: a boundary inside the last charge's 12 minutes ended every daily window
        # the tests inject drift into (it failed at 00:00–00:12 UTC with a fixed 09:00 Tokyo reset).
        self.reset_hour = (self.now.astimezone(ZoneInfo("Asia/Tokyo")).hour - 4) % 24
        utc_offset = (4 - self.now.hour) % 24
        utc_offset -= 24 if utc_offset > 12 else 0
        midnight_zone = f"Etc/GMT{-utc_offset:+d}" if utc_offset else "Etc/GMT"  # Etc/GMT-3 is UTC+3
        self.user = UserFactory(balance=D("0"))
        user_balance_adjust(
            user_id=self.user.pk, operation="add", amount=D("20"), note="top-up", changed_by=None
        )
        self.account = UpstreamAccountFactory(
            rate_multiplier=D("0.5"),
            quota_daily_reset_mode="fixed",
            quota_daily_reset_hour=self.reset_hour,
            quota_timezone="Asia/Tokyo",
            quota_weekly_reset_mode="rolling",
        )
        # The key's 1d and 7d windows start at its local midnight: the same zone, for the same
        # reason (with Europe/Berlin it failed at 23:00–23:12 UTC, Berlin's midnight in winter).
        self.key = APIKeyFactory(
            user=self.user, group=GroupFactory(rate_multiplier=D("1.5")), timezone=midnight_zone
        )
        sub_group = SubscriptionGroupFactory(timezone=midnight_zone)
        self.subscription = SubscriptionFactory(
            user=self.user, group=sub_group, starts_at=self.now - timedelta(days=12)
        )
        self.sub_key = APIKeyFactory(user=self.user, group=sub_group)
        self.count = 0
        for hours in hours_ago:  # oldest first, as charges arrive
            self.charge(self.key, hours)
            self.charge(self.sub_key, hours)

    def charge(self, key, hours_ago: float, tokens: int = 10_000) -> None:
        self.count += 1
        usage_record(
            request_id=f"r{self.count}",
            api_key_id=key.pk,
            account_id=self.account.pk,
            requested_model="claude-sonnet-4-5",
            usage=Usage(input_tokens=tokens, output_tokens=tokens // 10),
            created_at=self.now - timedelta(hours=hours_ago),
        )


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.mark.parametrize("scope", SCOPES)
def test_a_ledger_written_by_usage_record_reconciles_with_no_drift(ledger, scope):
    run = reconcile(scope)
    assert run.status == ReconcileStatus.SUCCEEDED
    assert run.checked >= 1 and run.checked == run.total
    assert list(run.discrepancies.values_list("field", "delta")) == []
    assert run.drifted == 0


# (scope, model, attribute of the ledger fixture, counter column)
COUNTERS = [
    ("keys", APIKey, "key", "quota_used_usd"),
    ("keys", APIKey, "key", "usage_5h_usd"),
    ("keys", APIKey, "key", "usage_1d_usd"),
    ("keys", APIKey, "key", "usage_7d_usd"),
    ("subscriptions", Subscription, "subscription", "daily_usage_usd"),
    ("subscriptions", Subscription, "subscription", "weekly_usage_usd"),
    ("subscriptions", Subscription, "subscription", "monthly_usage_usd"),
    ("accounts", UpstreamAccount, "account", "quota_used_usd"),
    ("accounts", UpstreamAccount, "account", "quota_daily_used_usd"),
    ("accounts", UpstreamAccount, "account", "quota_weekly_used_usd"),
    ("users", User, "user", "balance"),
]


@pytest.mark.parametrize(("scope", "model", "entity", "column"), COUNTERS)
def test_drift_injected_into_a_counter_is_found_with_its_exact_delta_and_fixed(
    ledger, scope, model, entity, column
):
    pk = getattr(ledger, entity).pk
    true_value = model.objects.values_list(column, flat=True).get(pk=pk)
    assert true_value > 0  # the ledger fixture charged every counter
    model.objects.filter(pk=pk).update(**{column: F(column) + D("1.23456789")})

    dry = reconcile(scope)
    found = list(
        dry.discrepancies.values_list("entity_id", "field", "stored", "recomputed", "delta", "fixed")
    )
    assert found == [(pk, column, true_value + D("1.23456789"), true_value, D("-1.23456789"), False)]
    assert dry.drifted == 1 and dry.fixed == 0
    assert model.objects.values_list(column, flat=True).get(pk=pk) == true_value + D("1.23456789")

    fix = reconcile(scope, "fix")
    assert fix.drifted == 1 and fix.fixed == 1
    correction = fix.discrepancies.get()
    assert correction.fixed and correction.delta == D("-1.23456789")
    assert (correction.batch_id, correction.host_id) == (fix.batch_id, fix.host_id) != ("", "")
    assert model.objects.values_list(column, flat=True).get(pk=pk) == true_value

    again = reconcile(scope, "fix")
    assert (again.drifted, again.fixed, again.discrepancies.count()) == (0, 0, 0)


def test_a_window_whose_start_drifted_is_found_and_restored(ledger):
    APIKey.objects.filter(pk=ledger.key.pk).update(window_5h_start=F("window_5h_start") - timedelta(hours=6))
    before = APIKey.objects.values_list("usage_5h_usd", flat=True).get(pk=ledger.key.pk)
    dry = reconcile("keys")
    # The stored window now reads as ended (0) while the ledger's is live.
    assert list(dry.discrepancies.values_list("field", "stored", "recomputed")) == [
        ("usage_5h_usd", 0, before)
    ]
    reconcile("keys", "fix")
    assert reconcile("keys").drifted == 0


def table_contents() -> dict:
    models = (APIKey, Subscription, UpstreamAccount, User, UsageLog, UsageRollup, UsageCarryForward)
    return {model.__name__: sorted(model.objects.values_list()) for model in models}


def test_a_dry_run_writes_nothing_but_the_run_and_its_discrepancies(ledger):
    for column in ("quota_used_usd", "usage_1d_usd"):
        APIKey.objects.filter(pk=ledger.key.pk).update(**{column: F(column) + 1})
    User.objects.filter(pk=ledger.user.pk).update(balance=F("balance") - 2)
    before = table_contents()
    runs = [reconcile(scope) for scope in SCOPES]
    assert table_contents() == before
    assert sum(run.drifted for run in runs) == 3
    assert ReconcileDiscrepancy.objects.count() == 3
    assert not ReconcileDiscrepancy.objects.filter(fixed=True).exists()


def test_a_second_fix_of_the_same_scope_is_refused_while_the_first_is_queued():
    first = reconcile_run_create(scope="keys", mode="fix", started_by_label="ops@example.com")
    with pytest.raises(ReconcileRefused, match=r"fix run of api keys is already queued \(run \d+"):
        reconcile_run_create(scope="keys", mode="fix")
    # Other scopes and dry runs of the same scope are not blocked.
    reconcile_run_create(scope="accounts", mode="fix")
    reconcile_run_create(scope="keys", mode="dry_run")
    reconcile_run_execute(run_id=first.pk)
    assert reconcile_run_create(scope="keys", mode="fix").status == ReconcileStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_two_fix_runs_started_at_once_from_two_threads_leave_exactly_one():
    barrier, outcomes = threading.Barrier(2), []

    def start() -> None:
        try:
            barrier.wait()
            reconcile_run_create(scope="users", mode="fix")
            outcomes.append("started")
        except ReconcileRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "started"]
    assert ReconcileRun.objects.filter(scope="users", mode="fix").count() == 1


def test_operator_resets_count_the_ledger_from_the_reset_on(ledger):
    api_key_quota_reset(key_id=ledger.key.pk)
    api_key_windows_reset(key_id=ledger.key.pk)
    subscription_windows_reset(subscription_id=ledger.subscription.pk, kinds=["daily"])
    upstream_account_quota_reset(account_id=ledger.account.pk)
    ledger.now = timezone.now()
    ledger.charge(ledger.key, 0)
    ledger.charge(ledger.sub_key, 0)
    for scope in SCOPES:
        assert reconcile(scope).drifted == 0, scope
    key = APIKey.objects.get(pk=ledger.key.pk)
    assert key.quota_used_usd == UsageLog.objects.get(request_id=f"r{ledger.count - 1}").actual_cost


def test_prune_folds_old_rows_forward_so_reconcile_after_it_finds_no_drift():
    ledger = Ledger(hours_ago=(120 * 24, 100 * 24, 95 * 24, 30, 6, 1))
    rollups_before = sorted(UsageRollup.objects.values_list())
    rows_before = UsageLog.objects.count()

    result = usage_prune()  # USAGE_RETENTION_DAYS: 90

    assert result.deleted == 6 and UsageLog.objects.count() == rows_before - 6
    assert not UsageLog.objects.filter(created_at__lt=result.cutoff).exists()
    assert sorted(UsageRollup.objects.values_list()) == rollups_before
    carried = UsageCarryForward.objects.get(entity_kind="key", entity_id=ledger.key.pk, counter="quota")
    assert carried.rows_folded == 3 and carried.used > 0
    for scope in SCOPES:
        assert reconcile(scope).drifted == 0, scope


def test_pruning_inside_live_windows_carries_their_state_too(ledger):
    """A retention shorter than a window (here 2 hours) prunes rows the live windows still count."""
    result = usage_prune(older_than=timedelta(hours=2), batch_size=3)
    assert result.deleted == 12 and result.batches == 4
    for scope in SCOPES:
        assert reconcile(scope).drifted == 0, scope
    # A second prune folds onto the existing carry-forward.
    usage_prune(older_than=timedelta(minutes=5))
    assert UsageLog.objects.count() == 0
    for scope in SCOPES:
        assert reconcile(scope).drifted == 0, scope


def test_a_reset_after_a_prune_stops_the_old_carry_forward_from_counting(ledger):
    usage_prune(older_than=timedelta(hours=2))
    api_key_quota_reset(key_id=ledger.key.pk)
    assert reconcile("keys").drifted == 0
    ledger.now = timezone.now()
    ledger.charge(ledger.key, 0)
    usage_prune(older_than=timedelta(seconds=0), now=timezone.now() + timedelta(seconds=1))
    assert reconcile("keys").drifted == 0


def test_the_period_limits_the_run_to_entities_used_in_it(ledger):
    idle = APIKeyFactory(user=ledger.user, quota_used_usd=D("5"))
    day = reconcile_run_execute(run_id=reconcile_run_create(scope="keys", period="day").pk)
    assert (day.checked, day.drifted) == (2, 0)
    everything = reconcile("keys")
    assert everything.checked == 3
    assert list(everything.discrepancies.values_list("entity_id", "delta")) == [(idle.pk, D("-5"))]


ROWS = 100_000


def test_a_run_over_100000_ledger_rows_stays_in_bounded_memory():
    """100 keys × 1,000 rows, generated in SQL; the run streams them in chunks of 20 keys.

    Over 10 s on a busy machine (the 100,000-row insert maintains every ledger index, and
    tracemalloc slows the run several times): the issue asks for this size."""
    user = UserFactory(balance=D("0"))
    keys = [APIKeyFactory(user=user) for _ in range(100)]
    usage_record(
        request_id="template",
        api_key_id=keys[0].pk,
        account_id=None,
        requested_model="claude-sonnet-4-5",
        usage=Usage(input_tokens=1000, output_tokens=100),
        created_at=timezone.now() - timedelta(days=20),
    )
    columns = [f.column for f in UsageLog._meta.concrete_fields if not f.primary_key]
    select = [
        {
            "request_id": "'bulk-' || k.id || '-' || g",
            "api_key_id": "k.id",
            "created_at": "t.created_at - g * interval '1 second'",
        }.get(column, f't."{column}"')
        for column in columns
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO billing_usagelog ({', '.join(f'"{c}"' for c in columns)}) "  # noqa: S608
            f"SELECT {', '.join(select)} FROM billing_usagelog t "
            "CROSS JOIN generate_series(1, %s) g "
            "JOIN accounts_apikey k ON k.id = ANY(%s) WHERE t.request_id = 'template'",
            [ROWS // len(keys), [key.pk for key in keys]],
        )
        cursor.execute("SET LOCAL session_replication_role = origin")
        cursor.execute(
            "UPDATE accounts_apikey k SET quota_used_usd = s.total FROM "
            "(SELECT api_key_id, SUM(actual_cost) AS total FROM billing_usagelog GROUP BY api_key_id) s "
            "WHERE s.api_key_id = k.id"
        )
    assert UsageLog.objects.count() == ROWS + 1
    run = reconcile_run_create(scope="keys", started_by_label="test")

    tracemalloc.start()
    run = reconcile_run_execute(run_id=run.pk, chunk_size=20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert (run.checked, run.drifted) == (100, 0)
    print(f"reconcile of {ROWS:,} ledger rows: tracemalloc peak {peak / 1e6:.2f} MB")
    # Loading the rows (id, time, amount) at once would take about 25 MB; streaming keeps the
    # peak to a few thousand rows at a time.
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_fixing_a_quota_that_drifted_past_the_limit_makes_the_key_active_again(ledger):
    used = APIKey.objects.values_list("quota_used_usd", flat=True).get(pk=ledger.key.pk)
    APIKey.objects.filter(pk=ledger.key.pk).update(
        quota_usd=used + 1, quota_used_usd=used + 5, status=APIKey.Status.QUOTA_EXHAUSTED
    )
    assert reconcile("keys", "fix").fixed == 1
    key = APIKey.objects.get(pk=ledger.key.pk)
    assert (key.quota_used_usd, key.status) == (used, APIKey.Status.ACTIVE)
