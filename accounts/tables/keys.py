from __future__ import annotations

import django_tables2 as tables
from django.template.loader import get_template
from django.urls import reverse

from accounts.models import APIKey
from common.tables import ACTIONS


class PartialColumn(tables.Column):
    """A cell rendered from a {% partialdef %} with the row as `record`.

    The same partials re-render alone after a row action (see key_cells), so a badge looks the
    same whether it came with the page or was swapped in later.
    """

    empty_values = ()

    def __init__(self, partial: str, **kwargs) -> None:
        self.partial = partial
        kwargs.setdefault("orderable", False)
        super().__init__(**kwargs)

    def render(self, record, table):
        # The request rides along so a cell can ask what the viewer may do (`may`).
        return get_template(self.partial).render({"record": record, "request": table.request})


CELLS = "accounts/key_cells.html"


class APIKeyTable(tables.Table):
    name = PartialColumn(f"{CELLS}#name", verbose_name="Name", orderable=True, order_by="name")
    user = PartialColumn(
        f"{CELLS}#owner", verbose_name="User / group", orderable=True, order_by="user__email"
    )
    status = PartialColumn(f"{CELLS}#status", verbose_name="Status", orderable=True, order_by="status")
    quota = PartialColumn(f"{CELLS}#quota", verbose_name="Quota", orderable=True, order_by="quota_used_usd")
    windows = PartialColumn(f"{CELLS}#windows", verbose_name="5h / 1d / 7d")
    expires_at = PartialColumn(
        f"{CELLS}#expires", verbose_name="Expires", orderable=True, order_by="expires_at"
    )
    last_used_at = PartialColumn(
        f"{CELLS}#last_used", verbose_name="Last used", orderable=True, order_by="last_used_at"
    )
    actions = PartialColumn(f"{CELLS}#actions", verbose_name="", attrs=ACTIONS)

    class Meta:
        model = APIKey
        fields = ()
        sequence = ("name", "user", "status", "quota", "windows", "expires_at", "last_used_at", "actions")
        empty_text = "No API keys match these filters"
        attrs = {"class": "table table-hover align-middle mb-0", "id": "key-table"}
        # After a row action the row fetches its own cells back (out-of-band swaps), nothing else.
        row_attrs = {
            "id": lambda record: f"key-row-{record.pk}",
            "hx-get": lambda record: reverse("accounts:key-cells", args=[record.pk]),
            "hx-trigger": lambda record: f"key-{record.pk}-changed from:body",
            "hx-swap": "none",
            "hx-push-url": "false",
        }
