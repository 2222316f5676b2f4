from __future__ import annotations

import django_tables2 as tables
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html

from accounts.models import Group
from common.tables import clipped

NUM = {"td": {"class": "num"}, "th": {"class": "num"}}


class GroupTable(tables.Table):
    """Groups in their sort order. Not sortable by column: the order is the one operators drag."""

    handle = tables.Column(
        verbose_name="Order",
        empty_values=(),
        orderable=False,
        attrs={"td": {"class": "drag-cell text-nowrap"}},
    )
    name = tables.Column()
    platform = tables.Column()
    subscription_type = tables.Column(verbose_name="Billing")
    rate_multiplier = tables.Column(verbose_name="Rate", attrs=NUM)
    status = tables.Column()
    is_exclusive = tables.BooleanColumn(verbose_name="Exclusive", yesno="Exclusive,—")
    account_count = tables.Column(verbose_name="Accounts", attrs=NUM)
    key_count = tables.Column(verbose_name="Keys", attrs=NUM)

    class Meta:
        model = Group
        fields = (
            "handle",
            "name",
            "platform",
            "subscription_type",
            "rate_multiplier",
            "status",
            "is_exclusive",
            "account_count",
            "key_count",
        )
        orderable = False
        empty_text = "No groups yet"
        attrs = {
            "class": "table table-hover align-middle mb-0",
            "id": "group-table",
            "tbody": {"data-sortable": "true"},
        }
        row_attrs = {"data-group-id": lambda record: record.pk}

    def __init__(self, groups: list[Group], **kwargs) -> None:
        super().__init__(groups, **kwargs)
        self.edge_ids = (groups[0].pk, groups[-1].pk) if groups else (None, None)

    def render_handle(self, record):
        # The hidden input carries the row's id: the order of these inputs is the order posted.
        # The arrows sit next to the drag handle so they stay on screen on a phone.
        first, last = self.edge_ids
        return render_to_string(
            "accounts/group_move_buttons.html",
            {"group": record, "first": record.pk == first, "last": record.pk == last},
        )

    def render_name(self, record):
        return clipped(record.name, url=reverse("accounts:group-detail", args=[record.pk]))

    def render_status(self, record):
        # tables2 hands choice columns their display label; the CSS class needs the stored value.
        return format_html(
            '<span class="badge badge-status-{}">{}</span>', record.status, record.get_status_display()
        )

    def render_subscription_type(self, record):
        return "Subscription" if record.is_subscription else "Standard"

    def render_rate_multiplier(self, value):
        return f"×{value.normalize():f}"
