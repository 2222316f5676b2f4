"""The usage log page: filters, totals, the breakdown row, CSV export."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.http import StreamingHttpResponse
from django.utils import timezone

from billing.models import UsageLog
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    UpstreamAccountFactory,
    UsageLogFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

D = Decimal


def rows_of(response) -> str:
    return response.content.decode()


def test_the_log_totals_the_filtered_set(staff_client):
    now = timezone.now()
    UsageLogFactory(
        request_id="older", created_at=now - timedelta(hours=2), input_tokens=1_000, output_tokens=100
    )
    UsageLogFactory(
        request_id="newer",
        created_at=now - timedelta(minutes=5),
        input_tokens=2_000,
        output_tokens=300,
        cache_read_tokens=5_000,
        rate_multiplier=D("2"),
        stream=True,
        first_token_ms=250,
    )
    response = staff_client.get("/usage/")
    page = rows_of(response)
    assert response.status_code == 200
    # Totals: 3,000 input; 400 output; 5,000 cache read.
    # Costs: older 1,000×3e-6 + 100×15e-6 = 0.0045; newer 2,000×3e-6 + 300×15e-6 + 5,000×0.3e-6 = 0.012.
    # Total 0.0165; charged 0.0045 + 0.024 = 0.0285.
    assert 'data-total="input_tokens">3,000<' in page
    assert 'data-total="output_tokens">400<' in page
    assert 'data-total="cache_read_tokens">5,000<' in page
    assert '<span data-total="total_cost">$0.0165<' in page
    assert '<span data-total="actual_cost">$0.0285<' in page
    assert "2 requests" in page


def test_rows_come_newest_first(staff_client):
    now = timezone.now()
    older = UsageLogFactory(created_at=now - timedelta(hours=3))
    newer = UsageLogFactory(created_at=now - timedelta(hours=1))
    page = rows_of(staff_client.get("/usage/"))
    assert page.index(f'id="usage-{newer.pk}"') < page.index(f'id="usage-{older.pk}"')
    page = rows_of(staff_client.get("/usage/", {"sort": "created_at"}))
    assert page.index(f'id="usage-{older.pk}"') < page.index(f'id="usage-{newer.pk}"')


def test_it_sorts_by_the_amount_charged(staff_client):
    cheap = UsageLogFactory(input_tokens=10)
    dear = UsageLogFactory(input_tokens=100_000)
    page = rows_of(staff_client.get("/usage/", {"sort": "-actual_cost"}))
    assert page.index(f'id="usage-{dear.pk}"') < page.index(f'id="usage-{cheap.pk}"')


@pytest.fixture
def spread():
    """Rows that differ in one dimension each, so every filter keeps exactly one of them."""
    now = timezone.now()
    alice, bob = UserFactory(email="alice@example.com"), UserFactory(email="bob@example.com")
    group_a, group_b = GroupFactory(name="team-a"), GroupFactory(name="team-b")
    key_a = APIKeyFactory(user=alice, group=group_a, name="alice-key")
    key_b = APIKeyFactory(user=bob, group=group_b, name="bob-key")
    acct_a, acct_b = UpstreamAccountFactory(name="acct-a"), UpstreamAccountFactory(name="acct-b")
    base = {"created_at": now}
    return {
        "a": UsageLogFactory(api_key=key_a, group=group_a, account=acct_a, request_id="row-a", **base),
        "b": UsageLogFactory(
            api_key=key_b,
            group=group_b,
            account=acct_b,
            request_id="row-b",
            requested_model="gpt-4o",
            upstream_model="gpt-4o-2024-08-06",
            billing_model="gpt-4o-mini",
            pricing_source="missing",
            status_code=429,
            **base,
        ),
        "old": UsageLogFactory(api_key=key_a, request_id="row-old", created_at=now - timedelta(days=12)),
        "ancient": UsageLogFactory(
            api_key=key_a, request_id="row-ancient", created_at=now - timedelta(days=45)
        ),
        "keys": (key_a, key_b),
        "users": (alice, bob),
        "groups": (group_a, group_b),
        "accounts": (acct_a, acct_b),
    }


def shown(staff_client, **params) -> set[str]:
    """Which of the fixture's rows the page lists, by request id."""
    page = rows_of(staff_client.get("/usage/", params))
    return {log.request_id for log in UsageLog.objects.all() if f'id="usage-{log.pk}"' in page}


