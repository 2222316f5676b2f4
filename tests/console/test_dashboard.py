"""The operator dashboard (docs/console.md#dashboard): KPIs, the period's charts (trend, model mix,
top users and keys, cost per group), and warnings, from rollups."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as live
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, F, Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.cost import Usage
from billing.models import UsageLog, UsageRollup
from billing.selectors import period_range
from billing.services import usage_record
from console.dashboard import (
    dashboard_charts,
    dashboard_kpis,
    dashboard_trend,
    dashboard_usage,
    group_costs,
    period_sums,
    top_keys,
    top_models,
)
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    UpstreamAccountFactory,
    UsageLogFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal


def record(key, account, request_id, *, ago=timedelta(0), **kwargs):
    kwargs.setdefault("requested_model", "claude-sonnet-4-5")
    kwargs.setdefault("usage", Usage(input_tokens=12_000, output_tokens=1_000, cache_read_tokens=500))
    return usage_record(
        request_id=request_id,
        api_key_id=key.pk,
        account_id=account.pk,
        created_at=timezone.now() - ago,
        **kwargs,
    )


@pytest.fixture
def recorded():
    """Usage today, three days ago and ten days ago, across two users, three keys and a mapping."""
    group = GroupFactory(rate_multiplier=D("1.5"))
    alice, bob = (
        UserFactory(email="alice@example.com", balance=D("100")),
        UserFactory(email="bob@example.com", balance=D("100")),
    )
    keys = [APIKeyFactory(user=alice, group=group), APIKeyFactory(user=alice, group=group)]
    keys.append(APIKeyFactory(user=bob, group=group))
    account = UpstreamAccountFactory(rate_multiplier=D("0.5"))
    record(keys[0], account, "today-1")
    record(keys[0], account, "today-2", usage=Usage(input_tokens=400, output_tokens=30_000))
    record(keys[2], account, "today-3", requested_model="gpt-4o", upstream_model="gpt-4o-2024-08-06")
    record(keys[1], account, "earlier-1", ago=timedelta(days=3), requested_model="acme-llm-9000")
    record(keys[1], account, "earlier-2", ago=timedelta(days=3), usage=Usage(input_tokens=5, output_tokens=5))
    record(keys[2], account, "old-1", ago=timedelta(days=10))
    return {"keys": keys, "account": account, "alice": alice, "bob": bob}


@pytest.fixture
def midday(settings):
    """The local time is about noon whatever the time of day the suite runs, so the closed days
    the query counts below expect to come from the cache have settled: for SETTLE (ten minutes)
    after local midnight yesterday is still open and summed live on every request, which made
    those counts five too many from 00:00 to 00:10 UTC."""
    utc_offset = 12 - timezone.now().hour  # -11 to +12 hours: each has an Etc/GMT zone
    settings.TIME_ZONE = f"Etc/GMT{-utc_offset:+d}" if utc_offset else "Etc/GMT"  # Etc/GMT-3 is UTC+3


def ledger_sums(start):
    return UsageLog.objects.filter(created_at__gte=start).aggregate(
        requests=Count("id"),
        input=Sum("input_tokens"),
        output=Sum("output_tokens"),
        cache=Sum("cache_read_tokens"),
        actual=Sum("actual_cost"),
        account=Sum("account_cost"),
        keys=Count("api_key_id", distinct=True),
    )


def test_it_sums_the_kpis_of_recorded_usage_for_today_and_seven_days(recorded):
    kpis = dashboard_kpis()
    for figures, period in ((kpis.today, "today"), (kpis.week, "7d")):
        start, _ = period_range(period)
        ledger = ledger_sums(start)
        assert figures.requests == ledger["requests"]
        assert (figures.input_tokens, figures.output_tokens, figures.cache_tokens) == (
            ledger["input"],
            ledger["output"],
            ledger["cache"],
        )
        assert figures.actual_cost == ledger["actual"]
        assert figures.account_cost == ledger["account"]
        assert figures.active_keys == ledger["keys"]
    # Hand-checked: three requests today on two keys; five in the week on three keys.
    assert (kpis.today.requests, kpis.today.active_keys) == (3, 2)
    assert (kpis.week.requests, kpis.week.active_keys) == (5, 3)
    assert kpis.week.actual_cost > kpis.today.actual_cost > 0


def test_the_page_shows_the_kpis(staff_client, recorded):
    response = staff_client.get("/")
    assert response.status_code == 200
    kpis = response.context["kpis"]
    page = response.content.decode()
    assert f">{kpis.week.requests}<" in page
    assert "Charged to users" in page and "Account cost" in page and "Active keys" in page


def test_the_trend_has_seven_days_that_add_up_to_the_week(recorded):
    trend = dashboard_trend(period="7d")
    assert len(trend) == 7 and trend[-1].start.date() == timezone.localdate()
    week = dashboard_kpis().week
    assert sum(point.requests for point in trend) == week.requests
    assert sum(point.actual_cost for point in trend) == week.actual_cost
    assert trend[-1].requests == 3 and trend[-4].requests == 2
    assert [point.requests for point in trend if point not in (trend[-1], trend[-4])] == [0] * 5


def test_the_30_day_trend_reaches_back_to_the_ten_day_old_row(recorded):
    trend = dashboard_trend(period="30d")
    assert len(trend) == 30 and trend[0].start.date() == timezone.localdate() - timedelta(days=29)
    assert trend[-11].requests == 1
    start, _ = period_range("30d")
    assert sum(point.actual_cost for point in trend) == ledger_sums(start)["actual"]


def test_today_is_drawn_by_the_hour_so_far(recorded):
    trend = dashboard_trend(period="today")
    now = timezone.localtime()
    assert trend[-1].start.hour == now.hour and len(trend) == now.hour + 1
    assert sum(point.requests for point in trend) == 3 and trend[-1].requests == 3
    assert trend[-1].label == f"{now:%H}:00"


@pytest.mark.usefixtures("midday")
def test_closed_hours_and_days_come_from_the_cache_and_the_open_hour_is_summed_live(
    recorded, django_assert_num_queries
):
    dashboard_usage(period="30d")
    # Warm: only the open hour is summed (five queries: groups with totals, models, users, keys,
    # unpriced models).
    with django_assert_num_queries(5):
        usage = dashboard_usage(period="30d")
    assert usage.today.requests == 3
    record(recorded["keys"][0], recorded["account"], "today-4")
    with django_assert_num_queries(5):
        assert dashboard_usage(period="30d").today.requests == 4
    # A row recorded into a closed day (a backfill) moves the rollup epoch: the day is summed again.
    record(recorded["keys"][0], recorded["account"], "late-1", ago=timedelta(days=3))
    assert period_sums(dashboard_usage(period="7d"), "7d").requests == 6
    # A change made behind the recorder's back (SQL on the rollups) shows once the cache is cleared.
    UsageRollup.objects.filter(hour__lt=timezone.now() - timedelta(days=2)).update(
        requests=F("requests") + 10
    )
    assert period_sums(dashboard_usage(period="7d"), "7d").requests == 6
    cache.clear()
    assert period_sums(dashboard_usage(period="7d"), "7d").requests > 6


@pytest.mark.usefixtures("midday")
def test_the_warm_job_leaves_only_the_open_hour_for_the_first_visitor(recorded, django_assert_num_queries):
    from console.tasks import dashboard_warm

    cache.clear()
    with CaptureQueriesContext(connection) as cold:
        dashboard_usage(period="30d")
    assert len(cold) > 5  # control: with nothing cached, the closed days are summed too
    cache.clear()
    assert dashboard_warm() == 3
    for period in ("today", "7d", "30d"):
        # The first visitor of each period sums only the open hour, as a warm request does.
        with django_assert_num_queries(5):
            assert dashboard_usage(period=period).today.requests == 3


def test_the_period_switcher_swaps_the_charts_section(staff_client, recorded):
    response = staff_client.get(
        "/",
        {"period": "30d", "models": "requested"},
        headers={"HX-Request": "true", "HX-Target": "dashboard-charts"},
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<div id="dashboard-charts"')
    assert "Usage, 30 days" in page and 'aria-current="true">30 days' in " ".join(page.split())
    assert "Top users, 30 days" in page and "Cost per group, 30 days" in page
    assert "<html" not in page and 'data-kpi="requests"' not in page
    data = page.split('<script id="chart-trend-data" type="application/json">')[1].split("</script>")[0]
    assert len(json.loads(data)["labels"]) == 30


def test_every_chart_is_a_canvas_fed_by_json_with_a_table_alternative(staff_client, recorded):
    response = staff_client.get("/")
    page = response.content.decode()
    for name in ("trend", "models", "users", "keys", "groups"):
        # No id on a canvas: htmx would copy the old canvas's style attribute (set by Chart.js) to the
        # new one while settling a swap, which the CSP refuses.
        assert f'<canvas data-chart="chart-{name}-data" role="img"' in page
        assert f'<script id="chart-{name}-data" type="application/json">' in page
        assert f'id="{name}-table"' in page
    # CSP: the only <script> elements without a src are JSON data blocks; no inline styles.
    assert page.count("<script>") == 0 and "style=" not in page
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js" defer></script>' in page
    assert '<script src="/static/js/dashboard.js" defer></script>' in page
    # The chart draws what the table shows.
    charts = response.context["charts"]
    assert charts["users"]["labels"] == [u.label for u in response.context["top_users"]]
    assert charts["users"]["values"] == [str(u.actual_cost) for u in response.context["top_users"]]
    trend = response.context["trend"]
    assert charts["trend"]["values"] == [str(point.actual_cost) for point in trend]
    assert charts["trend"]["tokens"] == [point.tokens for point in trend]


def test_top_models_follow_the_model_source_toggle(recorded):
    requested = [m.requested for m in top_models(source="requested")]
    upstream = [m.upstream for m in top_models(source="upstream")]
    mapping = [(m.requested, m.upstream) for m in top_models(source="mapping")]
    assert "gpt-4o" in requested and "gpt-4o-2024-08-06" not in requested
    assert "gpt-4o-2024-08-06" in upstream and "gpt-4o" not in upstream
    assert ("gpt-4o", "gpt-4o-2024-08-06") in mapping
    assert [m.label("mapping") for m in top_models(source="mapping") if m.requested == "gpt-4o"] == [
        "gpt-4o → gpt-4o-2024-08-06"
    ]
    costs = [m.actual_cost for m in top_models(source="requested")]
    assert costs == sorted(costs, reverse=True)
    assert sum(costs) == dashboard_kpis().week.actual_cost


def test_the_toggle_swaps_only_the_top_models_card(staff_client, recorded):
    response = staff_client.get(
        "/", {"models": "mapping", "period": "7d"}, headers={"HX-Request": "true", "HX-Target": "top-models"}
    )
    page = response.content.decode()
    assert response.status_code == 200 and "HX-Request" in response["Vary"]
    assert page.lstrip().startswith('<section class="card shadow-sm h-100" id="top-models"')
    assert "gpt-4o</a>" in page and "gpt-4o-2024-08-06" in page and "→" in page
    assert '<script id="chart-models-data" type="application/json">' in page
    assert "Top users" not in page and "<html" not in page
    assert 'aria-current="true">Mapping' in " ".join(page.split())


@pytest.mark.parametrize(
    "params",
    [{"models": "nonsense"}, {"models": "REQUESTED"}, {"period": "90d"}, {"period": "today", "models": "x"}],
)
def test_an_unknown_model_source_or_period_is_answered_400(staff_client, params):
    response = staff_client.get("/", params)
    assert response.status_code == 400
    assert b"must be one of" in response.content


def test_top_users_rank_by_cost_with_their_emails_and_link_to_their_breakdown(staff_client, recorded):
    response = staff_client.get("/")
    users = response.context["top_users"]
    assert {u.label for u in users} == {"alice@example.com", "bob@example.com"}
    costs = [u.actual_cost for u in users]
    assert costs == sorted(costs, reverse=True) and sum(costs) == dashboard_kpis().week.actual_cost
    assert f'href="/users/{recorded["alice"].pk}/usage/?period=7d"' in response.content.decode()


def test_top_keys_and_group_costs_add_up_to_the_period(recorded):
    sums = period_sums(dashboard_usage(period="30d"), "30d")
    keys = top_keys(sums=sums)
    assert [k.id for k in keys][:1] and {k.id for k in keys} == {k.pk for k in recorded["keys"]}
    start, _ = period_range("30d")
    assert sum(k.actual_cost for k in keys) == ledger_sums(start)["actual"]
    assert all(k.detail in ("alice@example.com", "bob@example.com") for k in keys)
    groups = group_costs(sums=sums)
    assert len(groups) == 1 and groups[0].actual_cost == ledger_sums(start)["actual"]
    assert groups[0].requests == 6


def test_usage_with_no_group_is_its_own_bar(recorded):
    record(APIKeyFactory(group=None), recorded["account"], "no-group-1")
    groups = dashboard_charts(period="today")["group_costs"]
    assert sorted(g.label for g in groups) == sorted(["No group", recorded["keys"][0].group.name])
    assert [g.id for g in groups if g.label == "No group"] == [0]


def test_no_warnings_show_when_nothing_needs_attention(staff_client):
    key = APIKeyFactory(quota_usd=D("10"), quota_used_usd=D("7.99"))
    UpstreamAccountFactory(status="active", quota_limit_usd=D("10"), quota_used_usd=D("7.9"))
    UsageLogFactory(api_key=key)
    page = staff_client.get("/").content.decode()
    assert 'data-warning="none"' in page
    for kind in ("drift", "unpriced", "errors", "account-quota", "key-quota"):
        assert f'data-warning="{kind}"' not in page


def scheduled_batch(batch_id: str, *drifted: int, started_by: str = "schedule") -> None:
    from billing.models import ReconcileRun

    for scope, drift in zip(("keys", "accounts", "subscriptions", "users"), drifted, strict=False):
        ReconcileRun.objects.create(
            batch_id=batch_id,
            host_id="worker-1",
            scope=scope,
            status="succeeded",
            started_by_label=started_by,
            drifted=drift,
        )


def test_the_nightly_reconciles_drift_shows_as_a_warning_linking_to_its_batch(staff_client):
    scheduled_batch("nightly-1", 2, 0, 1)
    scheduled_batch("by-hand", 9, started_by="ops@example.com")  # a run started by hand is not the nightly's
    page = staff_client.get("/").content.decode()
    assert 'data-warning="drift"' in page
    assert "found 3 counters off the ledger" in page
    assert 'href="/reconcile/batches/nightly-1/"' in page


def test_a_later_nightly_batch_without_drift_clears_the_warning(staff_client):
    scheduled_batch("nightly-1", 2)
    scheduled_batch("nightly-2", 0, 0)
    page = staff_client.get("/").content.decode()
    assert 'data-warning="drift"' not in page and 'data-warning="none"' in page


def test_it_warns_about_unpriced_models_and_links_to_them(staff_client, recorded):
    page = staff_client.get("/").content.decode()
    assert 'data-warning="unpriced"' in page and "acme-llm-9000" in page
    assert 'href="/usage/?pricing_source=missing"' in page


def test_it_warns_about_accounts_in_error(staff_client):
    UpstreamAccountFactory(name="broken-one", status="error", error_message="401 invalid x-api-key")
    UpstreamAccountFactory(name="fine-one", status="active")
    page = staff_client.get("/").content.decode()
    assert 'data-warning="errors"' in page and "broken-one" in page and "401 invalid x-api-key" in page
    assert "fine-one" not in page
    assert 'href="/accounts/?status=error"' in page


def test_it_warns_about_account_quotas_at_eighty_percent_by_the_display_rule(staff_client):
    now = timezone.now()
    UpstreamAccountFactory(name="total-near", quota_limit_usd=D("100"), quota_used_usd=D("80"))
    UpstreamAccountFactory(
        name="daily-near", quota_daily_limit_usd=D("10"), quota_daily_used_usd=D("9"), quota_daily_start=now
    )
    # Its daily period started two days ago: it has expired, so it reads 0.
    UpstreamAccountFactory(
        name="daily-expired",
        quota_daily_limit_usd=D("10"),
        quota_daily_used_usd=D("9.5"),
        quota_daily_start=now - timedelta(days=2),
    )
    UpstreamAccountFactory(name="below", quota_limit_usd=D("100"), quota_used_usd=D("79.99"))
    # OAuth accounts carry no quota (docs/windows.md#account-quotas), whatever their columns hold.
    UpstreamAccountFactory(name="oauth-one", type="oauth", quota_limit_usd=D("1"), quota_used_usd=D("1"))
    response = staff_client.get("/")
    near = [n.account.name for n in response.context["accounts_near_quota"]]
    assert near == ["daily-near", "total-near"]
    page = response.content.decode()
    assert 'data-warning="account-quota"' in page and "Daily $9.00 of $10.00 (90%)" in page


def test_it_warns_about_keys_at_eighty_percent_of_quota(staff_client):
    APIKeyFactory(name="key-full", quota_usd=D("10"), quota_used_usd=D("10"), status="quota_exhausted")
    APIKeyFactory(name="key-near", quota_usd=D("10"), quota_used_usd=D("8"))
    APIKeyFactory(name="key-below", quota_usd=D("10"), quota_used_usd=D("7.99"))
    APIKeyFactory(name="key-unlimited", quota_usd=D("0"), quota_used_usd=D("500"))
    response = staff_client.get("/")
    assert [k.name for k in response.context["keys_near_quota"]] == ["key-full", "key-near"]
    page = response.content.decode()
    assert 'data-warning="key-quota"' in page and "key-below" not in page and "key-unlimited" not in page


@pytest.mark.usefixtures("midday")
def test_the_dashboard_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    users = UserFactory.create_batch(12)
    groups = GroupFactory.create_batch(3)
    accounts = UpstreamAccountFactory.create_batch(6, quota_limit_usd=D("1"), quota_used_usd=D("0.9"))
    UpstreamAccountFactory.create_batch(5, status="error", error_message="boom")
    now = timezone.now()
    for index in range(150):
        UsageLogFactory(
            api_key=APIKeyFactory(
                user=users[index % 12], group=groups[index % 3], quota_usd=D("1"), quota_used_usd=D("0.95")
            ),
            group=groups[index % 3],
            account=accounts[index % 6],
            requested_model=f"model-{index % 20}",
            pricing_source="missing" if index % 10 == 0 else "catalog",
            created_at=now - timedelta(hours=index),
        )
    # Cold: session, staff user; today's hours and the closed days, five queries each (groups with
    # totals, models, users, keys, unpriced models); emails, key names, group names; accounts in
    # error and their count, accounts near quota, keys near quota and their count.
    with django_assert_max_num_queries(20):
        response = staff_client.get("/", {"period": "30d"})
    assert response.status_code == 200
    assert len(response.context["top_models"]) == 8 and len(response.context["top_users"]) == 8
    assert len(response.context["top_keys"]) == 8 and len(response.context["group_costs"]) == 3
    assert response.context["key_near_quota_count"] == 150
    # Warm: the closed hours and days come from the cache, the open hour is summed.
    with django_assert_max_num_queries(15):
        response = staff_client.get("/", {"period": "30d"})
    assert response.status_code == 200
    with django_assert_max_num_queries(10):
        response = staff_client.get(
            "/", {"models": "upstream"}, headers={"HX-Request": "true", "HX-Target": "top-models"}
        )
    assert response.status_code == 200


def test_keys_near_quota_count_every_match_beyond_the_list(staff_client):
    for _ in range(12):
        APIKeyFactory(quota_usd=D("1"), quota_used_usd=D("0.9"))
    context = staff_client.get("/").context
    assert len(context["keys_near_quota"]) == 10 and context["key_near_quota_more"] == 2
    assert b"and 2 more" in staff_client.get("/").content


def test_without_a_broker_it_says_scheduled_jobs_are_off_and_how_to_turn_them_on(staff_client, settings):
    settings.SCHEDULED_JOBS_ENABLED = False
    page = staff_client.get("/").content.decode()
    assert 'id="jobs-off"' in page and "Scheduled jobs are off." in page
    assert "<code>REDIS_URL</code> is unset" in page
    assert "<code>celery -A config worker</code>" in page and "<code>celery -A config beat</code>" in page


def test_with_a_broker_it_does_not_say_jobs_are_off(staff_client, settings):
    settings.SCHEDULED_JOBS_ENABLED = True
    page = staff_client.get("/").content.decode()
    assert 'id="jobs-off"' not in page and "Scheduled jobs are off" not in page


def test_scheduled_jobs_are_on_exactly_when_redis_is_configured():
    # What the dashboard reads is derived from REDIS_URL in settings, like the broker itself.
    assert bool(live.REDIS_URL) == live.SCHEDULED_JOBS_ENABLED
    assert (not live.REDIS_URL) == live.CELERY_TASK_ALWAYS_EAGER
