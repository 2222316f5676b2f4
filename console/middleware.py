from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control

from console.access import is_public


class StaffOnlyConsoleMiddleware:
    """Anonymous visitors are sent to sign in; signed-in non-staff get 403.

    Every console response (pages, fragments, CSV exports) is marked `private, no-store`: it
    carries customers' data, so neither a shared cache nor the browser's may keep it. Public
    views (sign-in, /healthz, the gateway's API under /v1/) are left alone. Django admin
    requires staff itself and marks its own pages never-cache.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if getattr(request, "tollgate_console", False):
            patch_cache_control(response, private=True, no_store=True)
        return response

    def process_view(self, request: HttpRequest, view_func: Callable, view_args, view_kwargs):
        if is_public(view_func) or request.path.startswith("/django-admin/"):
            return None
        request.tollgate_console = True
        user = request.user
        if not user.is_authenticated:
            if request.htmx:
                # A redirect inside an HTMX swap would paste the login page
                # into a fragment; ask the browser to navigate instead.
                response = HttpResponse(status=204)
                response["HX-Redirect"] = redirect_to_login(request.get_full_path()).url
                return response
            return redirect_to_login(request.get_full_path())
        if not user.is_staff or not user.is_active:
            raise PermissionDenied("The console is for staff only.")
        return None