def test_each_filter_keeps_only_matching_rows(staff_client, spread):
    alice, bob = spread["users"]
    key_a, key_b = spread["keys"]
    group_a, group_b = spread["groups"]
    acct_a, acct_b = spread["accounts"]
    assert shown(staff_client) == {"row-a", "row-b"}  # the default period is the last 7 days
    assert shown(staff_client, period="30d") == {"row-a", "row-b", "row-old"}
    assert shown(staff_client, period="today") == {"row-a", "row-b"}
    assert shown(staff_client, period="30d", user=alice.pk) == {"row-a", "row-old"}
    assert shown(staff_client, user=bob.pk) == {"row-b"}
    assert shown(staff_client, api_key=key_b.pk) == {"row-b"}
    assert shown(staff_client, account=acct_a.pk) == {"row-a"}
    assert shown(staff_client, group=group_b.pk) == {"row-b"}
    assert shown(staff_client, model="gpt-4o") == {"row-b"}
    assert shown(staff_client, model="gpt-4o-2024-08-06", model_field="upstream") == {"row-b"}
    assert shown(staff_client, model="gpt-4o-mini", model_field="billing") == {"row-b"}
    assert shown(staff_client, model="gpt-4o-mini", model_field="requested") == set()
    assert shown(staff_client, pricing_source="missing") == {"row-b"}
    assert shown(staff_client, pricing_source="catalog") == {"row-a"}
    assert shown(staff_client, status="error") == {"row-b"}
    assert shown(staff_client, status="ok") == {"row-a"}


def test_a_custom_range_takes_whole_days(staff_client, spread):
    day = timezone.localdate(spread["old"].created_at)
    assert shown(staff_client, period="custom", date_from=day, date_to=day) == {"row-old"}
    assert shown(staff_client, date_from=day - timedelta(days=40)) == {
        "row-a",
        "row-b",
        "row-old",
        "row-ancient",
    }
    assert shown(staff_client, period="custom", date_to=day) == {"row-old", "row-ancient"}


def test_a_preset_period_ignores_leftover_dates(staff_client, spread):
    day = timezone.localdate(spread["old"].created_at)
    assert shown(staff_client, period="30d", date_from=day, date_to=day) == {"row-a", "row-b", "row-old"}


def test_the_period_select_shows_the_period_that_applies(staff_client):
    form = staff_client.get("/usage/", {"status": "ok"}).context["filter_form"]
    assert form["period"].value() == "7d"
    form = staff_client.get("/usage/", {"date_from": "2026-01-01"}).context["filter_form"]
    assert form["period"].value() == "custom"


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        (
            {"date_from": "2026-05-02", "date_to": "2026-05-01"},
            "date_to",
            "The end date is before the start date.",
        ),
        ({"date_from": "abc"}, "date_from", "Enter a valid date."),
        ({"date_from": "2026-02-30"}, "date_from", "Enter a valid date."),
        ({"date_from": "1999-12-31"}, "date_from", "Choose a date from 2000-01-01 on."),
        ({"user": "999999"}, "user", "Select a valid choice."),
        ({"period": "fortnight"}, "period", "Select a valid choice."),
    ],
)
def test_an_invalid_filter_says_so_next_to_its_field_shows_nothing_and_exports_nothing(
    staff_client, spread, params, field, message
):
    response = staff_client.get("/usage/", params)
    page = rows_of(response)
    assert shown(staff_client, **params) == set()
    errors = page[page.index(f'id="id_{field}_errors"') :]
    assert errors[: errors.index("</div>")].count(message) == 1
    assert "0 requests" in page and "Nothing is shown: fix the filters marked above." in page
    assert "Download CSV" in page and "/usage/export.csv" not in page
    # An htmx swap of the table brings the field's message along, out of band.
    body = rows_of(staff_client.get("/usage/", params, headers={"HX-Request": "true"}))
    assert f'id="id_{field}_errors" data-errors-for="id_{field}" hx-swap-oob="true"' in body
    export = staff_client.get("/usage/export.csv", params)
    assert export.status_code == 400 and export["Content-Type"].startswith("text/plain")
    assert "Nothing was exported" in export.content.decode() and message in export.content.decode()


