"""The ledger in Django admin: listed and readable, never editable."""

from __future__ import annotations

import pytest

from tests.factories import StaffFactory, UsageLogFactory

pytestmark = pytest.mark.django_db


def test_the_ledger_and_rollups_are_listed_read_only(client):
    client.force_login(StaffFactory(is_superuser=True))
    log = UsageLogFactory(request_id="req-admin")
    assert b"req-admin" in client.get("/django-admin/billing/usagelog/").content
    page = client.get(f"/django-admin/billing/usagelog/{log.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert client.get("/django-admin/billing/usagelog/add/").status_code == 403
    assert client.get("/django-admin/billing/usagerollup/").status_code == 200
