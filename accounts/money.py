"""Money helpers shared by every app (docs/money.md).

Amounts are USD Decimals with 8 places; prices are stored per token and
shown per million tokens. Conversions happen only at form and page
boundaries, through these functions.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

USD_PLACES = Decimal("0.00000001")
# Wide enough that tokens × a 12+-decimal price × a multiplier is exact before quantising;
# the default context (28 digits) could silently round a large request.
PRECISION = 60
MILLION = Decimal(1_000_000)


def quantize_usd(amount: Decimal) -> Decimal:
    """Round to 8 places, half away from zero (ROUND_HALF_UP does that for Decimal)."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return Decimal(amount).quantize(USD_PLACES, rounding=ROUND_HALF_UP)


def per_token_to_per_mtok(price: Decimal | None) -> Decimal | None:
    return None if price is None else (price * MILLION).normalize()


def per_mtok_to_per_token(price: Decimal | None) -> Decimal | None:
    return None if price is None else price / MILLION


def format_usd(amount: Decimal | None, places: int = 2) -> str:
    """$1,234.56 — with more places when a small amount would otherwise show as $0.00."""
    if amount is None:
        return "—"
    amount = Decimal(amount)
    shown = places
    while shown < 8 and amount != 0 and abs(amount) < Decimal(1).scaleb(-shown):
        shown += 2
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{shown}f}"
