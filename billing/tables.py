from __future__ import annotations

import django_tables2 as tables
from django.contrib.humanize.templatetags.humanize import intcomma
from django.core.paginator import Paginator
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from billing.models import UsageLog
from billing.selectors import UsageTotals
from common.money import format_multiplier, format_usd_exact
from common.tables import ACTIONS, clipped

NUM = {"td": {"class": "num"}, "th": {"class": "num"}, "tf": {"class": "num"}}
MONEY = {"td": {"class": "money num"}, "th": {"class": "num"}, "tf": {"class": "money num"}}
MAX_PER_PAGE = 200
STREAM_ICON = mark_safe(' <i class="bi bi-broadcast" title="Streamed" aria-label="streamed"></i>')  # noqa: S308


class CountedPaginator(Paginator):
    """A paginator told the row count, which the totals query has already computed."""

    def __init__(self, object_list, per_page, *args, count: int, **kwargs) -> None:
        super().__init__(object_list, min(int(per_page), MAX_PER_PAGE), *args, **kwargs)
        self._known_count = count

    @property
    def count(self) -> int:
        return self._known_count


class TokenColumn(tables.Column):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("attrs", NUM)
        kwargs.setdefault("orderable", False)
        super().__init__(*args, **kwargs)

    def render(self, value):
        return intcomma(value) if value else "·"


