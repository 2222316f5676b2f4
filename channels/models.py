"""Channels: pricing and model mapping shared by a set of groups (docs/entities.md#channels).

Prices are stored in USD **per token** with 14 decimal places and shown in $ per million
tokens; forms convert at their boundary (common.money). `per_request_price` is USD per
request (or per image). The price attributes of `ModelPricing` and `PricingInterval` carry
the same names as channels.pricing.Price / PriceInterval, so the channel snapshot builds its
pure cards from them by name.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.lookups import Exact

from accounts.models import Group, Platform, all_at_least_zero, row_rule
from channels.pricing import BillingMode, BillingModelSource

PRICE = {"max_digits": 24, "decimal_places": 14}
MULTIPLIER = {"max_digits": 12, "decimal_places": 6}


def price_field(help_text: str = "", **kwargs) -> models.DecimalField:
    return models.DecimalField(**PRICE, null=True, blank=True, help_text=help_text, **kwargs)


def multiplier_field() -> models.DecimalField:
    return models.DecimalField(
        **MULTIPLIER, null=True, blank=True, help_text="Scales the card's base price when the price is empty."
    )


class JSONTypeOf(models.Func):
    """The JSON type of a value ("object", "array", …), for CHECK constraints on JSON columns."""

    function = "JSONB_TYPEOF"
    output_field = models.CharField()

    def as_sqlite(self, compiler, connection, **extra_context):
        return super().as_sql(compiler, connection, function="JSON_TYPE", **extra_context)


def is_json_object(column: str) -> Exact:
    return Exact(JSONTypeOf(column), "object")


def readable_mapping(value: object) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The well-formed part of a stored model mapping, and what was wrong with the rest.

    The console and the services only ever store {platform: {source: target}} with non-empty
    strings; anything else came in through the ORM or Django admin, and is left out of what is
    shown and used rather than turned into a 500.
    """
    if not isinstance(value, dict):
        return {}, ["The model mapping must be an object of platforms."]
    mapping: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for platform, rules in value.items():
        if platform not in Platform.values:
            problems.append(f"“{platform}” is not a platform ({', '.join(Platform.values)}).")
        elif not isinstance(rules, dict):
            problems.append(f"The {platform} mapping must be an object of source → target model names.")
        else:
            good = {
                source.strip(): target.strip()
                for source, target in rules.items()
                if source.strip() and isinstance(target, str) and target.strip()
            }
            if len(good) != len(rules):
                problems.append(f"Every {platform} source must map to a model name (a non-empty string).")
            if good:
                mapping[platform] = good
    return mapping, problems


def validate_model_mapping(value: object) -> None:
    if problems := readable_mapping(value)[1]:
        raise ValidationError(problems, code="mapping_shape")


def validate_audit_changes(value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(change, dict) for change in value.values()):
        raise ValidationError(
            "Audit changes must be an object of {field: change object}.", code="audit_shape"
        )


