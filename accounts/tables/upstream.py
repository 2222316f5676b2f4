from __future__ import annotations

import django_tables2 as tables
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.models import UpstreamAccount
from accounts.selectors.upstream import upstream_account_quota_badge
from common.tables import ACTIONS, LocalTimeColumn, clipped

NUM = {"td": {"class": "num"}, "th": {"class": "num"}}


class UpstreamAccountTable(tables.Table):
    name = tables.Column(verbose_name="Account")
    platform = tables.Column(verbose_name="Platform / type")
    groups = tables.Column(verbose_name="Groups", empty_values=(), orderable=False)
    priority = tables.Column(verbose_name="Priority", attrs=NUM)
    status = tables.Column()
    quota = tables.Column(verbose_name="Quota", empty_values=(), orderable=False)
    last_used_at = LocalTimeColumn(verbose_name="Last used", default="never")
    actions = tables.Column(verbose_name="", empty_values=(), orderable=False, attrs=ACTIONS)

    class Meta:
        model = UpstreamAccount
        fields = (
            "name",
            "platform",
            "groups",
            "priority",
            "status",
            "quota",
            "last_used_at",
            "actions",
        )
        order_by = ("priority",)
        empty_text = "No accounts match these filters"
        attrs = {"class": "table table-hover align-middle mb-0", "id": "account-table"}
        row_attrs = {"data-account-id": lambda record: record.pk}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.now = timezone.now()

    def render_name(self, record):
        return clipped(record.name, url=reverse("accounts:account-edit", args=[record.pk]))

    def render_priority(self, record):
        return format_html(
            '{}<div class="small text-body-secondary" title="Requests in flight at once">{} at once</div>',
            record.priority,
            record.concurrency,
        )

    def render_platform(self, record):
        return format_html(
            '<span class="badge platform-badge platform-{}">{}</span><div class="small text-body-secondary">{}</div>',
            "aws" if record.is_bedrock else record.platform,
            record.platform_badge,
            record.get_type_display(),
        )

    def render_groups(self, record):
        names = [(m.group.name,) for m in record.memberships.all()]
        if not names:
            return format_html('<span class="text-body-tertiary">{}</span>', "none")
        return format_html_join(
            " ", '<span class="badge text-bg-light border cell-name" title="{0}">{0}</span>', names
        )

    def render_status(self, record):
        # The schedulable switch sits under the status: one column fewer keeps Quota in view.
        context = {"account": record, "request": self.request, "labelled": True}
        return render_to_string("accounts/account_status.html", context) + render_to_string(
            "accounts/account_schedulable.html", context
        )

    def render_quota(self, record):
        badge = upstream_account_quota_badge(record, now=self.now)
        return render_to_string("accounts/account_quota_badge.html", {"account": record, "badge": badge})

    def render_actions(self, record):
        return render_to_string(
            "accounts/account_row_actions.html", {"account": record, "request": self.request}
        )
