"""Error pages in the console's style. They must render even for anonymous visitors."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.access import public


@public
def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/error.html", {"code": 400, "title": "Bad request"}, status=400)


@public
def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if exception and str(exception) else "You do not have access to this page."
    response = render(
        request, "errors/error.html", {"code": 403, "title": "Forbidden", "message": message}, status=403
    )
    if getattr(request, "htmx", False):
        # htmx swaps no error page into a fragment; the toast says why nothing happened.
        response["HX-Trigger"] = json.dumps({"toast": {"message": message, "level": "danger"}})
    return response


@public
def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(
        request,
        "errors/error.html",
        {"code": 404, "title": "Not found", "message": "There is nothing at this address."},
        status=404,
    )


@public
def server_error(request: HttpRequest) -> HttpResponse:
    # No context processors that touch the database: the error may be the database.
    return render(request, "errors/500.html", status=500)