class Channel(models.Model):
    """Pricing cards and a model mapping, applied to the groups assigned to the channel."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status, default=Status.ACTIVE, db_index=True)
    billing_model_source = models.CharField(
        max_length=16,
        choices=BillingModelSource,
        default=BillingModelSource.CHANNEL_MAPPED,
        db_index=True,
        help_text="Which model name is priced: as requested, after this channel's mapping, or as sent upstream.",
    )
    restrict_models = models.BooleanField(
        default=False, help_text="Refuse requests for models that have no price in this channel."
    )
    # {platform: {source pattern: target model}}; a source may end in "*". An exact source
    # beats a prefix (see channels.snapshots.ChannelSnapshot.map_model).
    model_mapping = models.JSONField(default=dict, blank=True, validators=[validate_model_mapping])
    groups = models.ManyToManyField(Group, through="ChannelGroup", related_name="channels", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            # The nesting below the top level is checked by validate_model_mapping.
            models.CheckConstraint(
                condition=is_json_object("model_mapping"), name="channel_mapping_is_object"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def mapping(self) -> dict[str, dict[str, str]]:
        """The model mapping's well-formed rules (see readable_mapping)."""
        return readable_mapping(self.model_mapping)[0]

    @property
    def mapping_problems(self) -> list[str]:
        return readable_mapping(self.model_mapping)[1]

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ChannelGroup(models.Model):
    """A group assigned to a channel. The unique constraint keeps a group in one channel at most."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="group_links")
    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="channel_links")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group"], name="channel_group_one_channel")]
        indexes = [models.Index(fields=["channel"], name="channel_group_channel_idx")]

    def __str__(self) -> str:
        return f"{self.group_id} in channel {self.channel_id}"


class ModelPricing(models.Model):
    """A pricing card: prices for a list of model patterns on one platform.

    Prices are USD per token (per request for `per_request_price`); None means "not set on
    this card": an empty `cache_write_1h_price` bills 1-hour writes at `cache_write_price`
    (docs/pricing.md#cache-writes).
    """

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="pricing_cards")
    platform = models.CharField(max_length=32, choices=Platform, default=Platform.ANTHROPIC)
    billing_mode = models.CharField(max_length=16, choices=BillingMode, default=BillingMode.TOKEN)
    sort_order = models.PositiveIntegerField(default=0)
    # Model names or trailing-"*" prefixes, 1-100 of them, in the order the operator typed.
    # (From here on the class body's `models` is this field, so the fields below use helpers.)
    models = models.JSONField(default=list)
    input_price = price_field()
    output_price = price_field()
    cache_write_price = price_field("5-minute cache writes.")
    cache_write_1h_price = price_field("1-hour cache writes; empty = the 5-minute price.")
    cache_read_price = price_field()
    image_output_price = price_field()
    per_request_price = price_field("USD per request (or per image).")

    class Meta:
        ordering = ["sort_order", "id"]
        verbose_name = "model pricing card"
        constraints = [
            row_rule(
                all_at_least_zero(
                    "input_price",
                    "output_price",
                    "cache_write_price",
                    "cache_write_1h_price",
                    "cache_read_price",
                    "image_output_price",
                    "per_request_price",
                ),
                "pricing_card_prices_non_negative",
                "Prices cannot be negative.",
            ),
        ]
        indexes = [models.Index(fields=["channel", "platform", "sort_order"], name="pricing_card_lookup_idx")]

    def __str__(self) -> str:
        return f"{self.platform}: {', '.join(self.models[:3])}{'…' if len(self.models) > 3 else ''}"


class PricingInterval(models.Model):
    """One row of a card's interval table: a context-size band (token mode) or a size tier.

    Holds context sizes with ``min_tokens < context <= max_tokens``; max None = unbounded.
    An explicit price wins; otherwise its multiplier scales the card's base price.
    """

    card = models.ForeignKey(ModelPricing, on_delete=models.CASCADE, related_name="intervals")
    min_tokens = models.PositiveBigIntegerField(default=0)
    max_tokens = models.PositiveBigIntegerField(null=True, blank=True, help_text="Empty = unbounded.")
    tier_label = models.CharField(max_length=32, blank=True, help_text="e.g. 1K, 2K, 4K, HD, >200K.")
    input_price = price_field()
    output_price = price_field()
    cache_write_price = price_field()
    cache_read_price = price_field()
    input_multiplier = multiplier_field()
    output_multiplier = multiplier_field()
    cache_write_multiplier = multiplier_field()
    cache_read_multiplier = multiplier_field()
    per_request_price = price_field("USD per request (or per image) in this tier.")
    sort_order = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "id"]
        constraints = [
            row_rule(
                models.Q(max_tokens__isnull=True) | models.Q(max_tokens__gt=models.F("min_tokens")),
                "pricing_interval_max_above_min",
                "An interval's max tokens must be above its min tokens.",
            ),
            row_rule(
                all_at_least_zero(
                    "input_price",
                    "output_price",
                    "cache_write_price",
                    "cache_read_price",
                    "per_request_price",
                    "input_multiplier",
                    "output_multiplier",
                    "cache_write_multiplier",
                    "cache_read_multiplier",
                ),
                "pricing_interval_prices_non_negative",
                "Prices and multipliers cannot be negative.",
            ),
        ]

    def __str__(self) -> str:
        upper = "∞" if self.max_tokens is None else self.max_tokens
        return f"({self.min_tokens}, {upper}] {self.tier_label}".strip()


class ChannelAuditLog(models.Model):
    """Who changed a channel, when, and what: `changes` is a JSON diff of two readable pictures of the channel."""

    class Action(models.TextChoices):
        CREATE = "create", "Created"
        UPDATE = "update", "Updated"
        DELETE = "delete", "Deleted"

    channel = models.ForeignKey(
        Channel, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_log"
    )
    channel_name = models.CharField(max_length=100)
    action = models.CharField(max_length=16, choices=Action)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    changes = models.JSONField(default=dict, blank=True, validators=[validate_audit_changes])
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["channel", "-created_at"], name="channel_audit_channel_idx")]
        constraints = [
            models.CheckConstraint(
                condition=is_json_object("changes"), name="channel_audit_changes_is_object"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel_name} {self.action} at {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def changes_json(self) -> str:
        return json.dumps(self.changes, indent=2, ensure_ascii=False, sort_keys=True)

    def summary_lines(self) -> list[str]:
        """One readable line per change, for the channel page.

        A change of a shape the services never write (edited through the ORM) gets a plain
        line instead of breaking the page; the JSON below the lines shows it as stored.
        """
        if not isinstance(self.changes, dict):
            return ["Recorded in an unexpected shape; see the JSON."]
        lines = []
        for name, change in self.changes.items():
            label = _LABELS.get(name, str(name).replace("_", " ").capitalize())
            try:
                lines += _change_lines(name, label, change)
            except (AttributeError, KeyError, TypeError, ValueError):
                lines.append(f"{label}: recorded in an unexpected shape; see the JSON.")
        return lines


def _change_lines(name: str, label: str, change: dict) -> list[str]:
    if name == "pricing":
        return [f"Pricing card {verb}: {key}" for verb, key in _keys(change)] + [
            "Pricing card changed: {}: {}".format(key, "; ".join(_field_changes(fields)))
            for key, fields in change.get("changed", {}).items()
        ]
    if name == "model_mapping":
        return [f"Mapping {verb}: {key} → {change[verb][key]}" for verb, key in _keys(change)] + [
            f"Mapping changed: {key} → {value['to']} (was {value['from']})"
            for key, value in change.get("changed", {}).items()
        ]
    if name == "groups":
        parts = [f"added {', '.join(change['added'])}"] if change["added"] else []
        parts += [f"removed {', '.join(change['removed'])}"] if change["removed"] else []
        return [f"Groups: {'; '.join(parts)}"]
    if change["from"] is None:  # a new channel: say what it started with
        return [f"{label}: {_shown(change['to'])}"] if change["to"] not in ("", None) else []
    return [f"{label}: {_shown(change['from'])} → {_shown(change['to'])}"]


_LABELS = {"billing_model_source": "Bill by", "restrict_models": "Only models priced here"}


def _keys(change: dict) -> list[tuple[str, str]]:
    return [(verb, key) for verb in ("added", "removed") for key in change.get(verb, {})]


def _field_changes(fields: dict) -> list[str]:
    parts = [
        f"{name} {_shown(value['from'])} → {_shown(value['to'])}"
        for name, value in fields.get("changed", {}).items()
    ]
    parts += [f"{name} set to {_shown(value)}" for name, value in fields.get("added", {}).items()]
    parts += [f"{name} cleared (was {_shown(value)})" for name, value in fields.get("removed", {}).items()]
    return parts


def _shown(value) -> str:
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]" if value else "(none)"
    return str(value)
