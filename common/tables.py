"""Columns shared by console tables."""

from __future__ import annotations

import django_tables2 as tables
from django.utils.html import format_html

from common.money import format_usd


class MoneyColumn(tables.Column):
    def __init__(self, *args, places: int = 2, **kwargs) -> None:
        self.places = places
        kwargs.setdefault("attrs", {"td": {"class": "money num"}, "th": {"class": "num"}})
        super().__init__(*args, **kwargs)

    def render(self, value):
        return format_usd(value, self.places)


class StatusColumn(tables.Column):
    def render(self, value, record, bound_column):
        # django-tables2 hands choice fields over as their label; the CSS class
        # needs the stored value.
        accessor = bound_column.accessor or bound_column.name
        raw = tables.A(accessor).resolve(record)
        return format_html('<span class="badge badge-status-{}">{}</span>', raw, value)
