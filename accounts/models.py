"""Users, groups, upstream accounts, API keys and subscriptions (docs/entities.md).

Money is Decimal: balances, quotas and costs carry 8 decimal places.
Counters on these models are only ever changed by the atomic services in
accounts/services, never by read-modify-write on an instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.functional import cached_property

from accounts import windows
from accounts.roles import ConsoleRole, has_console_role

MONEY = {"max_digits": 20, "decimal_places": 8}
# An account's priority, and its priority inside a group: lower is preferred.
MIN_PRIORITY = 0
MAX_PRIORITY = 10_000
ZERO = Decimal("0")


def money_field(default: Decimal | None = ZERO, **kwargs) -> models.DecimalField:
    return models.DecimalField(**MONEY, default=default, **kwargs)


def all_at_least_zero(*fields: str) -> Q:
    """Each field >= 0. An empty (NULL) field passes, as SQL CHECK constraints treat it."""
    condition = Q()
    for field in fields:
        condition &= Q(**{f"{field}__gte": 0})
    return condition


def row_rule(condition: Q, name: str, message: str) -> models.CheckConstraint:
    """A one-row rule the database enforces; `message` is what full_clean() says when it is broken."""
    return models.CheckConstraint(condition=condition, name=name, violation_error_message=message)


class Platform(models.TextChoices):
    ANTHROPIC = "anthropic", "Anthropic"
    OPENAI = "openai", "OpenAI"
    GEMINI = "gemini", "Gemini"
    ANTIGRAVITY = "antigravity", "Antigravity"


class TollgateUserManager(UserManager):
    """Users sign in with their email; the username is a display handle."""

    use_in_migrations = True

    def _create_user_object(self, username, email, password, **extra_fields):
        email = self.normalize_email(email).lower()
        username = username or email
        return super()._create_user_object(username, email, password, **extra_fields)

    def get_by_natural_key(self, username):
        # Sign-in is by email, whatever case the person types it in.
        return self.get(email__iexact=username.strip())

    def create_user(self, email=None, password=None, username=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(username, email, password, **extra_fields)

    def create_superuser(self, email=None, password=None, username=None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        extra_fields.setdefault("role", User.Role.ADMIN)
        extra_fields.setdefault("console_role", ConsoleRole.ADMIN)
        return self._create_user(username, email, password, **extra_fields)


class User(AbstractUser):
    """A customer of the relay or a staff member (staff have is_staff and a console role)."""

    # `role` is the data model's admin / user label and grants nothing; what a staff member may
    # do in the console is `console_role` (accounts/roles.py).
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        USER = "user", "User"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    # The username is a free-form handle; email is the login.
    username = models.CharField(max_length=150, blank=True)
    email = models.EmailField("email address", unique=True)
    role = models.CharField(max_length=16, choices=Role, default=Role.USER, db_index=True)
    status = models.CharField(max_length=16, choices=Status, default=Status.ACTIVE, db_index=True)
    # Read only while is_staff; a superuser is an admin whatever it says. New staff start as
    # viewers (least privilege): an admin raises them.
    console_role = models.CharField(
        "console role",
        max_length=16,
        choices=ConsoleRole,
        default=ConsoleRole.VIEWER,
        help_text="What this staff member may do in the console (docs/console.md#roles).",
    )
    balance = money_field(help_text="USD. Goes negative only through billing overdraft.")
    # In-flight requests' estimates, held before relaying and released when they are recorded
    # (docs/gateway.md#holds-and-settle). Never edited by hand.
    balance_held = money_field(help_text="USD held by requests in flight.")
    total_recharged = money_field(help_text="USD added to the balance over the user's lifetime.")
    concurrency = models.PositiveIntegerField(default=5, help_text="Requests in flight at once.")
    rpm_limit = models.PositiveIntegerField(default=0, help_text="Requests per minute; 0 = no limit.")
    allowed_groups = models.ManyToManyField(
        "accounts.Group",
        blank=True,
        related_name="allowed_users",
        help_text="Exclusive groups this user may bind keys to.",
    )
    notes = models.TextField(blank=True)
    last_active_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = TollgateUserManager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            row_rule(
                Q(total_recharged__gte=0),
                "user_total_recharged_non_negative",
                "The total recharged cannot be negative.",
            ),
            row_rule(
                Q(console_role__in=ConsoleRole.values),
                "user_console_role_known",
                "The console role is viewer, operator or admin.",
            ),
            row_rule(Q(balance_held__gte=0), "user_balance_held_non_negative", "A hold cannot be negative."),
        ]
        indexes = [
            models.Index(Lower("username"), name="user_username_lower_idx"),
            models.Index(fields=["balance"], name="user_balance_idx"),
            models.Index(fields=["last_active_at"], name="user_last_active_idx"),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = (self.email or "").strip().lower()
        if not self.username:
            self.username = self.email.split("@")[0]

    @property
    def is_disabled(self) -> bool:
        return self.status == self.Status.DISABLED

    @property
    def console_access(self) -> str:
        """Empty for a customer, else the role the console gives them (a superuser's is admin)."""
        if not self.is_staff:
            return ""
        return ConsoleRole.ADMIN if self.is_superuser else self.console_role

    # Django admin asks model permissions; the console role answers them. An admin may do
    # everything there (as a superuser may); nobody else gets in (console.admin_site).
    def has_perm(self, perm, obj=None) -> bool:
        return has_console_role(self, ConsoleRole.ADMIN) or super().has_perm(perm, obj)

    def has_module_perms(self, app_label) -> bool:
        return has_console_role(self, ConsoleRole.ADMIN) or super().has_module_perms(app_label)


class BalanceHistory(models.Model):
    """One row per balance change: who changed it, how, and the result."""

    class Operation(models.TextChoices):
        SET = "set", "Set"
        ADD = "add", "Add"
        SUBTRACT = "subtract", "Subtract"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="balance_history")
    operation = models.CharField(max_length=16, choices=Operation)
    amount = money_field(default=None, help_text="USD given by the operator.")
    balance_before = money_field(default=None)
    balance_after = money_field(default=None)
    note = models.CharField(max_length=500, blank=True)
    changed_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "balance history"
        constraints = [
            row_rule(
                Q(amount__gte=0),
                "balance_history_amount_non_negative",
                "The amount is given as a positive number; the operation says its direction.",
            ),
        ]
        indexes = [models.Index(fields=["user", "-created_at"], name="balance_hist_user_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.operation} {self.amount}"

    @property
    def delta(self) -> Decimal:
        return self.balance_after - self.balance_before


class Group(models.Model):
    """A pool of upstream accounts that keys are bound to, carrying the price multiplier."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        INACTIVE = "inactive", "Inactive"

    class SubscriptionType(models.TextChoices):
        STANDARD = "standard", "Standard (pay from balance)"
        SUBSCRIPTION = "subscription", "Subscription"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    platform = models.CharField(max_length=32, choices=Platform, db_index=True)
    rate_multiplier = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0.000001"))],
    )
    is_exclusive = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status, default=Status.ACTIVE, db_index=True)
    subscription_type = models.CharField(
        max_length=16, choices=SubscriptionType, default=SubscriptionType.STANDARD, db_index=True
    )
    # Empty or negative = unlimited; 0 = no usage allowed (sub2api's rule).
    daily_limit_usd = money_field(default=None, null=True, blank=True)
    weekly_limit_usd = money_field(default=None, null=True, blank=True)
    monthly_limit_usd = money_field(default=None, null=True, blank=True)
    default_validity_days = models.PositiveIntegerField(default=30)
    image_price_1k = money_field(default=None, null=True, blank=True)
    image_price_2k = money_field(default=None, null=True, blank=True)
    image_price_4k = money_field(default=None, null=True, blank=True)
    allow_image_generation = models.BooleanField(default=True)
    claude_code_only = models.BooleanField(default=False)
    fallback_group = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="fallback_for"
    )
    fallback_group_on_invalid_request = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="invalid_fallback_for"
    )
    # {"model pattern": [account id, …]}: an exact pattern beats a trailing-"*" prefix;
    # ids are tried in list order. See accounts.rules.group_routed_account_ids.
    model_routing = models.JSONField(default=dict, blank=True)
    model_routing_enabled = models.BooleanField(default=False)
    rpm_limit = models.PositiveIntegerField(default=0)
    timezone = models.CharField(
        max_length=64, default="", blank=True, help_text="Empty = settings.TIME_ZONE."
    )
    sort_order = models.IntegerField(default=0, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sort_order", "id"]
        constraints = [
            row_rule(
                Q(rate_multiplier__gt=0),
                "group_rate_multiplier_positive",
                "The rate multiplier must be above 0.",
            ),
            row_rule(
                all_at_least_zero("image_price_1k", "image_price_2k", "image_price_4k"),
                "group_image_prices_non_negative",
                "Image prices cannot be negative.",
            ),
            row_rule(
                ~Q(fallback_group=F("pk")) & ~Q(fallback_group_on_invalid_request=F("pk")),
                "group_fallback_not_itself",
                "A group cannot fall back to itself.",
            ),
            # "OPENAI-STANDARD" beside "openai-standard" would be two groups no operator can tell apart.
            models.UniqueConstraint(
                Lower("name"),
                name="group_name_unique_ignoring_case",
                violation_error_message="Another group already has this name (names ignore case).",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_subscription(self) -> bool:
        return self.subscription_type == self.SubscriptionType.SUBSCRIPTION


class UserGroupRate(models.Model):
    """A per-user override of a group's rate multiplier."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="group_rates")
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="user_rates")
    rate_multiplier = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(Decimal("0.000001"))]
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "group"], name="user_group_rate_unique"),
            row_rule(
                Q(rate_multiplier__gt=0), "user_group_rate_positive", "The rate multiplier must be above 0."
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}@{self.group_id}×{self.rate_multiplier}"