class UsageTable(tables.Table):
    created_at = tables.Column(
        verbose_name="Time", order_by=("created_at", "id"), attrs={"td": {"class": "text-nowrap small"}}
    )
    user = tables.Column(verbose_name="User / key", accessor="user__email", orderable=False)
    account = tables.Column(verbose_name="Account / group", accessor="account__name", orderable=False)
    requested_model = tables.Column(verbose_name="Model", orderable=False)
    input_tokens = TokenColumn(verbose_name="Input")
    output_tokens = TokenColumn(verbose_name="Output")
    cache_creation = TokenColumn(verbose_name="Cache write", accessor="cache_creation_tokens")
    cache_read_tokens = TokenColumn(verbose_name="Cache read")
    actual_cost = tables.Column(verbose_name="Charged", order_by=("actual_cost", "id"), attrs=MONEY)
    status_code = tables.Column(
        verbose_name="Status", orderable=False, attrs={"td": {"class": "text-nowrap"}}
    )
    details = tables.Column(verbose_name="", accessor="pk", orderable=False, attrs=ACTIONS)

    class Meta:
        model = UsageLog
        fields = ()
        sequence = (
            "created_at",
            "user",
            "account",
            "requested_model",
            "input_tokens",
            "output_tokens",
            "cache_creation",
            "cache_read_tokens",
            "actual_cost",
            "status_code",
            "details",
        )
        order_by = ("-created_at",)
        empty_text = "No usage matches these filters"
        template_name = "billing/usage_table.html"
        attrs = {"class": "table table-hover table-sm align-middle mb-0 usage-table", "id": "usage-table"}
        row_attrs = {"id": lambda record: f"usage-{record.pk}"}

    def __init__(self, *args, totals: UsageTotals, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.totals = totals

    def render_created_at(self, value):
        local = timezone.localtime(value)
        return format_html(
            '<time datetime="{}">{}<div class="text-body-secondary">{}</div></time>',
            value.isoformat(),
            local.strftime("%Y-%m-%d"),
            local.strftime("%H:%M:%S"),
        )

    def render_user(self, record: UsageLog):
        key = record.api_key
        key_text = f"{key.name} …{key.key_last4}" if key else "deleted key"
        return format_html(
            '{}<div class="small text-body-secondary">{}</div>',
            clipped(record.user.email, url=reverse("accounts:user-detail", args=[record.user_id])),
            clipped(key_text),
        )

    def render_account(self, record: UsageLog):
        account = record.account.name if record.account else "—"
        group = record.group.name if record.group else "no group"
        return format_html(
            '{}<div class="small text-body-secondary">{}</div>', clipped(account), clipped(group)
        )

    def render_requested_model(self, record: UsageLog):
        upstream = ""
        if record.upstream_model and record.upstream_model != record.requested_model:
            upstream = format_html('<div class="small text-body-secondary">→ {}</div>', record.upstream_model)
        source = ""
        if record.pricing_source != "channel":
            source = format_html(
                ' <span class="badge badge-pricing-{}" title="Price from: {}">{}</span>',
                record.pricing_source,
                record.get_pricing_source_display(),
                "unpriced" if record.pricing_source == "missing" else record.pricing_source,
            )
        return format_html('<span class="model-name">{}</span>{}{}', record.requested_model, source, upstream)

    def render_actual_cost(self, value, record: UsageLog):
        if record.rate_multiplier == 1:
            return format_usd_exact(value)
        return format_html(
            '{}<div class="small text-body-secondary" title="Cost × rate multiplier">{} × {}</div>',
            format_usd_exact(value),
            format_usd_exact(record.total_cost),
            format_multiplier(record.rate_multiplier),
        )

    def render_status_code(self, value, record: UsageLog):
        level = "error" if value >= 400 else "active"
        stream = STREAM_ICON if record.stream else ""
        timing = _seconds(record.duration_ms)
        if record.first_token_ms is not None:
            timing = f"{_seconds(record.first_token_ms)} / {timing}"
        return format_html(
            '<span class="badge badge-status-{}">{}</span>{}<div class="small text-body-secondary" title="{}">{}</div>',
            level,
            value,
            stream,
            "First token / total duration" if record.first_token_ms is not None else "Duration",
            timing,
        )

    def render_details(self, value):
        return format_html(
            '<button type="button" class="btn btn-sm btn-outline-secondary" hx-get="{}" hx-target="closest tr" '
            'hx-swap="afterend" hx-trigger="click once" data-expand-row="usage-breakdown-{}" aria-expanded="false" '
            'aria-controls="usage-breakdown-{}" aria-label="Cost breakdown" title="Cost breakdown">'
            '<i class="bi bi-chevron-down" aria-hidden="true"></i></button>',
            reverse("billing:usage-breakdown", args=[value]),
            value,
            value,
        )


def _seconds(ms: int) -> str:
    return f"{ms / 1000:,.2f} s" if ms >= 1000 else f"{ms} ms"


class ReconcileRunTable(tables.Table):
    created_at = tables.Column(verbose_name="Started", attrs={"td": {"class": "text-nowrap small"}})
    batch_id = tables.Column(verbose_name="Batch", orderable=False)
    host_id = tables.Column(verbose_name="Host", orderable=False)
    scope = tables.Column(verbose_name="Scope / mode", orderable=False)
    status = tables.Column(verbose_name="Status", orderable=False)
    checked = tables.Column(verbose_name="Checked", attrs=NUM, orderable=False)
    drifted = tables.Column(verbose_name="Drifted", attrs=NUM, orderable=False)
    fixed = tables.Column(verbose_name="Fixed", attrs=NUM, orderable=False)
    started_by_label = tables.Column(verbose_name="By", orderable=False)

    class Meta:
        fields = ()
        sequence = (
            "created_at",
            "batch_id",
            "host_id",
            "scope",
            "status",
            "checked",
            "drifted",
            "fixed",
            "started_by_label",
        )
        order_by = ("-created_at",)
        empty_text = "No reconcile run matches these filters"
        attrs = {"class": "table table-hover table-sm align-middle mb-0", "id": "reconcile-runs"}
        row_attrs = {"id": lambda record: f"run-{record.pk}"}

    def render_created_at(self, value):
        return format_html(
            '<time datetime="{}">{}</time>',
            value.isoformat(),
            timezone.localtime(value).strftime("%Y-%m-%d %H:%M"),
        )

    def render_batch_id(self, value):
        return format_html(
            '<a href="{}" class="font-monospace">{}</a>', reverse("reconcile:batch", args=[value]), value
        )

    def render_scope(self, record):
        return format_html(
            '{}<div class="small text-body-secondary">{}</div>',
            record.get_scope_display(),
            record.get_mode_display(),
        )

    def render_status(self, record):
        level = {"succeeded": "active", "failed": "error", "running": "suspended", "queued": "suspended"}[
            record.status
        ]
        return format_html(
            '<span class="badge badge-status-{}">{}</span>', level, record.get_status_display()
        )

    def render_checked(self, record):
        return f"{intcomma(record.checked)} / {intcomma(record.total)}"

    def render_drifted(self, value):
        return (
            format_html('<span class="text-danger fw-semibold">{}</span>', intcomma(value)) if value else "0"
        )
