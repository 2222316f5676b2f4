"""Template filters for money and status, shared by every console page."""

from __future__ import annotations

from decimal import Decimal

from django import template
from django.utils.html import format_html

from common.money import format_per_mtok, format_usd

register = template.Library()


@register.filter
def usd(value: Decimal | None, places: int = 2) -> str:
    return format_usd(value, int(places))


@register.filter
def per_mtok(price_per_token: Decimal | None) -> str:
    """A per-token price shown as $/MTok."""
    return format_per_mtok(price_per_token)


@register.simple_tag
def status_badge(value: str, label: str | None = None) -> str:
    return format_html(
        '<span class="badge badge-status-{}">{}</span>', value, label or value.replace("_", " ")
    )


@register.simple_tag
def active_filters(form) -> int:
    """How many filters other than the search box are set, for the folded filter button."""
    if not form.is_bound:
        return 0
    return sum(
        1
        for field in form
        if field.field.widget.input_type != "search" and form.data.get(field.html_name) not in (None, "")
    )
