from __future__ import annotations

from django.db.models import Count, Q, Sum

from accounts.models import User


def dashboard_summary() -> dict:
    """The console's front page figures. Usage KPIs join this once billing rollups exist."""
    users = User.objects.aggregate(
        total=Count("id"),
        active=Count("id", filter=Q(status=User.Status.ACTIVE)),
        staff=Count("id", filter=Q(is_staff=True)),
        balance=Sum("balance"),
    )
    return {"users": users}
