from __future__ import annotations

import django_tables2 as tables
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from accounts.models import User
from common.tables import LocalTimeColumn, MoneyColumn, StatusColumn, clipped


class UserTable(tables.Table):
    email = tables.Column(verbose_name="Email")
    username = tables.Column(verbose_name="Name")
    role = tables.Column()
    status = StatusColumn()
    balance = MoneyColumn(verbose_name="Balance")
    concurrency = tables.Column(
        verbose_name="Concurrency", attrs={"td": {"class": "num"}, "th": {"class": "num"}}
    )
    api_key_count = tables.Column(verbose_name="Keys", attrs={"td": {"class": "num"}, "th": {"class": "num"}})
    last_active_at = LocalTimeColumn(verbose_name="Last active", default="never")
    created_at = tables.DateTimeColumn(
        verbose_name="Created", format="Y-m-d", attrs={"td": {"class": "text-nowrap"}}
    )

    class Meta:
        model = User
        fields = (
            "email",
            "username",
            "role",
            "status",
            "balance",
            "concurrency",
            "api_key_count",
            "last_active_at",
            "created_at",
        )
        order_by = ("-created_at",)
        empty_text = "No users match these filters"
        attrs = {"class": "table table-hover align-middle mb-0", "id": "user-table"}

    def render_email(self, record):
        return clipped(record.email, url=reverse("accounts:user-detail", args=[record.pk]))

    def render_username(self, value):
        return clipped(value)

    def render_role(self, value, record):
        staff = mark_safe(' <span class="badge text-bg-dark">staff</span>') if record.is_staff else ""  # noqa: S308
        return format_html("{}{}", record.get_role_display(), staff)
