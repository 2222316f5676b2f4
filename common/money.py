"""Money helpers shared by every app (docs/money.md).

Amounts are USD Decimals with 8 places; prices are stored per token and
shown per million tokens. Conversions happen only at form and page
boundaries, through these functions.

Every way money is printed is one named format here (docs/money.md#showing-money):

- `format_usd`: lists, badges, dashboards and messages: 2 decimals, more for a tiny amount;
- `format_usd_exact`: the cost breakdown and the ledger: every significant digit;
- `format_per_mtok`: a price in $/MTok as lists show it, up to 4 decimals, zeros dropped;
- `format_per_mtok_exact`: a price in $/MTok with every significant digit (the breakdown);
- `format_multiplier`: a multiplier with every significant digit, at least one decimal.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

USD_PLACES = Decimal("0.00000001")
# Wide enough that tokens × a 12+-decimal price × a multiplier is exact before quantising;
# the default context (28 digits) could silently round a large request.
PRECISION = 60
MILLION = Decimal(1_000_000)


# quantize_usd's context, made once: a `localcontext()` per call was a few percent of the
# gateway's CPU. Only its flags change (Inexact, Rounded), which nothing reads; its traps are the
# default context's.
_USD_CONTEXT = Context(prec=PRECISION, rounding=ROUND_HALF_UP)


def quantize_usd(amount: Decimal) -> Decimal:
    """Round to 8 places, half away from zero (ROUND_HALF_UP does that for Decimal)."""
    return Decimal(amount).quantize(USD_PLACES, context=_USD_CONTEXT)


def per_token_to_per_mtok(price: Decimal | None) -> Decimal | None:
    return None if price is None else (price * MILLION).normalize()


def per_mtok_to_per_token(price: Decimal | None) -> Decimal | None:
    return None if price is None else price / MILLION


MISSING = "—"


def format_usd(amount: Decimal | None, places: int = 2) -> str:
    """$1,234.56 — with more places when a small amount would otherwise show as $0.00."""
    if amount is None:
        return MISSING
    amount = Decimal(amount)
    shown = places
    while shown < 8 and amount != 0 and abs(amount) < Decimal(1).scaleb(-shown):
        shown += 2
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{shown}f}"


def format_usd_exact(amount: Decimal | None) -> str:
    """$0.036, $1,234.50: every significant digit kept, so a breakdown adds up by hand."""
    return MISSING if amount is None else f"${_plain(Decimal(amount), 2)}"


def format_per_mtok(price_per_token: Decimal | None) -> str:
    """A per-token price as lists show it: $3/MTok, $0.3/MTok, $3.75/MTok (4 decimals at most)."""
    price = per_token_to_per_mtok(price_per_token)
    return MISSING if price is None else f"${price:,.4f}".rstrip("0").rstrip(".") + "/MTok"


def format_per_mtok_exact(price_per_token: Decimal) -> str:
    """A per-token price with every significant digit, as operators read it: $3.00/MTok."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        return f"${_plain(price_per_token * MILLION, 2)}/MTok"


def format_multiplier(multiplier: Decimal) -> str:
    """1.5, 1.0, 0.125: every significant digit, at least one decimal."""
    return _plain(multiplier, 1)


def _plain(amount: Decimal, min_places: int) -> str:
    # normalize() drops trailing zeros; format "f" keeps 1E+1 from leaking into the page.
    text = format(amount.normalize(), "f")
    whole, _, frac = text.partition(".")
    frac = frac.ljust(min_places, "0")
    whole = f"{int(whole):,}"
    return f"{whole}.{frac}" if frac else whole
