"""HTMX response helpers shared by every console view."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers


def render_page(
    request: HttpRequest, template: str, context: dict, *, partial: str = "table", status: int = 200
) -> HttpResponse:
    """Render the full page, or only `template#partial` for an HTMX swap.

    A history-restore request wants the whole page back, so it gets it. The
    Vary header keeps browsers from caching one shape in place of the other.
    """
    wants_partial = bool(request.htmx) and not request.htmx.history_restore_request
    response = render(request, f"{template}#{partial}" if wants_partial else template, context, status=status)
    patch_vary_headers(response, ("HX-Request",))
    return response


def hx_trigger_response(events: dict, *, status: int = 204) -> HttpResponse:
    """204 + HX-Trigger: how a dialog says 'done': close me, refresh what changed."""
    response = HttpResponse(status=status)
    response["HX-Trigger"] = json.dumps(events)
    return response


def dialog_done(*, changed: str, message: str = "", level: str = "success") -> HttpResponse:
    events: dict = {"dialog:close": True, changed: True}
    if message:
        events["toast"] = {"message": message, "level": level}
    return hx_trigger_response(events)
