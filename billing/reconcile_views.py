"""Reconcile pages: runs by batch and host, a batch with its discrepancies, starting a run
(docs/jobs.md#reconcile-runs). Every staff member reads; a dry run needs an operator and a fix
run an admin (docs/console.md#roles: the service checks the fix)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django_tables2 import RequestConfig

from accounts.models import Subscription
from accounts.roles import requires
from billing.forms import ReconcileFilterForm, ReconcileStartForm
from billing.models import ReconcileDiscrepancy
from billing.reconcile import ReconcileRefused, reconcile_batch_create
from billing.selectors import reconcile_batch, reconcile_hosts, reconcile_runs
from billing.tables import ReconcileRunTable
from common.htmx import render_page

logger = logging.getLogger(__name__)
PER_PAGE = 50

ENTITY_URLS = {
    "key": "accounts:key-detail",
    "subscription": "accounts:subscription-detail",
    "account": "accounts:account-edit",
    "user": "accounts:user-detail",
}
LEDGER_FILTER = {"key": "api_key", "account": "account", "user": "user", "subscription": "user"}


@requires("viewer", write="operator")
def reconcile_list(request: HttpRequest) -> HttpResponse:
    start_form = ReconcileStartForm()
    status = 200
    if request.method == "POST":
        start_form = ReconcileStartForm(request.POST)
        if start_form.is_valid():
            try:
                runs = reconcile_batch_create(
                    scopes=start_form.scopes(),
                    period=start_form.cleaned_data["period"],
                    mode=start_form.cleaned_data["mode"],
                    started_by=request.user,
                )
            except (ReconcileRefused, PermissionDenied) as refusal:
                start_form.add_error(None, str(refusal))
            else:
                for run in runs:
                    transaction.on_commit(lambda pk=run.pk: _enqueue(pk))
                return redirect("reconcile:batch", runs[0].batch_id)
        status = 400
    filter_form = ReconcileFilterForm(request.GET or None, hosts=reconcile_hosts())
    filter_form.is_valid()
    batch = (filter_form.cleaned_data.get("batch") or "").strip() if filter_form.is_bound else ""
    host = filter_form.cleaned_data.get("host") or "" if filter_form.is_bound else ""
    table = ReconcileRunTable(reconcile_runs(batch_id=batch, host_id=host))
    RequestConfig(request, paginate={"per_page": PER_PAGE}).configure(table)
    context = {"table": table, "filter_form": filter_form, "start_form": start_form}
    return render_page(request, "billing/reconcile_list.html", context, status=status)


def _enqueue(run_id: int) -> None:
    """Hand the run to a worker; on the embedded default it runs here and now (eager Celery)."""
    from billing.tasks import reconcile_run

    try:
        reconcile_run.delay(run_id)
    except Exception:
        # An eager run that failed has recorded its error on the run, which the batch page shows.
        logger.exception("reconcile run %s failed", run_id)


@dataclass
class DiscrepancyRow:
    item: ReconcileDiscrepancy
    entity_url: str
    ledger_url: str


def _ledger_url(item: ReconcileDiscrepancy, subscription_users: dict[int, int]) -> str:
    """The usage page filtered to the rows behind the recomputed value (whole days, local time)."""
    entity_id = (
        subscription_users.get(item.entity_id) if item.entity_kind == "subscription" else item.entity_id
    )
    params = {LEDGER_FILTER[item.entity_kind]: entity_id, "period": "custom"}
    if item.counted_from:
        params["date_from"] = timezone.localtime(item.counted_from).date().isoformat()
    if item.counted_until:
        params["date_to"] = timezone.localtime(item.counted_until).date().isoformat()
    return f"{reverse('billing:usage-list')}?{urlencode(params)}"


@requires("viewer")
def reconcile_batch_detail(request: HttpRequest, batch_id: str) -> HttpResponse:
    runs, discrepancies = reconcile_batch(batch_id=batch_id)
    if not runs:
        raise Http404("No reconcile run has this batch id.")
    subscription_ids = [d.entity_id for d in discrepancies if d.entity_kind == "subscription"]
    subscription_users = dict(
        Subscription.objects.filter(pk__in=subscription_ids).values_list("pk", "user_id")
    )
    rows = [
        DiscrepancyRow(
            item=item,
            entity_url=reverse(ENTITY_URLS[item.entity_kind], args=[item.entity_id]),
            ledger_url=_ledger_url(item, subscription_users),
        )
        for item in discrepancies
    ]
    context = {
        "batch_id": batch_id,
        "runs": runs,
        "rows": rows,
        "active": any(run.is_active for run in runs),
        "hosts": sorted({run.host_id for run in runs}),
    }
    return render_page(request, "billing/reconcile_batch.html", context, partial="batch")
