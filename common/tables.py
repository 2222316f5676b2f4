"""Columns shared by console tables."""

from __future__ import annotations

import django_tables2 as tables
from django.utils import timezone
from django.utils.html import format_html

from common.money import format_usd

# The last column of a list with row actions stays in view while the rest scrolls sideways.
ACTIONS = {"td": {"class": "col-actions text-end text-nowrap"}, "th": {"class": "col-actions"}}


def clipped(text, *, url: str = "", css: str = "") -> str:
    """A name on one line, cut with an ellipsis past a width; the full text on hover.

    One 100-character name must not push every row's money and actions off the screen.
    """
    classes = f"cell-name {css}".strip()
    if url:
        return format_html('<a href="{}" class="{}" title="{}">{}</a>', url, classes, text, text)
    return format_html('<span class="{}" title="{}">{}</span>', classes, text, text)


class LocalTimeColumn(tables.Column):
    """A time in the console's zone, named: "2026-11-25 14:05 UTC", broken only between date and time."""

    def render(self, value):
        local = timezone.localtime(value)
        return format_html(
            '<time datetime="{}"><span class="text-nowrap">{}</span> <span class="text-nowrap">{}</span></time>',
            value.isoformat(),
            local.strftime("%Y-%m-%d"),
            local.strftime("%H:%M %Z"),
        )


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
