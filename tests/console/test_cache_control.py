"""Console responses carry Cache-Control: private, no-store; public ones are left alone."""

from __future__ import annotations

import pytest

from tests.factories import UsageLogFactory

pytestmark = pytest.mark.django_db


def directives(response) -> set[str]:
    return {part.strip() for part in response.get("Cache-Control", "").split(",") if part.strip()}


@pytest.mark.parametrize("path", ["/", "/users/", "/keys/", "/channels/", "/usage/", "/sign-in-locks/"])
def test_console_pages_are_never_stored(staff_client, path):
    response = staff_client.get(path)
    assert response.status_code == 200
    assert {"private", "no-store"} <= directives(response)


def test_htmx_fragments_are_never_stored(staff_client):
    response = staff_client.get("/users/", headers={"HX-Request": "true"})
    assert {"private", "no-store"} <= directives(response)


def test_csv_exports_are_never_stored(staff_client):
    UsageLogFactory()
    response = staff_client.get("/usage/export.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert {"private", "no-store"} <= directives(response)


def test_refusals_of_console_pages_are_never_stored(client, customer):
    assert {"private", "no-store"} <= directives(client.get("/users/"))
    client.force_login(customer)
    response = client.get("/users/")
    assert response.status_code == 403 and {"private", "no-store"} <= directives(response)


def test_the_health_check_is_left_alone(client):
    assert "Cache-Control" not in client.get("/healthz")


@pytest.mark.urls("tests.console.gateway_urls")
def test_gateway_api_responses_are_left_alone(client, staff_user):
    client.force_login(staff_user)  # even with a console session cookie
    assert client.get("/v1/models")["Cache-Control"] == "max-age=60"
    assert {"private", "no-store"} <= directives(client.get("/users/"))
