"""A user's usage breakdown (docs/console.md#user-usage-breakdown): by group, model and key,
sortable, as a page and as CSV, from the rollups."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from billing.cost import Usage
from billing.models import UsageLog
from billing.services import usage_record
from console.breakdown import user_breakdown
from tests.factories import APIKeyFactory, GroupFactory, UpstreamAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal


def record(key, account, request_id, *, ago=timedelta(0), **kwargs):
    kwargs.setdefault("requested_model", "claude-sonnet-4-5")
    kwargs.setdefault("usage", Usage(input_tokens=10_000, output_tokens=1_000))
    return usage_record(
        request_id=request_id,
        api_key_id=key.pk,
        account_id=account.pk,
        created_at=timezone.now() - ago,
        **kwargs,
    )


@pytest.fixture
def carol():
    """Carol: two groups, three keys, a mapped model; Dave's usage must never show on her page."""
    carol = UserFactory(email="carol@example.com", balance=D("100"))
    dave = UserFactory(email="dave@example.com", balance=D("100"))
    pro, lite = GroupFactory(name="pro", rate_multiplier=D("2")), GroupFactory(name="lite")
    keys = [
        APIKeyFactory(user=carol, group=pro, name="alpha"),
        APIKeyFactory(user=carol, group=lite, name="beta"),
        APIKeyFactory(user=carol, group=lite, name="gamma"),
    ]
    account = UpstreamAccountFactory()
    record(keys[0], account, "c-1")
    record(keys[0], account, "c-2", usage=Usage(input_tokens=50_000, output_tokens=20_000))
    record(keys[1], account, "c-3", requested_model="gpt-4o", upstream_model="gpt-4o-2024-08-06")
    record(keys[2], account, "c-4", ago=timedelta(days=3))
    record(keys[2], account, "c-old", ago=timedelta(days=40))
    record(APIKeyFactory(user=dave, group=pro), account, "d-1")
    return {"user": carol, "keys": keys, "groups": (pro, lite)}


def ledger_cost(user, **filters):
    since = timezone.now() - timedelta(days=30)
    return UsageLog.objects.filter(user=user, created_at__gte=since, **filters).aggregate(
        s=Sum("actual_cost")
    )["s"]


def test_each_table_adds_up_to_the_users_ledger_for_the_period(carol):
    breakdown = user_breakdown(user_id=carol["user"].pk, period="30d")
    total = ledger_cost(carol["user"])
    for rows in (breakdown.groups, breakdown.models, breakdown.keys):
        assert sum(row.actual_cost for row in rows) == total
        assert sum(row.requests for row in rows) == 4
    assert {row.label for row in breakdown.groups} == {"pro", "lite"}
    assert {row.label for row in breakdown.keys} == {"alpha", "beta", "gamma"}
    pro = next(row for row in breakdown.groups if row.label == "pro")
    assert pro.actual_cost == ledger_cost(carol["user"], group=carol["groups"][0]) and pro.requests == 2


def test_the_model_table_follows_the_model_source(carol):
    user_id = carol["user"].pk
    assert {r.label for r in user_breakdown(user_id=user_id, period="30d").models} == {
        "claude-sonnet-4-5",
        "gpt-4o",
    }
    upstream = {r.label for r in user_breakdown(user_id=user_id, period="30d", source="upstream").models}
    assert "gpt-4o-2024-08-06" in upstream and "gpt-4o" not in upstream
    mapping = {r.label for r in user_breakdown(user_id=user_id, period="30d", source="mapping").models}
    assert "gpt-4o → gpt-4o-2024-08-06" in mapping


def test_the_period_narrows_every_table(carol):
    today = user_breakdown(user_id=carol["user"].pk, period="today")
    assert sum(row.requests for row in today.keys) == 3
    assert {row.label for row in today.keys} == {"alpha", "beta"}


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("-charged", ["alpha", "gamma", "beta"]),  # claude-sonnet-4-5 costs more than gpt-4o
        ("name", ["alpha", "beta", "gamma"]),
        ("-name", ["gamma", "beta", "alpha"]),
        ("requests", ["beta", "gamma", "alpha"]),
    ],
)
def test_the_tables_sort_by_any_column(staff_client, carol, sort, expected):
    response = staff_client.get(f"/users/{carol['user'].pk}/usage/", {"sort": sort})
    assert response.status_code == 200
    assert [row.label for row in response.context["breakdown"].keys] == expected
    page = response.content.decode()
    assert 'aria-sort="' in page


def test_the_page_shows_the_three_tables_and_links_each_key(
    staff_client, carol, django_assert_max_num_queries
):
    # session, staff user, the user, three sums (group, key, model), group names, key names
    with django_assert_max_num_queries(8):
        response = staff_client.get(f"/users/{carol['user'].pk}/usage/")
    page = response.content.decode()
    assert response.status_code == 200
    for dimension in ("group", "model", "key"):
        assert f'id="breakdown-{dimension}"' in page
    assert f'href="/keys/{carol["keys"][0].pk}/"' in page and "dave@example.com" not in page
    assert "style=" not in page and "<script>" not in page


def test_the_csv_export_has_every_row_of_the_three_tables(staff_client, carol):
    response = staff_client.get(f"/users/{carol['user'].pk}/usage/", {"format": "csv", "models": "mapping"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["dimension"] for row in rows].count("group") == 2
    assert [row["dimension"] for row in rows].count("key") == 3
    assert "gpt-4o → gpt-4o-2024-08-06" in {row["name"] for row in rows if row["dimension"] == "model"}
    total = ledger_cost(carol["user"])
    assert sum(D(row["charged_usd"]) for row in rows if row["dimension"] == "key") == total


@pytest.mark.parametrize("params", [{"models": "billing"}, {"period": "1y"}, {"sort": "password"}])
def test_an_unknown_choice_is_answered_400(staff_client, carol, params):
    response = staff_client.get(f"/users/{carol['user'].pk}/usage/", params)
    assert response.status_code == 400 and b"must be one of" in response.content


def test_the_user_page_links_to_the_breakdown(staff_client, carol):
    page = staff_client.get(f"/users/{carol['user'].pk}/").content.decode()
    assert f'href="/users/{carol["user"].pk}/usage/"' in page
