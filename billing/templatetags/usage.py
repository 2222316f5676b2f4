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
