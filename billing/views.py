"""The usage log: list with filters and totals, a row's cost breakdown, CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from decimal import Decimal

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_tables2 import RequestConfig

from accounts.roles import requires
from billing.forms import UsageFilterForm
from billing.models import UsageLog
from billing.selectors import (
    CSV_COLUMNS,
    UsageFilters,
    UsageTotals,
    channel_price_preview,
    usage_csv_rows,
    usage_logs,
    usage_models_seen,
    usage_page_rows,
    usage_totals,
)
from billing.tables import CountedPaginator, UsageTable
from channels.forms import ChannelEditor
from channels.models import Channel
from channels.selectors import channel_for_edit
from channels.snapshots import channel_cards_of_specs
from common.htmx import render_page

PER_PAGE = 50
INVALID_FILTERS = "Nothing is shown: fix the filters marked above."
CSV_CHUNK_ROWS = 2000


@requires("viewer")
def usage_list(request: HttpRequest) -> HttpResponse:
    form = UsageFilterForm(request.GET or None)
    filters = form.filters()
    if filters is None:
        logs, totals, label = UsageLog.objects.none(), UsageTotals(), INVALID_FILTERS
    else:
        logs, totals, label = usage_logs(filters=filters), usage_totals(filters=filters), range_label(filters)
    table = UsageTable(usage_page_rows(logs), totals=totals)
    if filters is None:
        table.empty_text = "The filters above need fixing"
    paginate = {"per_page": PER_PAGE, "paginator_class": CountedPaginator, "count": totals.requests}
    RequestConfig(request, paginate=paginate).configure(table)
    context = {
        "table": table,
        "filter_form": form,
        "range_label": label,
        "filters_valid": filters is not None,
    }
    return render_page(request, "billing/usage_list.html", context)


@requires("viewer")
def usage_models(request: HttpRequest) -> HttpResponse:
    """The model filter's suggestions, fetched when the field is first focused."""
    return render(request, "billing/usage_list.html#model-options", {"models_seen": usage_models_seen()})


@requires("viewer")
def usage_breakdown(request: HttpRequest, pk: int) -> HttpResponse:
    log = get_object_or_404(UsageLog.objects.select_related("user", "channel"), pk=pk)
    return render(request, "billing/usage_breakdown.html", {"log": log, "sentence": log.explain()})


@requires("viewer")
def usage_export(request: HttpRequest) -> HttpResponse:
    """The filtered set as CSV, streamed a chunk of rows at a time (a million rows fit)."""
    form = UsageFilterForm(request.GET or None)
    filters = form.filters()
    if filters is None:
        return HttpResponse(
            f"Nothing was exported: {form.error_summary()}\n",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    logs = usage_logs(filters=filters)
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(
        csv_lines(usage_csv_rows(logs, chunk_size=CSV_CHUNK_ROWS)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="usage-{stamp}.csv"'
    return response


def csv_lines(rows: Iterable[tuple], *, batch: int = 500, header: list[str] | None = None) -> Iterator[str]:
    """Header (the usage log's unless given), then rows, yielded in batches so a big export is not
    one write per row. Cells follow one rule: fixed-point decimals, ISO times, no formulas."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header or [name for name, _ in CSV_COLUMNS])
    for count, row in enumerate(rows, start=1):
        writer.writerow([_cell(value) for value in row])
        if count % batch == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")  # fixed-point always: a stored zero is 0.00000000, never 0E-8
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        # Client-supplied text (user agents, model names) must not run as a spreadsheet formula.
        return "'" + value
    return value


def range_label(filters: UsageFilters) -> str:
    fmt = "%Y-%m-%d %H:%M"
    tz = timezone.get_current_timezone_name()
    if filters.start and filters.end:
        return f"From {timezone.localtime(filters.start):{fmt}} to {timezone.localtime(filters.end):{fmt}} ({tz})"
    if filters.start:
        return f"Since {timezone.localtime(filters.start):{fmt}} ({tz})"
    if filters.end:
        return f"Before {timezone.localtime(filters.end):{fmt}} ({tz})"
    return "All time"


@requires("admin")
@require_POST
def price_preview(request: HttpRequest, channel_pk: int | None = None) -> HttpResponse:
    """The channel form as typed, not saved: the last 30 days of its groups' usage re-priced under
    its cards (docs/pricing.md#price-preview). Invalid input gets the errors saving would give."""
    channel = None
    if channel_pk is not None:
        try:
            channel = channel_for_edit(pk=channel_pk)
        except Channel.DoesNotExist as error:
            raise Http404("No such channel.") from error
    editor = ChannelEditor(request.POST, channel=channel)
    if not editor.is_valid():
        return render(request, "billing/price_preview.html", {"problems": editor.problems()})
    groups = list(editor.form.cleaned_data["groups"])
    preview = channel_price_preview(
        group_ids=[group.pk for group in groups], cards=channel_cards_of_specs(editor.card_specs())
    )
    return render(request, "billing/price_preview.html", {"preview": preview, "groups": groups})
