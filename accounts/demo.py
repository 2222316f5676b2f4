"""Demo data for `manage.py seed_demo`. Every function is idempotent.

Demo rows go through the same services the console uses, so every counter
and history row is consistent with how the product really writes them.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from pathlib import Path

from django.conf import settings

from accounts.models import BalanceHistory, User
from accounts.services.users import user_balance_adjust, user_create

DEMO_ADMIN_EMAIL = "admin@tollgate.local"

DEMO_CUSTOMERS = [
    # email, name, balance to add, status, rpm
    ("alice@example.com", "Alice Chen", Decimal("250.00"), User.Status.ACTIVE, 60),
    ("bob@example.com", "Bob Martins", Decimal("42.50"), User.Status.ACTIVE, 0),
    ("carol@example.com", "Carol Nakamura", Decimal("1200.00"), User.Status.ACTIVE, 300),
    ("dave@example.com", "Dave Okafor", Decimal("0.75"), User.Status.ACTIVE, 20),
    ("erin@example.com", "Erin Walsh", Decimal("15.00"), User.Status.DISABLED, 0),
    ("frank@example.com", "Frank Ibrahim", Decimal("980.10"), User.Status.ACTIVE, 120),
]


def demo_admin_password() -> str:
    """A password generated once per checkout, kept in var/ so the printed login stays valid."""
    path = Path(settings.VAR_DIR) / "demo_admin_password"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(12))
        path.chmod(0o600)
    return path.read_text().strip()


def seed_admin(password: str) -> User:
    admin = User.objects.filter(email=DEMO_ADMIN_EMAIL).first()
    if admin is None:
        admin = User.objects.create_superuser(email=DEMO_ADMIN_EMAIL, password=password, username="admin")
    else:
        admin.set_password(password)
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.status = User.Status.ACTIVE
        admin.save(update_fields=["password", "is_staff", "is_superuser", "is_active", "status"])
    return admin


def seed_customers(admin: User) -> list[User]:
    customers = []
    for email, name, balance, status, rpm in DEMO_CUSTOMERS:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = user_create(
                email=email,
                password=None,
                fields={
                    "username": name,
                    "status": status,
                    "rpm_limit": rpm,
                    "is_active": status == User.Status.ACTIVE,
                },
            )
        if not user.balance_history.exists():
            user_balance_adjust(
                user_id=user.pk,
                operation=BalanceHistory.Operation.ADD,
                amount=balance + Decimal("10"),
                note="Welcome credit + first top-up",
                changed_by=admin,
            )
            user_balance_adjust(
                user_id=user.pk,
                operation=BalanceHistory.Operation.SUBTRACT,
                amount=Decimal("10"),
                note="Refund of duplicate top-up",
                changed_by=admin,
            )
        customers.append(user)
    return customers
