"""Who may see what.

Every console URL is staff-only unless its view is explicitly marked public
with @public. The rule is enforced by StaffOnlyConsoleMiddleware, so a new
page is protected the moment it is routed; tests/console/test_staff_only.py
walks every URL pattern to prove it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

ViewFunc = TypeVar("ViewFunc", bound=Callable)


def public(view: ViewFunc) -> ViewFunc:
    """Mark a view as reachable without a staff login (sign-in pages, the API gateway)."""
    view.tollgate_public = True  # type: ignore[attr-defined]
    return view


def is_public(view: Callable) -> bool:
    # Class-based views expose the class on view_class; admin views are wrapped.
    return bool(
        getattr(view, "tollgate_public", False)
        or getattr(getattr(view, "view_class", None), "tollgate_public", False)
    )
