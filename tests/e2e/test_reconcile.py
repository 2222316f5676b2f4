"""Reconcile in real Chromium: start a dry run from the console, see it finish with the drift,
follow a discrepancy to the ledger; a running batch's progress bar fills by HTMX polling."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import APIKey, User
from billing.models import ReconcileRun
from billing.reconcile import reconcile_run_create
from tests.factories import APIKeyFactory, UsageLogFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_dry_run_started_from_the_console_shows_its_progress_and_discrepancies(
    staff_page, live_server, screenshot
):
    user = UserFactory(email="drift@example.com", balance=Decimal("0"))
    key = APIKeyFactory(user=user, name="drifting key")
    row = UsageLogFactory(api_key=key, created_at=timezone.now() - timedelta(days=20))
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=row.actual_cost + Decimal("4.2"))
    User.objects.filter(pk=user.pk).update(balance=-row.actual_cost)

    page = staff_page
    page.get_by_role("link", name="Reconcile").click()
    expect(page).to_have_url(f"{live_server.url}/reconcile/")
    page.get_by_label("Scope").select_option("keys")
    page.get_by_label("Dry run").check()
    page.get_by_role("button", name="Start").click()

    run = ReconcileRun.objects.get()
    expect(page).to_have_url(f"{live_server.url}/reconcile/batches/{run.batch_id}/")
    card = page.locator(f"#run-{run.pk}")
    expect(card).to_contain_text("Finished")
    expect(card.locator("progress")).to_have_attribute("value", "100")
    discrepancy = page.locator("#discrepancies tbody tr")
    expect(discrepancy).to_have_count(1)
    expect(discrepancy).to_contain_text("quota_used_usd")
    expect(discrepancy).to_contain_text("4.20000000")
    run.refresh_from_db()
    assert (run.scope, run.mode, run.drifted, run.status) == ("keys", "dry_run", 1, "succeeded")
    assert run.started_by_label.endswith("@tollgate.test")
    screenshot(page, "batch-1280")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "batch-375")
    page.set_viewport_size({"width": 1280, "height": 860})

    # One click from the discrepancy to the ledger rows that prove the recomputed value.
    discrepancy.get_by_role("link", name="Ledger rows").click()
    expect(page).to_have_url(re.compile(rf"/usage/\?api_key={key.pk}"))
    expect(page.locator(f"#usage-{row.pk}")).to_be_visible()
    expect(page.locator("#usage-table tr[id^=usage-]")).to_have_count(1)

    page.get_by_role("link", name="Reconcile").click()
    expect(page.locator(f"#run-{run.pk}")).to_contain_text(run.batch_id)
    screenshot(page, "list-1280")
    page.set_viewport_size({"width": 375, "height": 800})
    screenshot(page, "list-375")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.console_errors == []


def test_a_running_batch_fills_its_progress_bar_by_polling(staff_page, live_server):
    run = reconcile_run_create(scope="users", started_by_label="schedule")
    ReconcileRun.objects.filter(pk=run.pk).update(status="running", total=8, checked=2)
    page = staff_page
    page.goto(f"/reconcile/batches/{run.batch_id}/")
    bar = page.locator(f"#run-{run.pk} progress")
    expect(bar).to_have_attribute("value", "25")
    ReconcileRun.objects.filter(pk=run.pk).update(checked=6)
    expect(bar).to_have_attribute("value", "75")
    ReconcileRun.objects.filter(pk=run.pk).update(checked=8, status="succeeded", finished_at=timezone.now())
    expect(page.locator(f"#run-{run.pk}")).to_contain_text("Finished")
    expect(bar).to_have_attribute("value", "100")
    expect(page.locator("#no-discrepancies")).to_contain_text("No drift")
    assert page.console_errors == []
