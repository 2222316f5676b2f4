"""Demo data for `manage.py seed_demo`. Every function is idempotent.

Demo rows go through the same services the console uses, so every counter
and history row is consistent with how the product really writes them.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from accounts.models import BalanceHistory, Group, UpstreamAccount, User
from accounts.services.groups import group_create, group_update
from accounts.services.upstream import upstream_account_create
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
                actor=None,
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


# --- Groups and upstream accounts ----------------------------------------------------------------

DEMO_GROUPS = [
    # name, platform, multiplier, extra fields
    ("anthropic-standard", "anthropic", "1", {"description": "Claude for everyone, paid from balance."}),
    ("anthropic-premium", "anthropic", "1.5", {"is_exclusive": True, "description": "Opus-first pool."}),
    ("anthropic-aws", "anthropic", "1.2", {"description": "Claude through AWS Bedrock."}),
    ("openai-standard", "openai", "1", {}),
    (
        "openai-subscription",
        "openai",
        "1",
        {
            "subscription_type": "subscription",
            "daily_limit_usd": Decimal("20"),
            "weekly_limit_usd": Decimal("100"),
            "monthly_limit_usd": Decimal("300"),
            "description": "Monthly plans; usage comes out of the subscription's windows.",
        },
    ),
    ("gemini-standard", "gemini", "0.8", {}),
    ("antigravity-pool", "antigravity", "1", {"status": "inactive"}),
]

# name, platform, type, groups, credentials, fields
# fmt: off
DEMO_ACCOUNTS = [
    ("claude-max-01", "anthropic", "oauth", ["anthropic-standard", "anthropic-premium"],
     {"access_token": "demo-oauth-access", "refresh_token": "demo-oauth-refresh"},
     {"priority": 10, "cache_ttl_override": "1h"}),
    ("claude-setup-02", "anthropic", "setup-token", ["anthropic-standard"],
     {"setup_token": "demo-setup-token"}, {"priority": 20}),
    ("anthropic-api-01", "anthropic", "apikey", ["anthropic-standard", "anthropic-premium"],
     {"api_key": "sk-ant-demo-api-01"},
     {"priority": 30, "quota_limit_usd": Decimal("1000"), "quota_daily_limit_usd": Decimal("50"),
      "quota_weekly_limit_usd": Decimal("300")}),
    ("anthropic-api-02", "anthropic", "apikey", ["anthropic-standard"],
     {"api_key": "sk-ant-demo-api-02"},
     {"priority": 40, "quota_daily_limit_usd": Decimal("25"), "quota_daily_reset_mode": "fixed",
      "quota_daily_reset_hour": 9, "quota_timezone": "Asia/Shanghai"}),
    ("claude-relay-eu", "anthropic", "upstream", ["anthropic-standard"],
     {"api_key": "sk-relay-demo", "base_url": "https://relay.example.eu"},
     {"priority": 60, "concurrency": 10, "quota_limit_usd": Decimal("200")}),
    ("bedrock-us-east", "anthropic", "bedrock", ["anthropic-aws"],
     {"auth_mode": "sigv4", "aws_access_key_id": "AKIADEMOEXAMPLE", "aws_secret_access_key": "demo-secret",
      "aws_region": "us-east-1"},
     {"priority": 20, "quota_daily_limit_usd": Decimal("100"), "quota_weekly_limit_usd": Decimal("500"),
      "quota_weekly_reset_mode": "fixed", "quota_weekly_reset_weekday": 0}),
    ("bedrock-apikey-west", "anthropic", "bedrock", ["anthropic-aws"],
     {"auth_mode": "apikey", "api_key": "demo-bedrock-api-key", "aws_region": "us-west-2"},
     {"priority": 30, "quota_daily_limit_usd": Decimal("40")}),
    ("openai-api-01", "openai", "apikey", ["openai-standard", "openai-subscription"],
     {"api_key": "sk-proj-demo-01"},
     {"priority": 10, "quota_weekly_limit_usd": Decimal("150"), "quota_limit_usd": Decimal("2000")}),
    ("chatgpt-plus-01", "openai", "oauth", ["openai-subscription"],
     {"access_token": "demo-chatgpt-access"}, {"priority": 20}),
    ("openai-relay", "openai", "upstream", ["openai-standard"],
     {"api_key": "sk-relay-openai", "base_url": "https://openai-relay.example.com"},
     {"priority": 50, "status": "error", "error_message": "401 Unauthorized: invalid api key"}),
    ("gemini-api-01", "gemini", "apikey", ["gemini-standard"],
     {"api_key": "AIza-demo-key"}, {"priority": 10, "quota_daily_limit_usd": Decimal("30")}),
    ("gemini-oauth-01", "gemini", "oauth", ["gemini-standard"], {"access_token": "demo-gemini-oauth"}, {}),
    ("antigravity-01", "antigravity", "oauth", ["antigravity-pool"], {"access_token": "demo-ag-1"}, {}),
    ("antigravity-02", "antigravity", "oauth", ["antigravity-pool"], {"access_token": "demo-ag-2"},
     {"schedulable": False}),
]
# fmt: on


def seed_groups_and_accounts() -> dict[str, Group]:
    """Groups of every platform (one of them a subscription group) and accounts in them, some near quota.

    Runs before anything else that needs groups (keys, subscriptions). Their usage comes later,
    from billing's demo week recorded through usage_record, so every counter matches the ledger.
    """
    groups: dict[str, Group] = {}
    for name, platform, multiplier, extra in DEMO_GROUPS:
        group = Group.objects.filter(name=name).first()
        if group is None:
            fields = {"name": name, "platform": platform, "rate_multiplier": Decimal(multiplier), **extra}
            group = group_create(fields=fields, actor=None)
        groups[name] = group
    accounts: dict[str, UpstreamAccount] = {}
    for name, platform, kind, group_names, credentials, extra in DEMO_ACCOUNTS:
        account = UpstreamAccount.objects.filter(name=name).first()
        if account is None:
            account = upstream_account_create(
                fields={"name": name, "platform": platform, "type": kind, **extra},
                credentials=credentials,
                groups=[groups[g] for g in group_names],
                actor=None,
            )
        accounts[name] = account
    premium = groups["anthropic-premium"]
    if not premium.model_routing:
        group_update(
            group=premium,
            fields={
                "fallback_group": groups["anthropic-standard"],
                "model_routing_enabled": True,
                "model_routing": {"claude-opus-*": [accounts["claude-max-01"].pk]},
            },
            actor=None,
        )
    return groups


# --- API keys and subscriptions -------------------------------------------------------------------

# Groups the keys below use; seed_groups_and_accounts() normally made them already.
DEMO_KEY_GROUPS = {
    "anthropic-standard": {"platform": "anthropic"},
    "anthropic-premium": {"platform": "anthropic", "is_exclusive": True},
    "openai-standard": {"platform": "openai"},
    "openai-subscription": {
        "platform": "openai",
        "subscription_type": "subscription",
        "daily_limit_usd": Decimal("20"),
        "weekly_limit_usd": Decimal("100"),
        "monthly_limit_usd": Decimal("300"),
    },
}

# email, group, days, started days ago, what happens after the demo week ("" / "suspend" / "expire")
DEMO_SUBSCRIPTIONS = [
    ("frank@example.com", "openai-subscription", 30, 8, ""),
    ("carol@example.com", "openai-subscription", 30, 20, ""),
    ("bob@example.com", "openai-subscription", 30, 5, "suspend"),
    ("erin@example.com", "openai-subscription", 30, 45, "expire"),
]

# email, key name, group, fields, then ("disable" after the demo week, or "")
DEMO_KEYS = [
    (
        "alice@example.com",
        "alice-prod",
        "anthropic-standard",
        {
            "quota_usd": Decimal("500"),
            "rate_limit_5h_usd": Decimal("40"),
            "rate_limit_1d_usd": Decimal("150"),
            "expires_days": 90,
        },
        "",
    ),
    (
        "alice@example.com",
        "alice-office",
        "anthropic-standard",
        {
            "ip_allowlist": ["203.0.113.0/24", "198.51.100.7"],
            "ip_denylist": ["203.0.113.66"],
            "expires_days": 6,
        },
        "",
    ),
    (
        "bob@example.com",
        "bob-trial",
        "openai-standard",
        {"quota_usd": Decimal("2")},
        "",
    ),
    ("carol@example.com", "carol-ci", "anthropic-premium", {"expires_days": -3}, ""),
    (
        "dave@example.com",
        "dave-old-laptop",
        "anthropic-standard",
        {"quota_usd": Decimal("60")},
        "disable",
    ),
    (
        "frank@example.com",
        "frank-plus",
        "openai-subscription",
        {"rate_limit_5h_usd": Decimal("8"), "rate_limit_1d_usd": Decimal("18"), "timezone": "Europe/Berlin"},
        "",
    ),
]


def seed_keys_and_subscriptions(admin: User) -> None:
    """Keys in every state (active, exhausted, expired, disabled, IP-restricted) and subscriptions that
    are live, suspended and expired. Secrets are created and dropped: nobody needs a demo key's secret."""

    from accounts.models import APIKey, Subscription
    from accounts.services.keys import api_key_create
    from accounts.services.subscriptions import subscription_assign, subscription_expire_due

    now = timezone.now()
    groups = {
        name: Group.objects.get_or_create(name=name, defaults=defaults)[0]
        for name, defaults in DEMO_KEY_GROUPS.items()
    }
    emails = {row[0] for row in DEMO_KEYS + DEMO_SUBSCRIPTIONS}
    users = {user.email: user for user in User.objects.filter(email__in=emails)}

    for email, group_name, days, started, _then in DEMO_SUBSCRIPTIONS:
        user, group = users.get(email), groups[group_name]
        if user is None or Subscription.objects.filter(user=user, group=group).exists():
            continue
        start = now - timedelta(days=started)
        subscription_assign(
            user=user, group=group, days=days, notes="Demo plan", assigned_by=admin, now=start
        )
    subscription_expire_due(now=now)

    if "anthropic-premium" in groups and "carol@example.com" in users:
        users["carol@example.com"].allowed_groups.add(groups["anthropic-premium"])
    for email, name, group_name, fields, _then in DEMO_KEYS:
        user = users.get(email)
        if user is None or APIKey.objects.filter(user=user, name=name).exists():
            continue
        fields = dict(fields)
        expires_days = fields.pop("expires_days", None)
        expires_at = now + timedelta(days=expires_days) if expires_days is not None else None
        api_key_create(
            user=user, group=groups[group_name], name=name, expires_at=expires_at, now=now, **fields
        )


