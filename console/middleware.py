from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_cache_control

from accounts.roles import ConsoleRole, has_console_role, view_policy, view_role_required
from console.access import is_public

ADMIN_PREFIX = "/django-admin/"


class StaffOnlyConsoleMiddleware:
    """Anonymous visitors are sent to sign in; signed-in non-staff get 403; staff get 403 where
    their console role is below what the view declares (`accounts.roles.requires`; a view that
    declares nothing is for admins). Django admin is for admins only.

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
        if is_public(view_func):
            return None
        if request.path.startswith(ADMIN_PREFIX):
            # Signed-out visitors go to the admin's login (the console's form); staff below
            # admin are refused here rather than sent to sign in again, which would loop.
            user = request.user
            if user.is_authenticated and user.is_staff and not has_console_role(user, ConsoleRole.ADMIN):
                raise PermissionDenied("Django admin is for admins only.")
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
        view_role_required(request, view_policy(view_func))
        return None
