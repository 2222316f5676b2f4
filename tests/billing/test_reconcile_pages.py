"""The reconcile pages, the JSON endpoint for scripts, manage.py reconcile and the tasks."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from accounts.models import APIKey, User
from accounts.roles import ConsoleRole
from billing.models import ReconcileRun, ReconcileStatus, UsageLog
from billing.reconcile import reconcile_run_create, reconcile_run_execute
from billing.tasks import prune_usage, reconcile_nightly
from tests.factories import APIKeyFactory, StaffFactory, UsageLogFactory, UserFactory

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def drifted_key():
    """A key whose stored quota is $2 above its one ledger row (its user's balance is right)."""
    user = UserFactory(balance=D("0"))
    key = APIKeyFactory(user=user)
    row = UsageLogFactory(api_key=key, created_at=timezone.now() - timedelta(days=20))
    APIKey.objects.filter(pk=key.pk).update(quota_used_usd=row.actual_cost + 2)
    User.objects.filter(pk=user.pk).update(balance=-row.actual_cost)
    return key


def finished_run(scope="keys", mode="dry_run", host="", batch=""):
    run = reconcile_run_create(scope=scope, mode=mode, started_by_label="test", batch_id=batch)
    run = reconcile_run_execute(run_id=run.pk)
    if host:
        ReconcileRun.objects.filter(pk=run.pk).update(host_id=host)
        run.host_id = host
    return run


def test_the_run_list_filters_by_batch_and_by_host_in_a_bounded_number_of_queries(
    staff_client, django_assert_max_num_queries
):
    for index in range(12):
        finished_run(host=f"worker-{index % 3}", batch=f"batch-{index % 4}")
    url = reverse("reconcile:run-list")
    with django_assert_max_num_queries(10):
        page = staff_client.get(url).content.decode()
    assert page.count('id="run-') == 12
    with django_assert_max_num_queries(10):
        page = staff_client.get(url, {"batch": "batch-1"}).content.decode()
    assert page.count('id="run-') == 3 and "batch-2" not in page.split('id="reconcile-runs"')[1]
    page = staff_client.get(url, {"host": "worker-2"}).content.decode()
    assert page.count('id="run-') == 4
    page = staff_client.get(url, {"batch": "batch-1", "host": "worker-1"}).content.decode()
    assert page.count('id="run-') == 1


def test_an_operator_starts_a_batch_from_the_form_and_lands_on_it_finished(
    client, drifted_key, django_capture_on_commit_callbacks
):
    operator = StaffFactory(console_role=ConsoleRole.OPERATOR)
    client.force_login(operator)
    # The runs are handed to Celery once the request's transaction commits.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("reconcile:run-list"), {"scope": "all", "period": "all", "mode": "dry_run"}
        )
    runs = ReconcileRun.objects.order_by("scope")
    assert {run.scope for run in runs} == {"keys", "accounts", "subscriptions", "users"}
    batch = runs[0].batch_id
    assert {run.batch_id for run in runs} == {batch}
    assert response.status_code == 302 and response["Location"] == reverse("reconcile:batch", args=[batch])
    # Eager Celery (no broker): the runs finished before the redirect.
    assert {run.status for run in runs} == {ReconcileStatus.SUCCEEDED}
    assert {run.started_by_label for run in runs} == {operator.email}

    page = client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 1s"' not in page  # nothing left to poll for
    assert reverse("accounts:key-detail", args=[drifted_key.pk]) in page
    assert f"api_key={drifted_key.pk}" in page and "Ledger rows" in page
    assert "-$2.00000000" in page or "−$2.00000000" in page


def test_a_viewer_reads_the_page_but_cannot_start_a_run(client):
    viewer = StaffFactory(console_role=ConsoleRole.VIEWER)
    client.force_login(viewer)
    assert (
        "Starting a run needs the operator role" in client.get(reverse("reconcile:run-list")).content.decode()
    )
    response = client.post(reverse("reconcile:run-list"), {"scope": "keys", "period": "all", "mode": "fix"})
    assert response.status_code == 403
    assert not ReconcileRun.objects.exists()


