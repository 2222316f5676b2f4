"""Django admin, for admins only: the fallback edits every row, so it needs the widest role."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

from accounts.roles import ConsoleRole, has_console_role


class ConsoleAdminSite(admin.AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        # Superusers and admins; an admin's model permissions come from User.has_perm.
        return has_console_role(request.user, ConsoleRole.ADMIN)


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the site above (INSTALLED_APPS names this class)."""

    default_site = "console.admin_site.ConsoleAdminSite"
