"""The account quota engine: one atomic UPDATE with lazy resets, checked against the pure window math."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import UpstreamAccount
from accounts.selectors.upstream import upstream_account_quota_badge
from accounts.services.upstream import (
    _quota_charge_orm,
    upstream_account_quota_charge,
    upstream_account_quota_reset,
)
from accounts.snapshots import AccountQuota
from accounts.windows import is_period_expired, period_end
from common.money import quantize_usd
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import UpstreamAccountFactory

HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu"]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def charge(account: UpstreamAccount, amount: str, now: datetime) -> UpstreamAccount:
    upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal(amount), now=now)
    account.refresh_from_db()
    return account


# --- Examples ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_first_charge_starts_both_windows_and_counts_everywhere():
    account = charge(UpstreamAccountFactory(), "1.25", utc(2026, 3, 1, 10))
    assert (
        account.quota_used_usd
        == account.quota_daily_used_usd
        == account.quota_weekly_used_usd
        == Decimal("1.25")
    )
    assert account.quota_daily_start == account.quota_weekly_start == utc(2026, 3, 1, 10)
    assert account.last_used_at == utc(2026, 3, 1, 10)


@pytest.mark.django_db
def test_charges_inside_a_rolling_period_add_up_and_the_next_one_after_it_restarts_the_period():
    account = UpstreamAccountFactory()
    charge(account, "1", utc(2026, 3, 1, 10))
    account = charge(account, "2", utc(2026, 3, 2, 9, 59))
    assert account.quota_daily_used_usd == Decimal("3")
    account = charge(account, "4", utc(2026, 3, 2, 10))  # exactly 24h later: expired
    assert account.quota_daily_used_usd == Decimal("4")
    assert account.quota_daily_start == utc(2026, 3, 2, 10)
    assert account.quota_weekly_used_usd == Decimal("7") and account.quota_used_usd == Decimal("7")


@pytest.mark.django_db
def test_a_fixed_daily_period_ends_at_the_reset_hour_in_the_accounts_timezone():
    account = UpstreamAccountFactory(
        quota_daily_reset_mode="fixed", quota_daily_reset_hour=9, quota_timezone="Asia/Tokyo"
    )
    charge(account, "5", utc(2026, 3, 1, 23, 30))  # 08:30 in Tokyo
    account = charge(account, "1", utc(2026, 3, 1, 23, 59))  # 08:59: same period
    assert account.quota_daily_used_usd == Decimal("6")
    account = charge(account, "2", utc(2026, 3, 2, 0, 0))  # 09:00 Tokyo: a new period
    assert account.quota_daily_used_usd == Decimal("2")


@pytest.mark.django_db
def test_a_fixed_weekly_period_ends_at_the_reset_weekday_and_hour():
    account = UpstreamAccountFactory(
        quota_weekly_reset_mode="fixed",
        quota_weekly_reset_hour=0,
        quota_weekly_reset_weekday=0,  # Monday 00:00 UTC
        quota_timezone="UTC",
    )
    charge(account, "5", utc(2026, 3, 1, 12))  # a Sunday
    account = charge(account, "1", utc(2026, 3, 1, 23, 59))
    assert account.quota_weekly_used_usd == Decimal("6")
    account = charge(account, "1", utc(2026, 3, 2, 0, 1))  # Monday
    assert account.quota_weekly_used_usd == Decimal("1")


@pytest.mark.django_db
def test_a_charge_is_one_update_statement_after_reading_the_reset_settings():
    account = UpstreamAccountFactory(quota_daily_reset_mode="fixed")
    with CaptureQueriesContext(connection) as queries:
        upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal("1"), now=utc(2026, 1, 1))
    sql = [q["sql"] for q in queries.captured_queries]
    assert len(sql) == 2
    assert sql[0].startswith("SELECT") and "quota_daily_used_usd" not in sql[0]
    assert sql[1].startswith("UPDATE") and "CASE WHEN" in sql[1]


@pytest.mark.django_db
def test_amounts_are_quantised_to_eight_places_before_they_are_counted():
    account = charge(UpstreamAccountFactory(), "0.123456785", utc(2026, 1, 1))
    assert account.quota_used_usd == Decimal("0.12345679")
    assert account.quota_daily_used_usd == Decimal("0.12345679")


@pytest.mark.django_db
def test_last_used_never_moves_backwards():
    account = UpstreamAccountFactory()
    charge(account, "1", utc(2026, 1, 2))
    account = charge(account, "1", utc(2026, 1, 1))
    assert account.last_used_at == utc(2026, 1, 2)


@pytest.mark.django_db
def test_an_unknown_account_raises():
    with pytest.raises(UpstreamAccount.DoesNotExist):
        upstream_account_quota_charge(account_id=999_999, amount_usd=Decimal("1"))


@pytest.mark.django_db
def test_a_daily_limit_is_exceeded_only_while_its_period_lasts_and_reads_zero_afterwards():
    account = UpstreamAccountFactory(quota_daily_limit_usd=Decimal("10"), quota_limit_usd=Decimal("100"))
    account = charge(account, "11", utc(2026, 5, 1, 8))
    inside = utc(2026, 5, 1, 20)
    assert AccountQuota.of(account).is_exceeded(inside)
    after = utc(2026, 5, 2, 8)
    assert not AccountQuota.of(account).is_exceeded(after)
    badge = upstream_account_quota_badge(account, now=after)
    daily = badge.meters[0]
    assert (daily.label, daily.used, daily.level) == ("D", Decimal(0), "neutral")
    assert badge.meters[-1].used == Decimal("11")  # the total never resets
    account.refresh_from_db()
    assert account.quota_daily_used_usd == Decimal("11")  # the display rule wrote nothing


@pytest.mark.django_db
def test_the_total_quota_is_exceeded_at_its_limit():
    account = charge(UpstreamAccountFactory(quota_limit_usd=Decimal("3")), "3", utc(2026, 1, 1))
    assert AccountQuota.of(account).is_exceeded(utc(2027, 1, 1))


@pytest.mark.django_db
def test_resetting_zeroes_the_three_amounts_and_clears_the_starts():
    account = charge(UpstreamAccountFactory(), "4", utc(2026, 1, 1))
    upstream_account_quota_reset(account_id=account.pk)
    account.refresh_from_db()
    assert (account.quota_used_usd, account.quota_daily_used_usd, account.quota_weekly_used_usd) == (0, 0, 0)
    assert account.quota_daily_start is None and account.quota_weekly_start is None


# --- Properties against the pure reference model -------------------------------------------------


def reference(charges: list[tuple[datetime, Decimal]], rules: dict) -> dict:
    """The lazy reset as accounts.windows defines it, applied charge by charge in Python."""
    state = {"daily": [Decimal(0), None], "weekly": [Decimal(0), None]}
    for at, amount in charges:
        for period, slot in state.items():
            rule = rules[period]
            if is_period_expired(slot[1], at, period=period, tz=rules["tz"], **rule):
                slot[:] = [amount, at]
            else:
                slot[0] += amount
    return state


TICK = timedelta(microseconds=1)
# Whole hours often land exactly on a reset boundary; the jitters probe either side of one.
jitters = st.sampled_from([timedelta(0), TICK, -TICK, timedelta(minutes=30), timedelta(minutes=59)])
whole_hours = st.builds(lambda n, j: n * HOUR + j, st.integers(0, 200), jitters)
gaps = st.one_of(
    whole_hours,
    st.builds(lambda n, j: n * DAY + j, st.integers(0, 10), jitters),
    st.timedeltas(min_value=timedelta(0), max_value=9 * DAY),
    st.timedeltas(min_value=20 * DAY, max_value=400 * DAY),  # idle for months
    st.sampled_from([DAY, 7 * DAY, DAY - TICK, TICK]),
)
# Starts cluster around DST changes in the zones above, where fixed boundaries are hardest, and
# sit on or next to a reset boundary of the rule under test.
transitions = st.sampled_from(
    [
        utc(2026, 3, 8, 6),  # New York springs forward (07:00 UTC)
        utc(2026, 11, 1, 5),  # New York falls back
        utc(2026, 3, 29, 0),  # London springs forward
        utc(2026, 10, 25, 0),  # London falls back
        utc(2026, 4, 4, 14),  # Lord Howe: half an hour back
        utc(2026, 10, 3, 15),  # Lord Howe: half an hour forward
    ]
)
offsets = st.one_of(jitters, st.builds(lambda n, j: n * HOUR + j, st.integers(-30, 30), jitters))


def near_boundary(near: datetime, offset: timedelta, *, period: str, rule: dict, tz: str) -> datetime:
    """A reset boundary of a fixed rule close to `near` (`near` itself for rolling), plus an offset."""
    if rule["mode"] == "rolling":
        return near + offset
    return period_end(near, period=period, tz=tz, **rule) + offset


amounts = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(500), places=8)
rule_sets = st.fixed_dictionaries(
    {
        "daily": st.fixed_dictionaries(
            {
                "mode": st.sampled_from(["rolling", "fixed"]),
                "reset_hour": st.integers(0, 23),
                "reset_weekday": st.just(0),
            }
        ),
        "weekly": st.fixed_dictionaries(
            {
                "mode": st.sampled_from(["rolling", "fixed"]),
                "reset_hour": st.integers(0, 23),
                "reset_weekday": st.integers(0, 6),
            }
        ),
        "tz": st.sampled_from(ZONES),
    }
)


@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=rule_sets,
    near=transitions,
    offset=offsets,
    anchor=st.sampled_from(["daily", "weekly"]),
    steps=st.lists(st.tuples(gaps, amounts), min_size=1, max_size=8),
)
def test_a_sequence_of_charges_stores_what_the_reference_model_computes(rules, near, offset, anchor, steps):
    account = UpstreamAccountFactory(
        quota_daily_reset_mode=rules["daily"]["mode"],
        quota_daily_reset_hour=rules["daily"]["reset_hour"],
        quota_weekly_reset_mode=rules["weekly"]["mode"],
        quota_weekly_reset_hour=rules["weekly"]["reset_hour"],
        quota_weekly_reset_weekday=rules["weekly"]["reset_weekday"],
        quota_timezone=rules["tz"],
    )
    at = near_boundary(near, offset, period=anchor, rule=rules[anchor], tz=rules["tz"])
    charges = []
    for n, (gap, amount) in enumerate(steps):
        at = at + gap if n else at  # the first charge lands on (or right by) a boundary
        charges.append((at, amount))
        upstream_account_quota_charge(account_id=account.pk, amount_usd=amount, now=at)

    expected = reference(charges, rules)
    account.refresh_from_db()
    assert account.quota_daily_used_usd == expected["daily"][0]
    assert account.quota_daily_start == expected["daily"][1]
    assert account.quota_weekly_used_usd == expected["weekly"][0]
    assert account.quota_weekly_start == expected["weekly"][1]
    assert account.quota_used_usd == sum((a for _, a in charges), Decimal(0))
    # Charges may land out of order (a jitter can step back 1 µs); last use never moves backwards.
    assert account.last_used_at == max(at for at, _ in charges)


@pytest.mark.django_db
@settings(max_examples=30, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    near=transitions,
    offset=offsets,
    later=st.one_of(whole_hours, st.timedeltas(min_value=timedelta(0), max_value=60 * DAY)),
)
def test_the_badge_reads_zero_exactly_when_the_next_charge_would_restart_the_period(
    tz, hour, near, offset, later
):
    rule = {"mode": "fixed", "reset_hour": hour, "reset_weekday": 0}
    first = near_boundary(near, offset, period="daily", rule=rule, tz=tz)
    account = UpstreamAccountFactory(
        quota_daily_limit_usd=Decimal("100"),
        quota_daily_reset_mode="fixed",
        quota_daily_reset_hour=hour,
        quota_timezone=tz,
    )
    account = charge(account, "7", first)
    now = first + later
    shown = upstream_account_quota_badge(account, now=now).meters[0].used
    account = charge(account, "1", now)
    restarted = account.quota_daily_used_usd == Decimal("1")
    assert (shown == 0) == restarted
    assert restarted == is_period_expired(
        first, now, mode="fixed", period="daily", reset_hour=hour, reset_weekday=0, tz=ZoneInfo(tz)
    )


# --- Reset rules passed in, and the portable statement, change nothing ---------------------------


@pytest.mark.django_db
def test_a_charge_given_the_reset_rules_is_one_update_and_nothing_else():
    account = UpstreamAccountFactory(
        quota_daily_reset_mode="fixed", quota_daily_reset_hour=6, quota_timezone="UTC"
    )
    rules = AccountQuota.read_rules(account.pk)
    with CaptureQueriesContext(connection) as queries:
        upstream_account_quota_charge(
            account_id=account.pk, amount_usd=Decimal("1"), now=utc(2026, 1, 1), rules=rules
        )
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    account.refresh_from_db()
    assert account.quota_daily_used_usd == account.quota_used_usd == Decimal("1")


@pytest.mark.django_db
def test_charging_an_unknown_account_with_its_rules_given_still_raises():
    rules = AccountQuota.of(UpstreamAccountFactory.build())
    with pytest.raises(UpstreamAccount.DoesNotExist):
        upstream_account_quota_charge(account_id=999_999, amount_usd=Decimal("1"), rules=rules)


def quota_counters(account: UpstreamAccount) -> dict:
    return UpstreamAccount.objects.values(
        "quota_used_usd",
        "quota_daily_used_usd",
        "quota_daily_start",
        "quota_weekly_used_usd",
        "quota_weekly_start",
        "last_used_at",
    ).get(pk=account.pk)


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=rule_sets,
    near=transitions,
    offset=offsets,
    anchor=st.sampled_from(["daily", "weekly"]),
    steps=st.lists(st.tuples(gaps, amounts), min_size=1, max_size=8),
)
def test_passed_rules_and_the_portable_orm_statement_store_what_reading_the_rules_stores(
    rules, near, offset, anchor, steps
):
    # Three twins: rules read by the service, passed in as billing does, and the ORM statement
    # other databases run (here compiled for PostgreSQL) instead of the precompiled SQL.
    config = {
        "quota_daily_reset_mode": rules["daily"]["mode"],
        "quota_daily_reset_hour": rules["daily"]["reset_hour"],
        "quota_weekly_reset_mode": rules["weekly"]["mode"],
        "quota_weekly_reset_hour": rules["weekly"]["reset_hour"],
        "quota_weekly_reset_weekday": rules["weekly"]["reset_weekday"],
        "quota_timezone": rules["tz"],
    }
    read, passed, portable = (UpstreamAccountFactory(**config) for _ in range(3))
    passed_rules = AccountQuota.of(passed)
    at = near_boundary(near, offset, period=anchor, rule=rules[anchor], tz=rules["tz"])
    for n, (gap, amount) in enumerate(steps):
        at = at + gap if n else at
        upstream_account_quota_charge(account_id=read.pk, amount_usd=amount, now=at)
        answered = upstream_account_quota_charge(
            account_id=passed.pk, amount_usd=amount, now=at, rules=passed_rules
        )
        changed = _quota_charge_orm(
            account_id=portable.pk, amount=quantize_usd(amount), now=at, rules=passed_rules, tz=rules["tz"]
        )
        assert changed == (
            answered.used_usd,
            answered.daily_used_usd,
            answered.daily_start,
            answered.weekly_used_usd,
            answered.weekly_start,
        ), "both forms answer the same counters"
    assert quota_counters(read) == quota_counters(passed) == quota_counters(portable)


# --- Concurrency --------------------------------------------------------------------------------

THREADS = 20


def run_threads(work) -> list[BaseException]:
    return run_in_threads(THREADS, work)


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_charging_one_account_lose_nothing():
    account = UpstreamAccountFactory(quota_used_usd=Decimal("1"))
    amounts = [Decimal("0.01234567") * (i + 1) for i in range(THREADS)]
    failures = run_threads(
        lambda i: upstream_account_quota_charge(account_id=account.pk, amount_usd=amounts[i])
    )
    assert failures == []
    account.refresh_from_db()
    assert account.quota_used_usd == Decimal("1") + sum(amounts)
    assert account.quota_daily_used_usd == account.quota_weekly_used_usd == sum(amounts)


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_hitting_an_expired_period_restart_it_once_and_lose_nothing():
    stale = utc(2025, 1, 1)
    account = UpstreamAccountFactory(
        quota_daily_used_usd=Decimal("50"),
        quota_daily_start=stale,
        quota_weekly_used_usd=Decimal("80"),
        quota_weekly_start=stale,
        quota_weekly_reset_mode="fixed",
    )
    now = utc(2026, 6, 1, 12)
    failures = run_threads(
        lambda i: upstream_account_quota_charge(account_id=account.pk, amount_usd=Decimal("0.5"), now=now)
    )
    assert failures == []
    account.refresh_from_db()
    assert account.quota_daily_used_usd == account.quota_weekly_used_usd == Decimal("10")
    assert account.quota_daily_start == account.quota_weekly_start == now
    assert account.quota_used_usd == Decimal("10")


@pytest.mark.django_db(transaction=True)
def test_the_harness_sees_a_race_a_naive_read_modify_write_loses_quota_charges():
    # The control: the same harness adding to the account's quota by read-modify-write.
    account = UpstreamAccountFactory(quota_used_usd=Decimal("1"))
    failures = run_naive_increments(
        THREADS, model=UpstreamAccount, pk=account.pk, field="quota_used_usd", amount=Decimal("0.5")
    )
    assert failures == []
    account.refresh_from_db()
    assert account.quota_used_usd == Decimal("1.5")  # THREADS - 1 charges were lost
