"""Who on the staff may do what: the three console roles and the one declared policy.

A **viewer** reads every page and exports CSV; an **operator** also does the day-to-day work
(keys, subscriptions, balances, resets, an account's schedulable switch and error); an **admin**
does everything, including upstream credentials, prices, groups, staff accounts and sign-in
unlocks. A superuser is always an admin (docs/console.md#roles).

Every console view declares the role it needs with `@requires("viewer", write="operator")`: the
first role for reading (GET, HEAD, OPTIONS), the second for everything else. The declaration is
the one source: `console.middleware` enforces it before the view runs (and the decorator again,
for a view called any other way), templates ask it through the `may` filter (`{% load roles %}`)
to show only the actions a user may take, and tests/console/test_staff_only.py walks every URL
for every role against it. A view that declares nothing needs an admin, and fails that test.

Rules that depend on the row (only an admin changes a staff member) live in the services, which
take the acting user as `actor` and raise PermissionDenied (`console_role_required`,
`user_change_allowed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import models
from django.urls import URLPattern, URLResolver, get_resolver

if TYPE_CHECKING:
    from accounts.models import User

ViewFunc = TypeVar("ViewFunc", bound=Callable)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConsoleRole(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"


RANK = {ConsoleRole.VIEWER: 1, ConsoleRole.OPERATOR: 2, ConsoleRole.ADMIN: 3}

# What each role adds, in a sentence: the user form's choice labels and the docs say the same.
ROLE_SUMMARIES = {
    ConsoleRole.VIEWER: "reads every page and exports CSV; changes nothing",
    ConsoleRole.OPERATOR: "day-to-day work: keys, subscriptions, balances, resets, account switches",
    ConsoleRole.ADMIN: "everything: credentials, prices, groups, staff, sign-in locks",
}


def console_role_of(user: User | Any) -> ConsoleRole | None:
    """The user's role in the console, or None when they may not use it at all."""
    if not (
        user is not None
        and getattr(user, "is_authenticated", False)
        and user.is_active
        and getattr(user, "is_staff", False)
    ):
        return None
    if user.is_superuser:
        return ConsoleRole.ADMIN
    try:
        return ConsoleRole(user.console_role)
    except ValueError:
        return ConsoleRole.VIEWER  # an unknown stored value grants the least


def has_console_role(user: User | Any, role: ConsoleRole | str) -> bool:
    held = console_role_of(user)
    return held is not None and RANK[held] >= RANK[ConsoleRole(role)]


def _refusal(user: User | Any, needed: ConsoleRole, doing: str) -> str:
    held = console_role_of(user)
    who = {ConsoleRole.VIEWER: "a viewer", ConsoleRole.OPERATOR: "an operator", ConsoleRole.ADMIN: "an admin"}
    who = who[held] if held else "not staff"
    allowed = {ConsoleRole.VIEWER: "staff", ConsoleRole.OPERATOR: "an operator or admin"}
    return f"Only {allowed.get(needed, 'an admin')} can {doing}; you are {who}."


def console_role_required(actor: User | None, role: ConsoleRole | str, *, doing: str) -> None:
    """Raise PermissionDenied unless `actor` holds `role`. No actor is the system itself (a
    management command, the demo, a scheduled job), which may do anything."""
    if actor is not None and not has_console_role(actor, role):
        raise PermissionDenied(_refusal(actor, ConsoleRole(role), doing))


def is_staff_account(user: User) -> bool:
    return bool(user.is_staff or user.is_superuser)


def user_change_allowed(actor: User | None, *, target_is_staff: bool) -> bool:
    """Only an admin changes a staff member or superuser (their own record included)."""
    return actor is None or not target_is_staff or has_console_role(actor, ConsoleRole.ADMIN)


# --- The declared policy of each view ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    read: ConsoleRole
    write: ConsoleRole

    def role_for(self, method: str) -> ConsoleRole:
        return self.read if method.upper() in SAFE_METHODS else self.write


# What a view that declares nothing gets: admins only, so forgetting is never a leak.
UNDECLARED = ViewPolicy(ConsoleRole.ADMIN, ConsoleRole.ADMIN)


def requires(role: str, *, write: str | None = None) -> Callable[[ViewFunc], ViewFunc]:
    """Declare (and enforce) the role a console view needs: `role` to read it, `write` (default:
    the same) for any other method. `@requires("viewer", write="operator")` is a page every
    staff member may open and only operators and admins may submit."""
    policy = ViewPolicy(ConsoleRole(role), ConsoleRole(write or role))
    if RANK[policy.write] < RANK[policy.read]:
        raise ImproperlyConfigured(f"Writing cannot need less than reading ({policy}).")

    def declare(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def guarded(request, *args, **kwargs):
            view_role_required(request, policy)
            return view(request, *args, **kwargs)

        guarded.console_policy = policy  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    return declare


def declared_policy(view: Callable) -> ViewPolicy | None:
    """The view's own declaration, or None when it has none."""
    return getattr(view, "console_policy", None) or getattr(
        getattr(view, "view_class", None), "console_policy", None
    )


def view_policy(view: Callable) -> ViewPolicy:
    return declared_policy(view) or UNDECLARED


def view_role_required(request, policy: ViewPolicy) -> None:
    needed = policy.role_for(request.method or "GET")
    if not has_console_role(request.user, needed):
        doing = "open this page" if request.method in SAFE_METHODS else "do this"
        raise PermissionDenied(_refusal(request.user, needed, doing))


# --- The same question from a template: may this user use that URL? -----------------------------


@lru_cache(maxsize=4)
def _views_by_name(resolver: URLResolver) -> dict[str, Callable]:
    found: dict[str, Callable] = {}

    def walk(node: URLResolver, namespace: str) -> None:
        for entry in node.url_patterns:
            if isinstance(entry, URLResolver):
                walk(entry, f"{namespace}{entry.namespace}:" if entry.namespace else namespace)
            elif isinstance(entry, URLPattern) and entry.name:
                found.setdefault(f"{namespace}{entry.name}", entry.callback)

    walk(resolver, "")
    return found


def may(user: User | Any, url_name: str, *, method: str = "POST") -> bool:
    """May `user` use the view named `url_name` with `method`? POST by default: the question a
    template asks before offering an action (a dialog's button asks its GET too, since the
    dialog itself is declared for the role that may confirm it)."""
    try:
        view = _views_by_name(get_resolver())[url_name]
    except KeyError:
        raise ImproperlyConfigured(f"No URL is named {url_name!r}.") from None
    return has_console_role(user, view_policy(view).role_for(method))
