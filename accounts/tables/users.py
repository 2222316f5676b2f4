from __future__ import annotations

import django_tables2 as tables
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import User
from accounts.roles import ConsoleRole
from common.tables import LocalTimeColumn, MoneyColumn, StatusColumn, clipped


class UserTable(tables.Table):
    email = tables.Column(verbose_name="Email")
    username = tables.Column(verbose_name="Name")
    console_access = tables.Column(verbose_name="Console", empty_values=(), orderable=False)
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
            "console_access",
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

    def render_console_access(self, record):
        access = record.console_access
        if not access:
            return format_html('<span class="text-body-tertiary" title="{}">{}</span>', "A customer", "—")
        role = ConsoleRole(access)
        title = "Superuser: always an admin" if record.is_superuser else f"Staff: {role.label.lower()}"
        return format_html(
            '<span class="badge role-badge role-{}" title="{}">{}</span>', role, title, role.label
        )
