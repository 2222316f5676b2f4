"""Every URL is staff-only unless it is on the short, explicit public list."""

from __future__ import annotations

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from console.access import is_public

# The only views anyone may reach without a staff session. Adding to this list
# is a security decision: the test below fails if a view becomes public silently.
EXPECTED_PUBLIC = {"login", "logout", "healthz", "favicon"}


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


@pytest.mark.django_db
def test_htmx_requests_from_anonymous_visitors_redirect_the_whole_page(client):
    response = client.get("/users/", headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/login/?next=")


@pytest.mark.django_db
def test_django_admin_is_reachable_only_by_staff(client, customer, staff_user):
    assert client.get("/django-admin/").status_code == 302
    client.force_login(customer)
    assert client.get("/django-admin/").status_code == 302  # admin sends non-staff to its own login
    client.force_login(staff_user)
    assert client.get("/django-admin/").status_code == 200


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