def finish_demo_states() -> None:
    """After the demo week of usage: suspend and disable what the tables say, so those rows
    keep the history they had before (the gateway would refuse them from now on)."""
    from accounts.models import APIKey, Subscription
    from accounts.services.keys import api_key_set_enabled
    from accounts.services.subscriptions import subscription_suspend

    for email, group_name, _days, _started, then in DEMO_SUBSCRIPTIONS:
        if then == "suspend":
            for subscription in Subscription.objects.filter(
                user__email=email, group__name=group_name, status=Subscription.Status.ACTIVE
            ):
                subscription_suspend(subscription_id=subscription.pk)
    for email, name, _group, _fields, then in DEMO_KEYS:
        if then == "disable":
            for key in APIKey.objects.filter(user__email=email, name=name, status=APIKey.Status.ACTIVE):
                api_key_set_enabled(key_id=key.pk, enabled=False)


# --- The gateway demo (`make run`) ---------------------------------------------------------------

DEMO_GATEWAY_KEY = ("alice@example.com", "demo-gateway", "openai-standard")
RELAYED_TYPES = ("apikey", "upstream")


def point_demo_accounts_at(url: str) -> int:
    """Give the demo's API-key and relay accounts `url` as their base URL (the fake upstream of
    `make run`); OAuth and setup-token accounts follow GATEWAY_*_BASE_URL. The number changed."""
    from accounts.selectors.upstream import upstream_account_credentials
    from accounts.services.upstream import upstream_account_update

    changed = 0
    names = [row[0] for row in DEMO_ACCOUNTS]
    for account in UpstreamAccount.objects.filter(name__in=names, type__in=RELAYED_TYPES):
        stored = upstream_account_credentials(account)
        if stored.get("base_url") == url:
            continue
        upstream_account_update(
            account=account, fields={}, credentials={**stored, "base_url": url}, actor=None
        )
        changed += 1
    return changed


def demo_api_key() -> str:
    """The secret of the demo's gateway key: created once, kept in var/ like the admin password, so
    the printed curl line works on every `make run` (a key's secret is otherwise shown only once)."""
    from accounts.models import APIKey
    from accounts.rules import api_key_hash
    from accounts.services.keys import api_key_create, api_key_delete

    path = Path(settings.VAR_DIR) / "demo_api_key"
    secret = path.read_text().strip() if path.exists() else ""
    if secret and APIKey.objects.filter(key_hash=api_key_hash(secret), status=APIKey.Status.ACTIVE).exists():
        return secret
    email, name, group_name = DEMO_GATEWAY_KEY
    user = User.objects.get(email=email)
    for stale in APIKey.objects.filter(user=user, name=name):
        api_key_delete(key_id=stale.pk)
    _, secret = api_key_create(user=user, group=Group.objects.get(name=group_name), name=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secret)
    path.chmod(0o600)
    return secret