def test_a_valid_filter_clears_the_messages_of_an_earlier_invalid_one(staff_client, spread):
    body = rows_of(staff_client.get("/usage/", {"period": "30d"}, headers={"HX-Request": "true"}))
    assert 'id="id_date_to_errors" data-errors-for="id_date_to" hx-swap-oob="true"></div>' in body


def test_the_last_day_of_the_calendar_is_an_open_end_not_a_server_error(staff_client, spread):
    everything = {"row-a", "row-b", "row-old", "row-ancient"}
    assert shown(staff_client, date_to="9999-12-31") == everything
    assert shown(staff_client, date_from="2000-01-01", date_to="9999-12-30") == everything
    assert shown(staff_client, date_from="9999-12-31") == set()
    rows = read_csv(staff_client.get("/usage/export.csv", {"date_to": "9999-12-31"}))
    assert {row["request_id"] for row in rows} == everything


def test_totals_follow_the_filters(staff_client, spread):
    bob = spread["users"][1]
    page = rows_of(staff_client.get("/usage/", {"user": bob.pk}))
    assert "1 request<" in page
    assert '<span data-total="total_cost">$0.00<' in page  # bob's only row was unpriced


def test_an_htmx_request_gets_only_the_table(staff_client, spread):
    response = staff_client.get("/usage/", {"model": "gpt-4o"}, headers={"HX-Request": "true"})
    body = rows_of(response)
    assert body.lstrip().startswith('<div id="table"')
    assert "console-nav" not in body
    assert f'id="usage-{spread["b"].pk}"' in body and f'id="usage-{spread["a"].pk}"' not in body
    # The CSV link carries the filters the table shows.
    assert 'href="/usage/export.csv?model=gpt-4o"' in body


def test_the_request_id_is_shown_in_the_breakdown_not_the_row(staff_client):
    log = UsageLogFactory(request_id="req-abc", input_tokens=12_000, output_tokens=1_000)
    response = staff_client.get(f"/usage/{log.pk}/breakdown", headers={"HX-Request": "true"})
    body = rows_of(response)
    assert body.lstrip().startswith(f'<tr id="usage-breakdown-{log.pk}"')
    assert "12,000 input × $3.00/MTok = $0.036; 1,000 output × $15.00/MTok = $0.015; total $0.051" in body
    assert "req-abc" in body


def test_the_breakdown_of_an_unknown_row_is_404(staff_client):
    assert staff_client.get("/usage/999999/breakdown").status_code == 404


def test_the_page_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    users = UserFactory.create_batch(6)
    groups = GroupFactory.create_batch(3)
    accounts = UpstreamAccountFactory.create_batch(4)
    for index in range(120):
        UsageLogFactory(
            api_key=APIKeyFactory(user=users[index % 6], group=groups[index % 3]),
            group=groups[index % 3],
            account=accounts[index % 4],
        )
    # session, staff user, totals, page rows (user, key, account and group joined),
    # and the four filter selects.
    with django_assert_max_num_queries(8):
        response = staff_client.get("/usage/", {"per_page": 100})
    assert response.status_code == 200 and rows_of(response).count('id="usage-') >= 100
    with django_assert_max_num_queries(4):
        response = staff_client.get("/usage/", {"per_page": 100}, headers={"HX-Request": "true"})
    assert response.status_code == 200


