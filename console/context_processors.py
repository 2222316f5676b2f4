from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

# The navigation bar: (url name, label, icon). Sections whose pages are not
# built yet are left out rather than linking to a 404.
CONSOLE_SECTIONS: list[tuple[str, str, str]] = [
    ("dashboard", "Dashboard", "speedometer2"),
    ("accounts:account-list", "Accounts", "hdd-network"),
    ("accounts:group-list", "Groups", "collection"),
    ("accounts:user-list", "Users", "people"),
    ("accounts:key-list", "API keys", "key"),
    ("channels:channel-list", "Channels", "diagram-3"),
    ("accounts:subscription-list", "Subscriptions", "calendar-check"),
    ("billing:usage-list", "Usage", "receipt"),
    ("reconcile:run-list", "Reconcile", "clipboard-check"),
]


def console(request: HttpRequest) -> dict:
    return {
        "console_sections": CONSOLE_SECTIONS,
        "tollgate_env": settings.TOLLGATE_ENV,
        "scheduled_jobs_enabled": settings.SCHEDULED_JOBS_ENABLED,
    }
