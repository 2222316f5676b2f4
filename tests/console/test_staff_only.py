"""Every URL is staff-only unless it is on the short, explicit public list, and each staff role
reaches exactly what the view's declared policy (`accounts.roles.requires`) allows it."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.roles import ConsoleRole, declared_policy, has_console_role, view_policy
from console.access import is_public
from tests.factories import StaffFactory

# The only views anyone may reach without a staff session. Adding to this list
# is a security decision: the test below fails if a view becomes public silently. The reconcile
# JSON views check "staff session or the admin token" themselves (console/views/reconcile_api.py).
EXPECTED_PUBLIC = {"login", "logout", "healthz", "favicon", "reconcile-api-runs", "reconcile-api-batch"}


def walk(resolver: URLResolver, prefix: str = "", namespace: str = ""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            ns = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), f"{namespace}{entry.name or ''}", entry


def example_path(route: str) -> str:
    """Turn a route into a concrete path: every converter gets a plausible value."""
    import re

    path = re.sub(r"<int:[^>]+>", "1", route)
    path = re.sub(r"<slug:[^>]+>", "x", path)
    path = re.sub(r"<uuid:[^>]+>", "00000000-0000-0000-0000-000000000000", path)
    path = re.sub(r"<(?:str:|path:)?[^>]+>", "x", path)
    # Regex routes (admin): strip anchors and groups into a sample path.
    path = path.replace("^", "").replace("$", "").replace("\\Z", "")
    path = re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", path)
    return "/" + path.lstrip("/")


def console_patterns():
    return [
        (route, name, entry)
        for route, name, entry in walk(get_resolver())
        if not route.startswith("django-admin/") and not route.startswith("static/")
    ]


def test_the_public_list_is_exactly_the_expected_one():
    public = {name for _, name, entry in console_patterns() if is_public(entry.callback)}
    assert public == EXPECTED_PUBLIC


def test_there_are_console_pages_to_protect():
    assert len([p for p in console_patterns() if not is_public(p[2].callback)]) >= 5


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_visitors_are_sent_to_sign_in_everywhere(client, method):
    for route, name, entry in console_patterns():
        if is_public(entry.callback):
            continue
        path = example_path(route)
        response = getattr(client, method)(path)
        assert response.status_code == 302, f"{name} ({path}) answered {response.status_code}"
        assert response["Location"].startswith("/login/?next="), f"{name} ({path}) → {response['Location']}"


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_signed_in_non_staff_are_refused_everywhere(client, customer, method):
    client.force_login(customer)
    for route, name, entry in console_patterns():
        if is_public(entry.callback):
            continue
        path = example_path(route)
        response = getattr(client, method)(path)
        assert response.status_code == 403, f"{name} ({path}) answered {response.status_code}"


# --- Roles --------------------------------------------------------------------------------------

ROLES = [role.value for role in ConsoleRole]

# Writes that only an admin may make, whatever else changes: upstream credentials, prices and
# mapping, groups (they carry prices), staff accounts (console access), sign-in unlocks.
ADMIN_ONLY_WRITES = {
    "accounts:account-create",
    "accounts:account-edit",
    "accounts:account-delete",
    "channels:channel-create",
    "channels:channel-detail",
    "channels:channel-delete",
    "accounts:group-create",
    "accounts:group-edit",
    "accounts:group-delete",
    "sign-in-unlock",
}

# The day-to-day work an operator does and a viewer may not (each is also refused to viewers).
OPERATOR_WRITES = {
    "accounts:key-create",
    "accounts:key-detail",
    "accounts:key-delete",
    "accounts:key-reset-quota",
    "accounts:subscription-assign",
    "accounts:subscription-extend",
    "accounts:user-create",
    "accounts:user-balance",
    "accounts:user-status",
    "accounts:account-quota-reset",
    "accounts:account-schedulable",
    "accounts:account-clear-error",
}


def staff_patterns():
    return [
        (route, name, entry) for route, name, entry in console_patterns() if not is_public(entry.callback)
    ]


def test_every_console_view_declares_the_role_it_needs():
    # A new page cannot ship without a decision: @requires("viewer" | "operator" | "admin", write=…)
    # on the view. (Undeclared views are admin-only at run time, so forgetting is never a leak.)
    undeclared = sorted(
        name for _, name, entry in staff_patterns() if declared_policy(entry.callback) is None
    )
    assert not undeclared, f"Declare the role these views need with @requires: {undeclared}"


def test_the_policy_keeps_credentials_prices_staff_and_unlocks_for_admins():
    policies = {name: view_policy(entry.callback) for _, name, entry in staff_patterns()}
    assert {name for name in ADMIN_ONLY_WRITES if policies[name].write != ConsoleRole.ADMIN} == set()
    assert {name for name in OPERATOR_WRITES if policies[name].write != ConsoleRole.OPERATOR} == set()


def _database_rows() -> dict[str, list[dict]]:
    return {
        model._meta.label: list(model.objects.order_by("pk").values())
        for model in apps.get_models()
        if model._meta.app_label in ("accounts", "channels", "billing")
    }


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_what_the_declared_policy_allows(role, method):
    """Every URL pattern, with real rows behind its ids: refused → 403 before the view runs;
    allowed → the view answers (never 403, never an error). Each request is rolled back."""
    from tests.e2e.rows import console_path, console_rows

    rows = console_rows()
    staff = StaffFactory(console_role=role)
    client = Client()
    client.force_login(staff)
    before = _database_rows() if role == ConsoleRole.VIEWER else None
    wrong = []
    for _, name, entry in staff_patterns():
        path = console_path(name, entry, rows)
        allowed = has_console_role(staff, view_policy(entry.callback).role_for(method))
        with transaction.atomic():
            response = getattr(client, method)(path)
            transaction.set_rollback(True)
        status = response.status_code
        if allowed and (status == 403 or status >= 500 or (method == "get" and status not in (200, 405))):
            wrong.append(f"{name} ({method.upper()} {path}) is allowed but answered {status}")
        if not allowed and status != 403:
            wrong.append(f"{name} ({method.upper()} {path}) is refused by the policy but answered {status}")
    assert not wrong, "\n".join(wrong)
    if before is not None:
        # Whatever a viewer sends, nothing is written (not even inside a view that then fails).
        assert _database_rows() == before


@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_a_refusal_names_the_role_needed(client, role):
    client.force_login(StaffFactory(console_role=role))
    response = client.post("/sign-in-locks/1/unlock")
    if role == ConsoleRole.ADMIN:
        assert response.status_code != 403
    else:
        assert response.status_code == 403
        assert f"Only an admin can do this; you are a{'n' if role == 'operator' else ''} {role}." in (
            response.content.decode()
        )


@pytest.mark.django_db
def test_an_undeclared_view_is_for_admins_only(rf):
    from django.core.exceptions import PermissionDenied

    from console.middleware import StaffOnlyConsoleMiddleware

    def undeclared(request):  # a view someone forgot to declare
        raise AssertionError("never reached by a non-admin")

    middleware = StaffOnlyConsoleMiddleware(lambda request: None)
    for role in (ConsoleRole.VIEWER, ConsoleRole.OPERATOR):
        request = rf.get("/new-page/")
        request.user = StaffFactory(console_role=role)
        request.htmx = False
        with pytest.raises(PermissionDenied):
            middleware.process_view(request, undeclared, (), {})
    request = rf.get("/new-page/")
    request.user = StaffFactory(console_role=ConsoleRole.ADMIN)
    assert middleware.process_view(request, undeclared, (), {}) is None


@pytest.mark.django_db
def test_htmx_requests_from_anonymous_visitors_redirect_the_whole_page(client):
    response = client.get("/users/", headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/login/?next=")


@pytest.mark.django_db
def test_django_admin_is_reachable_only_by_admins_and_superusers(client, customer):
    assert client.get("/django-admin/").status_code == 302
    client.force_login(customer)
    assert client.get("/django-admin/").status_code == 302  # admin sends non-staff to its own login
    for role in (ConsoleRole.VIEWER, ConsoleRole.OPERATOR):
        client.force_login(StaffFactory(console_role=role))
        for path in ("/django-admin/", "/django-admin/accounts/user/", "/django-admin/accounts/apikey/"):
            response = client.get(path)
            assert response.status_code == 403, (role, path)
        assert b"Django admin is for admins only." in response.content
    # An admin who is not a superuser uses every model there, as a superuser does.
    client.force_login(StaffFactory(console_role=ConsoleRole.ADMIN, is_superuser=False))
    assert client.get("/django-admin/").status_code == 200
    assert client.get("/django-admin/accounts/user/").status_code == 200
    assert client.get("/django-admin/channels/channel/").status_code == 200
    client.force_login(StaffFactory(console_role=ConsoleRole.VIEWER, is_superuser=True))
    assert client.get("/django-admin/accounts/user/").status_code == 200


@pytest.mark.django_db
def test_the_forbidden_page_is_in_the_console_style(client, customer):
    client.force_login(customer)
    response = client.get("/users/")
    assert response.status_code == 403
    assert b"The console is for staff only." in response.content
    assert b"Tollgate" in response.content


@pytest.mark.django_db
def test_the_not_found_page_is_in_the_console_style(staff_client, settings):
    settings.DEBUG = False
    response = staff_client.get("/no-such-page/")
    assert response.status_code == 404
    assert b"There is nothing at this address." in response.content