def test_the_page_size_is_capped(staff_client):
    UsageLogFactory.create_batch(3)
    response = staff_client.get("/usage/", {"per_page": 100_000})
    assert response.context["table"].paginator.per_page == 200


def test_the_empty_log_explains_itself(staff_client):
    page = rows_of(staff_client.get("/usage/"))
    assert "No usage matches these filters" in page and "0 requests" in page


# -- CSV ------------------------------------------------------------------------------------------


def read_csv(response) -> list[dict]:
    assert isinstance(response, StreamingHttpResponse)
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_the_csv_holds_the_filtered_set_with_exact_amounts(staff_client, spread):
    response = staff_client.get("/usage/export.csv", {"period": "30d", "user": spread["users"][0].pk})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="usage-')
    rows = read_csv(response)
    assert [row["request_id"] for row in rows] == ["row-a", "row-old"]
    first = rows[0]
    assert first["user_email"] == "alice@example.com" and first["api_key_name"] == "alice-key"
    assert (first["account"], first["group"]) == ("acct-a", "team-a")
    # 1,000 × $3/MTok + 200 × $15/MTok = 0.003 + 0.003
    assert (first["input_cost"], first["output_cost"], first["total_cost"]) == (
        "0.00300000",
        "0.00300000",
        "0.00600000",
    )
    assert first["created_at"] == spread["a"].created_at.isoformat()


def test_the_csv_writes_amounts_in_fixed_point_zero_included(staff_client):
    UsageLogFactory(requested_model="acme", pricing_source="missing", rate_multiplier=D("0.5"))
    row = read_csv(staff_client.get("/usage/export.csv"))[0]
    assert (row["total_cost"], row["actual_cost"], row["input_cost"]) == ("0.00000000",) * 3
    assert row["rate_multiplier"] == "0.500000"
    assert not any("E-" in value or "E+" in value for value in row.values())


def test_the_csv_defuses_spreadsheet_formulas(staff_client):
    UsageLogFactory(requested_model="=HYPERLINK(1)", user_agent="@evil")
    row = read_csv(staff_client.get("/usage/export.csv"))[0]
    assert (row["requested_model"], row["user_agent"]) == ("'=HYPERLINK(1)", "'@evil")


def test_the_csv_streams_in_chunks_with_a_fixed_number_of_queries(
    staff_client, django_assert_max_num_queries
):
    key = APIKeyFactory()
    UsageLogFactory.create_batch(1_200, api_key=key)
    with django_assert_max_num_queries(3):
        response = staff_client.get("/usage/export.csv")
        chunks = list(response.streaming_content)
    # Header + 1,200 rows in batches of 500 lines: nothing waits for the whole set.
    assert len(chunks) >= 3
    assert sum(chunk.count(b"\n") for chunk in chunks) == 1_201


def test_the_model_suggestions_list_every_name_seen_recently(staff_client):
    from billing.cost import Usage
    from billing.services import usage_record

    key = APIKeyFactory(group=GroupFactory())
    usage_record(
        request_id="r1",
        api_key_id=key.pk,
        account_id=None,
        requested_model="sonnet",
        mapped_model="claude-sonnet-4-5",
        upstream_model="claude-sonnet-4-5-20250929",
        usage=Usage(input_tokens=10),
    )
    usage_record(
        request_id="old",
        api_key_id=key.pk,
        account_id=None,
        requested_model="gpt-3.5-turbo",
        usage=Usage(input_tokens=10),
        created_at=timezone.now() - timedelta(days=40),
    )
    body = rows_of(staff_client.get("/usage/models", headers={"HX-Request": "true"}))
    assert body.count("<option") == 3
    for name in ("sonnet", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929"):
        assert f'<option value="{name}">' in body
    assert "gpt-3.5-turbo" not in body
