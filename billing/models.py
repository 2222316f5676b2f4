"""The usage ledger and its hourly rollups (docs/entities.md#usage-ledger, docs/recording.md#rollups).

A UsageLog row is written once by billing.services.usage_record and never updated. Its cost
columns are the CostBreakdown of billing/cost.py; the rest of the breakdown (effective prices,
interval, sources) is kept compactly in `breakdown`, so the explanation sentence re-renders
exactly as it was billed, whatever happens to the channel's prices later.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import MONEY, APIKey, Group, Subscription, UpstreamAccount, User
from billing.cost import CostBreakdown
from channels.pricing import BillingMode, BillingModelSource, PricingSource

ZERO = Decimal("0")
MULTIPLIER = {"max_digits": 12, "decimal_places": 6}


def money_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(**MONEY, default=ZERO, **kwargs)


class RequestOutcome(models.TextChoices):
    """How the request ended (docs/gateway.md#stream-accounting)."""

    COMPLETED = "completed", "Completed"
    UPSTREAM_CUT = "upstream_cut", "Upstream stopped early"
    CLIENT_DISCONNECTED = "client_disconnected", "Client disconnected"
    UPSTREAM_ERROR = "upstream_error", "Upstream error"
    GATEWAY_STOPPED = "gateway_stopped", "Gateway stopped mid-request (recovered)"


class UsageSource(models.TextChoices):
    """Where the token counts came from."""

    REPORTED = "reported", "Reported by the upstream"
    PARTIAL = "partial", "Input reported, output estimated"
    ESTIMATED = "estimated", "Estimated from the text"
    NONE = "none", "None (an error answer)"
    # Settled by recovery after the gateway process died mid-request (docs/gateway.md#pending-records).
    OBSERVED = "observed", "Observed before the gateway stopped"
    ESTIMATE = "estimate", "The admission estimate (the gateway stopped)"


# CostBreakdown fields that are stored as columns of the same name; the breakdown JSON keeps
# only the others, which keeps a million-row ledger narrow enough to total in under a second.
BREAKDOWN_COLUMNS = (
    "billing_mode",
    "pricing_source",
    "billing_model",
    "input_tokens",
    "output_tokens",
    "image_output_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "cache_read_tokens",
    "unit_count",
    "input_cost",
    "output_cost",
    "image_output_cost",
    "cache_creation_cost",
    "cache_read_cost",
    "unit_cost",
    "total_cost",
    "actual_cost",
    "account_cost",
    "rate_multiplier",
    "account_rate_multiplier",
)


class UsageLog(models.Model):
    """One billed request. Never updated after insert (reconcile corrections are separate rows)."""

    request_id = models.CharField(max_length=128)
    # A ledger keeps who paid: users with usage are disabled, not deleted. A deleted key leaves
    # its rows (and the user's) in place; it can never send the same request id again.
    # No single-column indexes on these four: the (column, -created_at) indexes below lead with
    # them, and every index costs each insert.
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="usage_logs", db_index=False)
    api_key = models.ForeignKey(
        APIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_logs", db_index=False
    )
    account = models.ForeignKey(
        UpstreamAccount,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="usage_logs",
        db_index=False,
    )
    group = models.ForeignKey(
        Group, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_logs", db_index=False
    )
    channel = models.ForeignKey(
        "channels.Channel", on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_logs"
    )
    subscription = models.ForeignKey(
        Subscription, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage_logs"
    )

    requested_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    billing_model = models.CharField(max_length=200, blank=True)
    billing_model_source = models.CharField(
        max_length=16, choices=BillingModelSource, default=BillingModelSource.CHANNEL_MAPPED
    )
    billing_mode = models.CharField(max_length=16, choices=BillingMode, default=BillingMode.TOKEN)

    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cache_creation_5m_tokens = models.PositiveIntegerField(default=0)
    cache_creation_1h_tokens = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0)
    image_output_tokens = models.PositiveIntegerField(default=0)
    unit_count = models.PositiveIntegerField(default=0, help_text="Requests or images billed per unit.")

    input_cost = money_field()
    output_cost = money_field()
    image_output_cost = money_field()
    cache_creation_cost = money_field()
    cache_read_cost = money_field()
    unit_cost = money_field()
    total_cost = money_field()
    rate_multiplier = models.DecimalField(**MULTIPLIER, default=Decimal("1"))
    actual_cost = money_field(help_text="What the user pays: total_cost × rate_multiplier.")
    account_rate_multiplier = models.DecimalField(**MULTIPLIER, default=Decimal("1"))
    account_cost = money_field(help_text="What the account's quota counts: total_cost × its multiplier.")
    pricing_source = models.CharField(max_length=16, choices=PricingSource)
    breakdown = models.JSONField(default=dict, help_text="CostBreakdown fields not stored as columns.")

    stream = models.BooleanField(default=False)
    duration_ms = models.PositiveIntegerField(default=0)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(default=200)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    cache_ttl_overridden = models.BooleanField(default=False)
    outcome = models.CharField(max_length=24, choices=RequestOutcome, default=RequestOutcome.COMPLETED)
    usage_source = models.CharField(max_length=16, choices=UsageSource, default=UsageSource.REPORTED)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "api_key"], name="usage_request_key_unique"),
        ]
        # Every filter is an equality on a leading column followed by the sort, so each filter
        # walks its own index newest-first and stops after one page (bench/usage_page measures it).
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="usage_created_idx"),
            models.Index(fields=["user", "-created_at"], name="usage_user_created_idx"),
            models.Index(fields=["api_key", "-created_at"], name="usage_key_created_idx"),
            models.Index(fields=["account", "-created_at"], name="usage_account_created_idx"),
            models.Index(fields=["group", "-created_at"], name="usage_group_created_idx"),
            models.Index(fields=["requested_model", "-created_at"], name="usage_requested_created_idx"),
            models.Index(fields=["upstream_model", "-created_at"], name="usage_upstream_created_idx"),
            models.Index(fields=["billing_model", "-created_at"], name="usage_billing_created_idx"),
            models.Index(fields=["pricing_source", "-created_at"], name="usage_source_created_idx"),
            # The status filter is "succeeded" or "failed": a partial index for each keeps the
            # newest-first walk an index scan.
            models.Index(
                fields=["-created_at"], condition=Q(status_code__lt=400), name="usage_ok_created_idx"
            ),
            models.Index(
                fields=["-created_at"], condition=Q(status_code__gte=400), name="usage_error_created_idx"
            ),
            models.Index(fields=["-actual_cost"], name="usage_actual_cost_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.requested_model})"

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_5m_tokens
            + self.cache_creation_1h_tokens
            + self.cache_read_tokens
        )

    @property
    def cache_creation_tokens(self) -> int:
        return self.cache_creation_5m_tokens + self.cache_creation_1h_tokens

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    def cost_breakdown(self) -> CostBreakdown:
        """The breakdown this row was billed with, rebuilt from its columns and `breakdown`."""
        data: dict[str, Any] = dict(self.breakdown)
        for name in BREAKDOWN_COLUMNS:
            value = getattr(self, name)
            data[name] = str(value) if isinstance(value, Decimal) else value
        return CostBreakdown.from_dict(data)

    def explain(self) -> str:
        sentence = self.cost_breakdown().explain()
        if self.usage_source == UsageSource.ESTIMATED:
            return "Usage estimated from the text (the upstream reported none): " + sentence
        if self.usage_source == UsageSource.PARTIAL:
            return "Input as reported, output estimated from the text received: " + sentence
        if self.usage_source == UsageSource.ESTIMATE:
            return "The gateway stopped mid-request; billed at its admission estimate: " + sentence
        if self.usage_source == UsageSource.OBSERVED:
            return "The gateway stopped mid-request; billed the usage it had seen: " + sentence
        return sentence


