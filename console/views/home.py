"""The console's home: the dashboard."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from accounts.roles import requires
from common.htmx import render_page
from console.dashboard import (
    DEFAULT_MODEL_SOURCE,
    MODEL_SOURCE_CHOICES,
    MODEL_SOURCES,
    dashboard_overview,
    top_models,
)


@requires("viewer")
def dashboard(request: HttpRequest) -> HttpResponse:
    """KPIs, the 7-day trend, top models and users, warnings. The model toggle swaps only its card."""
    source = request.GET.get("models", "")
    source = source if source in MODEL_SOURCES else DEFAULT_MODEL_SOURCE
    context = {
        "top_models": top_models(source=source),
        "model_source": source,
        "model_source_choices": MODEL_SOURCE_CHOICES,
    }
    if not request.htmx or request.htmx.history_restore_request:
        context |= dashboard_overview()
    return render_page(request, "console/dashboard.html", context, partial="top_models")