def test_a_second_fix_is_refused_on_the_form_with_the_reason(staff_client):
    busy = reconcile_run_create(scope="keys", mode="fix", started_by_label="someone")
    response = staff_client.post(
        reverse("reconcile:run-list"), {"scope": "keys", "period": "all", "mode": "fix"}
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert f"A fix run of api keys is already queued (run {busy.pk}" in page
    assert ReconcileRun.objects.count() == 1


def test_a_running_batch_page_polls_for_progress(staff_client):
    run = reconcile_run_create(scope="users", started_by_label="test")
    ReconcileRun.objects.filter(pk=run.pk).update(status="running", total=10, checked=4)
    page = staff_client.get(reverse("reconcile:batch", args=[run.batch_id])).content.decode()
    assert 'hx-trigger="every 1s"' in page and 'value="40"' in page
    partial = staff_client.get(reverse("reconcile:batch", args=[run.batch_id]), HTTP_HX_REQUEST="true")
    assert partial.content.decode().lstrip().startswith('<div id="batch"')


def test_the_json_endpoint_answers_staff_and_the_admin_token_only(client, settings, drifted_key):
    settings.RECONCILE_API_TOKEN = "s3cret-token"
    run = finished_run(host="worker-9")
    finished_run(host="worker-1")
    runs_url = reverse("reconcile-api-runs")
    assert client.get(runs_url).status_code == 401
    assert client.get(runs_url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    client.force_login(UserFactory())  # signed in, but not staff
    assert client.get(runs_url).status_code == 401
    client.logout()

    answer = client.get(runs_url, {"host": "worker-9"}, HTTP_AUTHORIZATION="Bearer s3cret-token").json()
    assert [item["id"] for item in answer["runs"]] == [run.pk]
    assert answer["runs"][0]["drifted"] == 1

    detail = client.get(
        reverse("reconcile-api-batch", args=[run.batch_id]), HTTP_AUTHORIZATION="Bearer s3cret-token"
    )
    body = detail.json()
    assert body["hosts"] == ["worker-9"]
    assert body["discrepancies"][0]["delta"] == "-2.00000000"
    assert body["discrepancies"][0]["entity_id"] == drifted_key.pk
    assert (
        client.get(
            reverse("reconcile-api-batch", args=["nope"]), HTTP_AUTHORIZATION="Bearer s3cret-token"
        ).status_code
        == 404
    )

    client.force_login(StaffFactory(console_role=ConsoleRole.VIEWER))
    assert client.get(runs_url, {"batch": run.batch_id}).json()["runs"][0]["batch_id"] == run.batch_id


def test_an_empty_token_setting_turns_token_access_off(client, settings):
    settings.RECONCILE_API_TOKEN = ""
    assert client.get(reverse("reconcile-api-runs"), HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_the_command_exits_1_when_a_dry_run_finds_drift_and_0_after_a_fix(drifted_key):
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command(
            "reconcile",
            "--scope",
            "keys",
            "--mode",
            "dry_run",
            "--batch",
            "cron-1",
            stdout=out,
            stderr=io.StringIO(),
        )
    assert exit_info.value.code == 1
    text = out.getvalue()
    assert "keys: 1/1 checked, 1 drifted" in text  # plain progress lines off a terminal
    assert "keys: 1 checked, 1 drifted, 0 fixed (run" in text and "batch cron-1" in text

    call_command("reconcile", "--scope", "keys", "--mode", "fix", stdout=io.StringIO())
    call_command("reconcile", "--mode", "dry_run", stdout=io.StringIO())  # every scope, no drift: exit 0
    assert APIKey.objects.get(pk=drifted_key.pk).quota_used_usd == UsageLog.objects.get().actual_cost


def test_the_command_exits_2_when_a_fix_of_the_scope_is_already_running():
    reconcile_run_create(scope="users", mode="fix")
    with pytest.raises(CommandError, match="already queued") as refused:
        call_command("reconcile", "--scope", "users", "--mode", "fix", stdout=io.StringIO())
    assert refused.value.returncode == 2  # what manage.py exits with


def test_the_nightly_task_dry_runs_every_scope_in_one_batch_started_by_the_schedule(drifted_key):
    batch = reconcile_nightly.delay().get()
    runs = ReconcileRun.objects.filter(batch_id=batch)
    assert runs.count() == 4
    assert set(runs.values_list("started_by_label", "mode", "status").distinct()) == {
        ("schedule", "dry_run", "succeeded")
    }
    assert sum(runs.values_list("drifted", flat=True)) == 1
    assert APIKey.objects.filter(pk=drifted_key.pk, quota_used_usd=F("quota_used_usd")).exists()


def test_the_prune_task_deletes_rows_past_retention_and_keeps_reconcile_clean(settings):
    settings.USAGE_RETENTION_DAYS = 10
    user = UserFactory(balance=D("0"))
    key = APIKeyFactory(user=user)
    for days in (30, 20, 9):  # all past every window, so only the quota counts them
        row = UsageLogFactory(api_key=key, created_at=timezone.now() - timedelta(days=days))
        APIKey.objects.filter(pk=key.pk).update(quota_used_usd=F("quota_used_usd") + row.actual_cost)
    assert prune_usage.delay().get() == 2
    assert UsageLog.objects.count() == 1
    assert finished_run("keys").drifted == 0


def test_an_operator_may_dry_run_but_only_an_admin_may_start_a_fix(
    client, django_capture_on_commit_callbacks
):
    client.force_login(StaffFactory(console_role=ConsoleRole.OPERATOR))
    response = client.post(reverse("reconcile:run-list"), {"scope": "keys", "period": "all", "mode": "fix"})
    assert response.status_code == 400
    assert "start a reconcile fix run" in response.content.decode()
    assert not ReconcileRun.objects.exists()

    client.force_login(StaffFactory(console_role=ConsoleRole.ADMIN))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("reconcile:run-list"), {"scope": "keys", "period": "all", "mode": "fix"}
        )
    assert response.status_code == 302
    assert ReconcileRun.objects.get().mode == "fix"