class UsageRollup(models.Model):
    """Hourly totals of the ledger by every dimension the usage page filters on.

    usage_record keeps them current in the same transaction as the ledger row, so a sum over
    rollups equals the sum over the rows they cover, exactly. Dashboards and the usage page's
    totals read these instead of the ledger. The dimensions are plain ids, not foreign keys:
    the upsert that maintains the rows needs a conflict target without NULLs (NULLs never
    conflict), so a missing account or group is 0, and a history outlives a deleted key,
    account or group. Status codes and pricing sources barely add rows: a key's requests for
    a model mostly share both.
    """

    hour = models.DateTimeField(help_text="Start of the UTC hour.")
    user_id = models.BigIntegerField()
    api_key_id = models.BigIntegerField()
    account_id = models.BigIntegerField(default=0, help_text="0 = none.")
    group_id = models.BigIntegerField(default=0, help_text="0 = none.")
    requested_model = models.CharField(max_length=200)
    upstream_model = models.CharField(max_length=200, blank=True)
    billing_model = models.CharField(max_length=200, blank=True)
    pricing_source = models.CharField(max_length=16, choices=PricingSource)
    status_code = models.PositiveSmallIntegerField()

    requests = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cache_creation_5m_tokens = models.BigIntegerField(default=0)
    cache_creation_1h_tokens = models.BigIntegerField(default=0)
    cache_read_tokens = models.BigIntegerField(default=0)
    image_output_tokens = models.BigIntegerField(default=0)
    total_cost = money_field()
    actual_cost = money_field()
    account_cost = money_field()

    DIMENSIONS = (
        "hour",
        "user_id",
        "api_key_id",
        "account_id",
        "group_id",
        "requested_model",
        "upstream_model",
        "billing_model",
        "pricing_source",
        "status_code",
    )

    class Meta:
        ordering = ["-hour"]
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "hour",
                    "user_id",
                    "api_key_id",
                    "account_id",
                    "group_id",
                    "requested_model",
                    "upstream_model",
                    "billing_model",
                    "pricing_source",
                    "status_code",
                ],
                name="usage_rollup_dimensions_unique",
            )
        ]
        # The unique index leads with the hour; these serve the filters. Upserts into an existing
        # row change no indexed column, so they stay heap-only updates whatever the index count.
        indexes = [
            models.Index(fields=["user_id", "hour"], name="rollup_user_hour_idx"),
            models.Index(fields=["api_key_id", "hour"], name="rollup_key_hour_idx"),
            models.Index(fields=["account_id", "hour"], name="rollup_account_hour_idx"),
            models.Index(fields=["group_id", "hour"], name="rollup_group_hour_idx"),
            models.Index(fields=["requested_model", "hour"], name="rollup_requested_hour_idx"),
            models.Index(fields=["upstream_model", "hour"], name="rollup_upstream_hour_idx"),
            models.Index(fields=["billing_model", "hour"], name="rollup_billing_hour_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 key {self.api_key_id} {self.requested_model}"


class PendingRequest(models.Model):
    """A request admitted and not yet recorded: the outbox row and what it holds
    (docs/gateway.md#holds-and-settle, docs/gateway.md#pending-records).

    Written in the hold transaction before relaying, with every counted row's `held` raised by
    the estimate; deleted by the recording transaction (billing.holds.pending_settle), which
    lowers the holds again. A row whose lease has passed belongs to a process that died: recovery
    records it (observed usage, else the estimate) and that settles it the same way. Plain ids,
    no foreign keys: the hot path pays for no constraint checks, and recovery tolerates a row
    deleted since.
    """

    request_id = models.CharField(max_length=128)
    api_key_id = models.BigIntegerField()
    user_id = models.BigIntegerField()
    subscription_id = models.BigIntegerField(
        null=True, blank=True, help_text="Held on instead of the balance."
    )
    account_id = models.BigIntegerField(
        null=True, blank=True, help_text="The account held on (or, without a quota, the first to be tried)."
    )
    held_usd = money_field(help_text="Held on the key and on the balance or subscription.")
    account_held_usd = money_field(help_text="Held on the account's quota.")
    requested_model = models.CharField(max_length=200)
    mapped_model = models.CharField(max_length=200, blank=True)
    protocol = models.CharField(max_length=16)
    stream = models.BooleanField(default=False)
    estimate = models.JSONField(help_text="The estimated usage (token counts) the hold was priced from.")
    observed = models.JSONField(null=True, blank=True, help_text="Usage the stream reported so far.")
    created_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField()

    class Meta:
        ordering = ["lease_expires_at"]
        constraints = [
            models.UniqueConstraint(fields=["request_id", "api_key_id"], name="pending_request_key_unique"),
            models.CheckConstraint(
                condition=Q(held_usd__gte=0) & Q(account_held_usd__gte=0),
                name="pending_held_non_negative",
                violation_error_message="A hold cannot be negative.",
            ),
        ]
        indexes = [models.Index(fields=["lease_expires_at"], name="pending_lease_idx")]

    def __str__(self) -> str:
        return f"{self.request_id} (key {self.api_key_id}, until {self.lease_expires_at:%H:%M:%S})"


# --- Reconcile runs and the carry-forward (docs/jobs.md#reconcile-runs) ------------------------


class ReconcileScope(models.TextChoices):
    KEYS = "keys", "API keys"
    ACCOUNTS = "accounts", "Upstream accounts"
    SUBSCRIPTIONS = "subscriptions", "Subscriptions"
    USERS = "users", "User balances"


class ReconcilePeriod(models.TextChoices):
    """Which entities a run checks: those with ledger rows in the period (or all of them).

    Each checked entity is recomputed over its whole history (carry-forward plus ledger), since a
    quota or a balance counts every charge since its last reset, not only the period's."""

    DAY = "day", "Used in the last 24 hours"
    WEEK = "week", "Used in the last 7 days"
    MONTH = "month", "Used in the last 30 days"
    ALL = "all", "All"


class ReconcileMode(models.TextChoices):
    DRY_RUN = "dry_run", "Dry run"
    FIX = "fix", "Fix"


class ReconcileStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Finished"
    FAILED = "failed", "Failed"


ACTIVE_RUN_STATUSES = (ReconcileStatus.QUEUED, ReconcileStatus.RUNNING)


class ReconcileRun(models.Model):
    """One reconcile of one scope: counters recomputed from the ledger, drift reported (and fixed)."""

    batch_id = models.CharField(max_length=64, help_text="Runs started together share a batch.")
    host_id = models.CharField(max_length=255, help_text="The host that ran it.")
    scope = models.CharField(max_length=16, choices=ReconcileScope)
    period = models.CharField(max_length=8, choices=ReconcilePeriod, default=ReconcilePeriod.ALL)
    mode = models.CharField(max_length=8, choices=ReconcileMode, default=ReconcileMode.DRY_RUN)
    status = models.CharField(max_length=16, choices=ReconcileStatus, default=ReconcileStatus.QUEUED)
    started_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    started_by_label = models.CharField(
        max_length=255, help_text="A user's email, 'schedule' or 'command' (kept if the user goes)."
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Entities to check (the progress bar's end).")
    checked = models.PositiveIntegerField(default=0)
    drifted = models.PositiveIntegerField(default=0, help_text="Counters found off the ledger.")
    fixed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # Two fix runs of one scope never overlap: the second insert is refused.
            models.UniqueConstraint(
                fields=["scope"],
                condition=Q(mode="fix", status__in=["queued", "running"]),
                name="reconcile_one_fix_per_scope",
            ),
            models.CheckConstraint(
                condition=Q(checked__lte=models.F("total")) | Q(total=0),
                name="reconcile_checked_within_total",
            ),
        ]
        indexes = [
            models.Index(fields=["batch_id", "-created_at"], name="reconcile_batch_idx"),
            models.Index(fields=["host_id", "-created_at"], name="reconcile_host_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_mode_display()} of {self.scope} ({self.batch_id})"

    @property
    def progress_percent(self) -> int:
        if self.status == ReconcileStatus.SUCCEEDED:
            return 100
        return int(self.checked * 100 / self.total) if self.total else 0

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES


class ReconcileDiscrepancy(models.Model):
    """One counter found off the ledger. In a fix run, also the correction record: the counter was
    moved by `delta` in one conditional UPDATE (`fixed`), and no ledger row was touched."""

    run = models.ForeignKey(ReconcileRun, on_delete=models.CASCADE, related_name="discrepancies")
    batch_id = models.CharField(max_length=64)
    host_id = models.CharField(max_length=255)
    entity_kind = models.CharField(max_length=16, help_text="key, subscription, account or user")
    entity_id = models.BigIntegerField()
    entity_label = models.CharField(max_length=255, blank=True)
    field = models.CharField(max_length=64, help_text="The counter's column.")
    stored = models.DecimalField(max_digits=20, decimal_places=8)
    recomputed = models.DecimalField(max_digits=20, decimal_places=8)
    delta = models.DecimalField(max_digits=20, decimal_places=8, help_text="recomputed − stored")
    counted_from = models.DateTimeField(
        null=True, blank=True, help_text="The ledger rows that prove the value start here (None: all)."
    )
    counted_until = models.DateTimeField(null=True, blank=True)
    fixed = models.BooleanField(default=False)
    fixed_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "entity_kind", "entity_id", "field"]
        constraints = [
            models.CheckConstraint(
                condition=Q(delta=models.F("recomputed") - models.F("stored")),
                name="reconcile_delta_is_difference",
            ),
        ]
        indexes = [models.Index(fields=["batch_id"], name="reconcile_disc_batch_idx")]

    def __str__(self) -> str:
        return f"{self.entity_kind} {self.entity_id} {self.field}: {self.delta:+}"


class UsageCarryForward(models.Model):
    """What pruned ledger rows added to one counter, so reconcile stays exact after a prune.

    One row per (entity, counter): the counter's state replayed over every pruned row, the same
    way the charges moved it (docs/jobs.md#prune). `baseline` is the operator reset the state
    counts from; when the entity's reset time moves on, the state no longer applies."""

    entity_kind = models.CharField(max_length=16)
    entity_id = models.BigIntegerField()
    counter = models.CharField(
        max_length=32, help_text="quota, 5h, 1d, 7d, daily, weekly, monthly, total, balance"
    )
    used = models.DecimalField(max_digits=20, decimal_places=8, default=ZERO)
    window_start = models.DateTimeField(null=True, blank=True)
    baseline = models.DateTimeField(null=True, blank=True, help_text="The reset time the state counts from.")
    rows_folded = models.BigIntegerField(default=0)
    folded_through = models.DateTimeField(help_text="Every pruned row was created before this.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["entity_kind", "entity_id", "counter"], name="carry_forward_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entity_kind} {self.entity_id} {self.counter}: {self.used}"
