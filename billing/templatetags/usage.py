"""Filters for the usage pages."""

from __future__ import annotations

from decimal import Decimal

from django import template

from common.money import format_usd_exact

register = template.Library()


@register.filter
def usd_exact(value: Decimal | None) -> str:
    """Every significant digit of a ledger amount ($0.0765, $1,234.5): what was billed, unrounded."""
    return format_usd_exact(value)


@register.filter
def usd_change(value: Decimal | None) -> str:
    """A difference with its sign, every digit kept: +$0.003, −$1.25, $0."""
    if value is None or value == 0:
        return format_usd_exact(value if value is None else Decimal(0))
    sign = "+" if value > 0 else "−"
    return sign + format_usd_exact(abs(value))
