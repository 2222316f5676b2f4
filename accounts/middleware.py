from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from accounts.access import is_public


class StaffOnlyConsoleMiddleware:
    """Anonymous visitors are sent to sign in; signed-in non-staff get 403.

    Django admin keeps its own login flow, which also requires staff.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable, view_args, view_kwargs):
        if is_public(view_func) or request.path.startswith("/django-admin/"):
            return None
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
