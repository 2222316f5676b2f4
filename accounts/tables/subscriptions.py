from __future__ import annotations

import django_tables2 as tables
from django.template.loader import get_template
from django.urls import reverse

from accounts.models import Subscription
from accounts.tables.keys import PartialColumn
from common.tables import ACTIONS, clipped

CELLS = "accounts/subscription_cells.html"


class WindowColumn(PartialColumn):
    """One usage window of the row as a progress bar (expired windows read 0)."""

    def __init__(self, kind: str, **kwargs) -> None:
        self.kind = kind
        kwargs.setdefault("attrs", {"td": {"class": "sub-window-cell"}})
        super().__init__(f"{CELLS}#window", **kwargs)

    def render(self, record):
        window = next(w for w in record.usage_windows if w.kind == self.kind)
        return get_template(self.partial).render({"record": record, "window": window})


class SubscriptionTable(tables.Table):
    user = tables.Column(verbose_name="User", accessor="user__email", order_by="user__email")
    group = tables.Column(verbose_name="Group", accessor="group__name", order_by="group__name")
    status = PartialColumn(f"{CELLS}#status", verbose_name="Status", orderable=True, order_by="status")
    expires_at = PartialColumn(
        f"{CELLS}#expires", verbose_name="Expires", orderable=True, order_by="expires_at"
    )
    daily = WindowColumn("daily", verbose_name="Daily")
    weekly = WindowColumn("weekly", verbose_name="Weekly")
    monthly = WindowColumn("monthly", verbose_name="Monthly")
    actions = PartialColumn(f"{CELLS}#actions", verbose_name="", attrs=ACTIONS)

    class Meta:
        model = Subscription
        fields = ()
        sequence = ("user", "group", "status", "expires_at", "daily", "weekly", "monthly", "actions")
        empty_text = "No subscriptions match these filters"
        attrs = {"class": "table table-hover align-middle mb-0", "id": "subscription-table"}

    def render_user(self, record):
        return clipped(record.user.email, url=reverse("accounts:subscription-detail", args=[record.pk]))

    def render_group(self, record):
        return clipped(record.group.name)
