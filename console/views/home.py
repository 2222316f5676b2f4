"""The console's home: the dashboard, and a user's usage breakdown reached from it."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, render

from accounts.models import User
from accounts.roles import requires
from billing.views import csv_lines
from common.htmx import render_page
from console.breakdown import BREAKDOWN_CSV_HEADER, breakdown_csv_rows, user_breakdown, valid_sort
from console.dashboard import (
    MODEL_SOURCE_CHOICES,
    PERIODS,
    InvalidChoice,
    dashboard_charts,
    dashboard_warnings,
    valid_model_source,
    valid_period,
)


@requires("viewer")
def dashboard(request: HttpRequest) -> HttpResponse:
    """KPIs, warnings, and the period's charts and top lists (docs/console.md#dashboard).

    The period switcher swaps the charts section, the model-source toggle only the model card.
    An unknown period or model source is answered 400, never silently replaced.
    """
    try:
        period = valid_period(request.GET.get("period"))
        source = valid_model_source(request.GET.get("models"))
    except InvalidChoice as error:
        return HttpResponseBadRequest(f"{error}.", content_type="text/plain; charset=utf-8")
    context = dashboard_charts(period=period, source=source)
    partial = "top_models" if request.htmx and request.htmx.target == "top-models" else "charts"
    if not request.htmx or request.htmx.history_restore_request:
        context |= dashboard_warnings(usage=context["usage"])
    return render_page(request, "console/dashboard.html", context, partial=partial)


@requires("viewer")
def user_usage(request: HttpRequest, pk: int) -> HttpResponse:
    """One user's usage by group, model and key, sortable, as a page or CSV (?format=csv)."""
    subject = get_object_or_404(User.objects.only("id", "email", "status"), pk=pk)
    try:
        period = valid_period(request.GET.get("period") or "30d")
        source = valid_model_source(request.GET.get("models"))
        sort = valid_sort(request.GET.get("sort"))
    except InvalidChoice as error:
        return HttpResponseBadRequest(f"{error}.", content_type="text/plain; charset=utf-8")
    breakdown = user_breakdown(user_id=subject.pk, period=period, source=source, sort=sort)
    if request.GET.get("format") == "csv":
        response = HttpResponse(
            "".join(csv_lines(breakdown_csv_rows(breakdown), header=BREAKDOWN_CSV_HEADER)),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="usage-user-{subject.pk}-{period}.csv"'
        return response
    context = {
        "subject": subject,
        "breakdown": breakdown,
        "period": period,
        "period_label": PERIODS[period],
        "period_choices": list(PERIODS.items()),
        "model_source": source,
        "model_source_choices": MODEL_SOURCE_CHOICES,
        "sort": sort,
        "sort_columns": [
            ("name", "Name"),
            ("requests", "Requests"),
            ("tokens", "Tokens"),
            ("charged", "Charged"),
            ("account_cost", "Account cost"),
        ],
        "tables": [
            ("group", "By group", breakdown.groups),
            ("model", "By model", breakdown.models),
            ("key", "By API key", breakdown.keys),
        ],
    }
    return render(request, "console/user_usage.html", context)