class UpstreamAccount(models.Model):
    """One credential at a provider (shown as "Account")."""

    class Type(models.TextChoices):
        OAUTH = "oauth", "OAuth"
        SETUP_TOKEN = "setup-token", "Setup token"
        APIKEY = "apikey", "API key"
        UPSTREAM = "upstream", "Upstream relay"
        BEDROCK = "bedrock", "AWS Bedrock"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        INACTIVE = "inactive", "Inactive"
        ERROR = "error", "Error"

    class ResetMode(models.TextChoices):
        ROLLING = "rolling", "Rolling"
        FIXED = "fixed", "Fixed"

    class CacheTTL(models.TextChoices):
        OFF = "", "Off"
        FIVE_MINUTES = "5m", "5 minutes"
        ONE_HOUR = "1h", "1 hour"

    name = models.CharField(max_length=100)
    notes = models.TextField(blank=True)
    platform = models.CharField(max_length=32, choices=Platform, db_index=True)
    type = models.CharField(max_length=16, choices=Type, db_index=True)
    # Fernet ciphertext of a JSON object; see accounts/crypto.py. Never rendered.
    credentials_encrypted = models.TextField(blank=True, editable=False)
    groups = models.ManyToManyField(Group, through="GroupAccount", related_name="accounts", blank=True)

    priority = models.IntegerField(default=50, db_index=True, help_text="Lower is preferred.")
    concurrency = models.PositiveIntegerField(default=3)
    rate_multiplier = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal("1"),
        validators=[MinValueValidator(Decimal("0.000001"))],
    )
    status = models.CharField(max_length=16, choices=Status, default=Status.ACTIVE, db_index=True)
    error_message = models.TextField(blank=True)
    schedulable = models.BooleanField(default=True, db_index=True)
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    auto_pause_on_expired = models.BooleanField(default=True)
    last_used_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cache_ttl_override = models.CharField(max_length=4, choices=CacheTTL, default=CacheTTL.OFF, blank=True)
    # The gateway's view of the account (docs/gateway.md#account-choice): the models it serves
    # (empty = every model; a pattern may end in one "*") and the name each is sent upstream as,
    # {source pattern: upstream model}, applied after the channel's mapping.
    supported_models = models.JSONField(default=list, blank=True)
    model_mapping = models.JSONField(default=dict, blank=True)

    # Quotas (apikey, bedrock, upstream types). 0 = no limit.
    quota_limit_usd = money_field()
    quota_used_usd = money_field()
    # In-flight requests' estimates, held before relaying and released when they are recorded
    # (docs/gateway.md#holds-and-settle). Never edited by hand.
    quota_held_usd = money_field()
    quota_daily_limit_usd = money_field()
    quota_daily_used_usd = money_field()
    quota_daily_start = models.DateTimeField(null=True, blank=True)
    quota_daily_reset_mode = models.CharField(max_length=8, choices=ResetMode, default=ResetMode.ROLLING)
    quota_daily_reset_hour = models.PositiveSmallIntegerField(default=0)
    quota_weekly_limit_usd = money_field()
    quota_weekly_used_usd = money_field()
    quota_weekly_start = models.DateTimeField(null=True, blank=True)
    quota_weekly_reset_mode = models.CharField(max_length=8, choices=ResetMode, default=ResetMode.ROLLING)
    quota_weekly_reset_hour = models.PositiveSmallIntegerField(default=0)
    quota_weekly_reset_weekday = models.PositiveSmallIntegerField(default=0, help_text="0 = Monday.")
    quota_timezone = models.CharField(max_length=64, default="UTC")
    quota_reset_at = models.DateTimeField(
        null=True, blank=True, help_text="Last 'reset quota': the ledger counts from here (reconcile)."
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    QUOTA_TYPES = (Type.APIKEY, Type.BEDROCK, Type.UPSTREAM)
    CACHE_TTL_TYPES = (Type.OAUTH, Type.SETUP_TOKEN)

    class Meta:
        ordering = ["priority", "id"]
        constraints = [
            row_rule(
                Q(rate_multiplier__gt=0),
                "upstream_rate_multiplier_positive",
                "The rate multiplier must be greater than 0.",
            ),
            row_rule(
                Q(priority__gte=MIN_PRIORITY, priority__lte=MAX_PRIORITY),
                "upstream_priority_in_range",
                f"The priority is a whole number from {MIN_PRIORITY} to {MAX_PRIORITY:,}.",
            ),
            row_rule(
                all_at_least_zero(
                    "quota_limit_usd",
                    "quota_used_usd",
                    "quota_daily_limit_usd",
                    "quota_daily_used_usd",
                    "quota_weekly_limit_usd",
                    "quota_weekly_used_usd",
                    "quota_held_usd",
                ),
                "upstream_quota_non_negative",
                "Quota limits and used amounts cannot be negative.",
            ),
            row_rule(
                Q(quota_daily_reset_hour__lte=23)
                & Q(quota_weekly_reset_hour__lte=23)
                & Q(quota_weekly_reset_weekday__lte=6),
                "upstream_quota_reset_in_range",
                "A reset hour is 0–23 and a weekday 0 (Monday) to 6 (Sunday).",
            ),
        ]
        indexes = [
            models.Index(Lower("name"), name="upstream_name_lower_idx"),
            models.Index(fields=["name"], name="upstream_name_idx"),
            models.Index(fields=["concurrency"], name="upstream_concurrency_idx"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_bedrock(self) -> bool:
        return self.type == self.Type.BEDROCK

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def current_status(self) -> str:
        """The stored status, except that an active account past its expiry reads as expired."""
        return "expired" if self.status == self.Status.ACTIVE and self.is_expired else self.status

    @property
    def current_status_label(self) -> str:
        return "Expired" if self.current_status == "expired" else self.get_status_display()

    @property
    def platform_badge(self) -> str:
        if self.is_bedrock:
            return "Anthropic | AWS"
        return self.get_platform_display()

    @property
    def has_quota(self) -> bool:
        """Quotas apply to the types that bill per token at the provider (docs/windows.md#account-quotas)."""
        return self.type in self.QUOTA_TYPES

    @property
    def supports_cache_ttl_override(self) -> bool:
        return self.platform == Platform.ANTHROPIC and self.type in self.CACHE_TTL_TYPES


class GroupAccount(models.Model):
    """Membership of an upstream account in a group, with a per-group priority."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="memberships")
    account = models.ForeignKey(UpstreamAccount, on_delete=models.CASCADE, related_name="memberships")
    priority = models.IntegerField(default=50)

    class Meta:
        ordering = ["priority", "id"]
        constraints = [
            models.UniqueConstraint(fields=["group", "account"], name="group_account_unique"),
            row_rule(
                Q(priority__gte=MIN_PRIORITY, priority__lte=MAX_PRIORITY),
                "group_account_priority_in_range",
                f"The priority is a whole number from {MIN_PRIORITY} to {MAX_PRIORITY:,}.",
            ),
        ]
        indexes = [models.Index(fields=["group", "priority"], name="group_account_priority_idx")]

    def __str__(self) -> str:
        return f"{self.account_id} in {self.group_id} (priority {self.priority})"


def timezone_name(name: str) -> str:
    """A configured IANA zone, with empty meaning settings.TIME_ZONE (docs/windows.md#timezones)."""
    return name or settings.TIME_ZONE


@dataclass(frozen=True, slots=True)
class UsageWindow:
    """One usage window as a page shows it, with the display rule applied: expired reads 0."""

    kind: str
    label: str
    used_usd: Decimal
    limit_usd: Decimal | None  # None = no limit
    started: bool  # the window has a start (it was used at least once since the last reset)
    expired: bool
    resets_at: datetime | None  # when the live window ends, or the next calendar reset
    ended_at: datetime | None = None  # when an expired window ran out
    start: datetime | None = None  # the live window's start

    @property
    def percent(self) -> int | None:
        if not self.limit_usd or self.limit_usd <= 0:
            return None
        return int(self.used_usd * 100 / self.limit_usd)

    @property
    def meter_low(self) -> Decimal | None:
        """<meter> thresholds: green below 80% of the limit, amber up to it, red at it (optimum is 0)."""
        return None if not self.limit_usd or self.limit_usd <= 0 else self.limit_usd * Decimal("0.8")

    @property
    def meter_high(self) -> Decimal | None:
        return None if not self.limit_usd or self.limit_usd <= 0 else self.limit_usd - Decimal("0.00000001")

    @property
    def level(self) -> str:
        """ok / warn / danger for colouring; "none" when there is no limit."""
        if self.limit_usd is None:
            return "none"
        if self.limit_usd <= 0:
            return "danger" if self.limit_usd == 0 else "none"
        return usage_level(self.used_usd, self.limit_usd)


def usage_level(used: Decimal, limit: Decimal) -> str:
    if used >= limit:
        return "danger"
    return "warn" if used * 100 >= limit * 80 else "ok"


class APIKey(models.Model):
    """A user's credential for the gateway. Only the SHA-256 of the secret is stored."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"
        QUOTA_EXHAUSTED = "quota_exhausted", "Quota exhausted"
        EXPIRED = "expired", "Expired"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_keys")
    group = models.ForeignKey(Group, on_delete=models.PROTECT, null=True, blank=True, related_name="api_keys")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=16, editable=False, db_index=True)
    key_last4 = models.CharField(max_length=4, editable=False)
    status = models.CharField(max_length=20, choices=Status, default=Status.ACTIVE, db_index=True)
    ip_allowlist = models.JSONField(default=list, blank=True)
    ip_denylist = models.JSONField(default=list, blank=True)
    quota_usd = money_field(help_text="0 = unlimited.")
    quota_used_usd = money_field()
    # In-flight requests' estimates, held before relaying and released when they are recorded
    # (docs/gateway.md#holds-and-settle). Never edited by hand.
    held_usd = money_field()
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    rate_limit_5h_usd = money_field()
    rate_limit_1d_usd = money_field()
    rate_limit_7d_usd = money_field()
    concurrency = models.PositiveIntegerField(
        default=0, help_text="Requests in flight at once with this key; 0 = no limit."
    )
    usage_5h_usd = money_field()
    usage_1d_usd = money_field()
    usage_7d_usd = money_field()
    window_5h_start = models.DateTimeField(null=True, blank=True)
    window_1d_start = models.DateTimeField(null=True, blank=True)
    window_7d_start = models.DateTimeField(null=True, blank=True)
    # When an operator last zeroed the counters: reconcile counts the ledger from these on
    # (docs/jobs.md#reconcile-runs).
    quota_reset_at = models.DateTimeField(null=True, blank=True)
    windows_reset_at = models.DateTimeField(null=True, blank=True)
    timezone = models.CharField(
        max_length=64, default="", blank=True, help_text="Empty = settings.TIME_ZONE."
    )
    last_used_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    WINDOWS = (
        ("5h", "5 hours", "rate_limit_5h_usd", "usage_5h_usd", "window_5h_start"),
        ("1d", "1 day", "rate_limit_1d_usd", "usage_1d_usd", "window_1d_start"),
        ("7d", "7 days", "rate_limit_7d_usd", "usage_7d_usd", "window_7d_start"),
    )

    class Meta:
        ordering = ["-id"]
        verbose_name = "API key"
        constraints = [
            row_rule(
                all_at_least_zero(
                    "quota_usd",
                    "quota_used_usd",
                    "rate_limit_5h_usd",
                    "rate_limit_1d_usd",
                    "rate_limit_7d_usd",
                    "usage_5h_usd",
                    "usage_1d_usd",
                    "usage_7d_usd",
                    "held_usd",
                ),
                "apikey_amounts_non_negative",
                "Quotas, window limits and usage cannot be negative.",
            ),
        ]
        indexes = [
            models.Index(Lower("name"), name="apikey_name_lower_idx"),
            models.Index(fields=["name"], name="apikey_name_idx"),
            models.Index(fields=["quota_used_usd"], name="apikey_quota_used_idx"),
            models.Index(fields=["user", "-created_at"], name="apikey_user_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"{self.key_prefix}…{self.key_last4}"

    @property
    def current_status(self) -> str:
        """The stored status, except that an active key past its expiry reads as expired."""
        if self.status == self.Status.ACTIVE and self.expires_at and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.status

    @property
    def current_status_label(self) -> str:
        return self.Status(self.current_status).label

    @property
    def is_unlimited(self) -> bool:
        return self.quota_usd <= 0

    @property
    def quota_percent(self) -> int | None:
        return None if self.is_unlimited else int(self.quota_used_usd * 100 / self.quota_usd)

    @property
    def quota_level(self) -> str:
        return "none" if self.is_unlimited else usage_level(self.quota_used_usd, self.quota_usd)

    @property
    def is_ip_restricted(self) -> bool:
        return bool(self.ip_allowlist or self.ip_denylist)

    @property
    def timezone_name(self) -> str:
        return timezone_name(self.timezone)

    @property
    def usage_windows(self) -> list[UsageWindow]:
        """The 5h / 1d / 7d windows now. They restart on the next use, so an expired one has no reset time."""
        now = timezone.now()
        result = []
        for kind, label, limit_field, used_field, start_field in self.WINDOWS:
            start = getattr(self, start_field)
            expired = windows.key_window_expired(kind, start, now)
            end = windows.key_window_end(kind, start) if start else None
            limit = getattr(self, limit_field)
            result.append(
                UsageWindow(
                    kind=kind,
                    label=label,
                    used_usd=windows.key_window_effective_usage(kind, getattr(self, used_field), start, now),
                    limit_usd=limit if limit > 0 else None,
                    started=start is not None,
                    expired=expired,
                    resets_at=None if expired else end,
                    ended_at=end if expired else None,
                    start=None if expired else start,
                )
            )
        return result


class Subscription(models.Model):
    """Gives a user a subscription group for a term, with daily/weekly/monthly windows."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired"
        SUSPENDED = "suspended", "Suspended"
        REVOKED = "revoked", "Revoked"

    LIVE_STATUSES = (Status.ACTIVE, Status.SUSPENDED)

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="subscriptions")
    group = models.ForeignKey(Group, on_delete=models.PROTECT, related_name="subscriptions")
    starts_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16, choices=Status, default=Status.ACTIVE, db_index=True)
    daily_usage_usd = money_field()
    weekly_usage_usd = money_field()
    monthly_usage_usd = money_field()
    # In-flight requests' estimates, held before relaying and released when they are recorded
    # (docs/gateway.md#holds-and-settle). Never edited by hand.
    held_usd = money_field()
    daily_window_start = models.DateTimeField(null=True, blank=True)
    weekly_window_start = models.DateTimeField(null=True, blank=True)
    monthly_window_start = models.DateTimeField(null=True, blank=True)
    # When an operator last reset each window: reconcile counts the ledger from these on.
    daily_reset_at = models.DateTimeField(null=True, blank=True)
    weekly_reset_at = models.DateTimeField(null=True, blank=True)
    monthly_reset_at = models.DateTimeField(null=True, blank=True)
    assigned_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    WINDOWS = (
        ("daily", "Daily", "daily_limit_usd", "daily_usage_usd", "daily_window_start"),
        ("weekly", "Weekly", "weekly_limit_usd", "weekly_usage_usd", "weekly_window_start"),
        ("monthly", "Monthly", "monthly_limit_usd", "monthly_usage_usd", "monthly_window_start"),
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "group"],
                condition=models.Q(status__in=["active", "suspended"]),
                name="subscription_one_live_per_user_group",
            ),
            row_rule(
                Q(expires_at__gt=F("starts_at")),
                "subscription_ends_after_it_starts",
                "A subscription must end after it starts.",
            ),
            row_rule(
                all_at_least_zero("daily_usage_usd", "weekly_usage_usd", "monthly_usage_usd", "held_usd"),
                "subscription_usage_non_negative",
                "Window usage cannot be negative.",
            ),
        ]
        indexes = [
            models.Index(fields=["starts_at"], name="subscription_starts_idx"),
            models.Index(fields=["created_at"], name="subscription_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} → {self.group_id} until {self.expires_at:%Y-%m-%d}"

    @property
    def current_status(self) -> str:
        """The stored status, except that a live subscription past its term reads as expired."""
        if self.status in self.LIVE_STATUSES and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.status

    @property
    def current_status_label(self) -> str:
        return self.Status(self.current_status).label

    @property
    def is_live(self) -> bool:
        return self.status in self.LIVE_STATUSES and self.expires_at > timezone.now()

    @property
    def timezone_name(self) -> str:
        return timezone_name(self.group.timezone)

    @property
    def term_days(self) -> int:
        return round((self.expires_at - self.starts_at).total_seconds() / 86400)

    @cached_property
    def usage_windows(self) -> list[UsageWindow]:
        """Daily / weekly / monthly now, against the group's limits (empty or negative = none).

        These windows are calendar- or term-aligned, so the next reset is known even for a window
        that expired or never started; none is shown once the term has ended.
        """
        now = timezone.now()
        tz = self.timezone_name
        result = []
        for kind, label, limit_field, used_field, start_field in self.WINDOWS:
            start = getattr(self, start_field)
            rule = {"expires_at": self.expires_at, "tz": tz}
            expired = windows.subscription_window_expired(kind, start, now, **rule)
            current = windows.subscription_window_start(kind, now, starts_at=self.starts_at, tz=tz)
            limit = getattr(self.group, limit_field)
            result.append(
                UsageWindow(
                    kind=kind,
                    label=label,
                    used_usd=windows.subscription_effective_usage(
                        kind, getattr(self, used_field), start, now, **rule
                    ),
                    limit_usd=None if limit is None or limit < 0 else limit,
                    started=start is not None,
                    expired=expired,
                    resets_at=None
                    if now >= self.expires_at
                    else windows.subscription_window_end(kind, current, **rule),
                    start=None if expired else start,
                )
            )
        return result


class SignInCounter(models.Model):
    """Sign-in attempts for one email or one client address inside a window (console.throttle).

    Attempts are counted before the password is checked, in one INSERT … ON CONFLICT; a
    successful sign-in forgives its email's attempts and takes its own attempt back from the
    address. A row past `window_ends_at` counts as zero and is deleted lazily.
    """

    class Kind(models.TextChoices):
        USERNAME = "username", "Email"
        IP = "ip", "IP address"

    kind = models.CharField(max_length=16, choices=Kind)
    value = models.CharField(max_length=254)
    attempts = models.PositiveIntegerField(default=0)
    window_ends_at = models.DateTimeField(db_index=True, help_text="The count lapses, and a lock ends, then.")
    last_attempt_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_attempt_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "value"], name="sign_in_counter_one_per_value")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.value}: {self.attempts}"

    @property
    def limit(self) -> int:
        if self.kind == self.Kind.IP:
            return settings.LOGIN_IP_FAILURE_LIMIT
        return settings.LOGIN_FAILURE_LIMIT
