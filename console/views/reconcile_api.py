"""Reconcile runs as JSON for scripts (docs/jobs.md#reconcile-runs): runs by batch and by host,
and one batch with its discrepancies.

Public in the middleware's sense, because a script has no session: each view checks for itself
that the caller is signed-in staff (any console role) or sends `Authorization: Bearer <token>`
matching the RECONCILE_API_TOKEN setting (compared in constant time; empty turns tokens off).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from accounts.roles import ConsoleRole, has_console_role
from billing.models import ReconcileDiscrepancy, ReconcileRun
from billing.selectors import reconcile_batch, reconcile_runs
from console.access import public

MAX_RUNS = 500


def _token_ok(request: HttpRequest) -> bool:
    expected = settings.RECONCILE_API_TOKEN
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not sent:
        return False
    return hmac.compare_digest(sent.strip().encode(), expected.encode())


def staff_or_token(view: Callable) -> Callable:
    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs):
        if not (_token_ok(request) or has_console_role(request.user, ConsoleRole.VIEWER)):
            response = JsonResponse(
                {
                    "error": "Sign in to the console as staff, or send Authorization: Bearer <RECONCILE_API_TOKEN>."
                },
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="reconcile"'
            return response
        response = view(request, *args, **kwargs)
        response["Cache-Control"] = "private, no-store"
        return response

    return public(guarded)


def run_json(run: ReconcileRun) -> dict:
    return {
        "id": run.pk,
        "batch_id": run.batch_id,
        "host_id": run.host_id,
        "scope": run.scope,
        "period": run.period,
        "mode": run.mode,
        "status": run.status,
        "started_by": run.started_by_label,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "total": run.total,
        "checked": run.checked,
        "drifted": run.drifted,
        "fixed": run.fixed,
        "error": run.error,
    }


def discrepancy_json(item: ReconcileDiscrepancy) -> dict:
    # Money as strings: exact to the 8th place, as stored.
    return {
        "run_id": item.run_id,
        "batch_id": item.batch_id,
        "host_id": item.host_id,
        "entity_kind": item.entity_kind,
        "entity_id": item.entity_id,
        "entity_label": item.entity_label,
        "field": item.field,
        "stored": str(item.stored),
        "recomputed": str(item.recomputed),
        "delta": str(item.delta),
        "counted_from": item.counted_from.isoformat() if item.counted_from else None,
        "counted_until": item.counted_until.isoformat() if item.counted_until else None,
        "fixed": item.fixed,
        "note": item.note,
    }


@require_GET
@staff_or_token
def runs(request: HttpRequest) -> JsonResponse:
    """GET ?batch=…&host=…: the newest runs (at most 500), narrowed to a batch and/or a host."""
    batch, host = request.GET.get("batch", "").strip(), request.GET.get("host", "").strip()
    found = reconcile_runs(batch_id=batch, host_id=host)[:MAX_RUNS]
    return JsonResponse(
        {"batch": batch or None, "host": host or None, "runs": [run_json(run) for run in found]}
    )


@require_GET
@staff_or_token
def batch(request: HttpRequest, batch_id: str) -> JsonResponse:
    found, discrepancies = reconcile_batch(batch_id=batch_id)
    if not found:
        return JsonResponse({"error": f"No reconcile run has batch id {batch_id!r}."}, status=404)
    return JsonResponse(
        {
            "batch_id": batch_id,
            "hosts": sorted({run.host_id for run in found}),
            "runs": [run_json(run) for run in found],
            "discrepancies": [discrepancy_json(item) for item in discrepancies],
        }
    )
