from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django import forms
from django.conf import settings
from django.utils import timezone

from accounts.models import MAX_PRIORITY, MIN_PRIORITY, Group, Platform, UpstreamAccount
from accounts.rules import (
    BEDROCK_AUTH_MODES,
    CREDENTIAL_SECTIONS,
    credential_form_name,
    credential_section,
    is_valid_timezone,
    model_mapping_lines,
    parse_model_list,
    parse_model_mapping,
)
from common.forms import ConsoleForm, ConsoleModelForm, DecimalInputField, MoneyField, SearchInput

QUOTA_HELP = "Empty or 0 = no limit."
QUOTA_LIMITS = ("quota_limit_usd", "quota_daily_limit_usd", "quota_weekly_limit_usd")
HOURS = [(h, f"{h:02d}:00") for h in range(24)]
WEEKDAYS = [
    (0, "Monday"),
    (1, "Tuesday"),
    (2, "Wednesday"),
    (3, "Thursday"),
    (4, "Friday"),
    (5, "Saturday"),
    (6, "Sunday"),
]

ACCOUNT_FIELDS = [
    "name",
    "platform",
    "type",
    "notes",
    "priority",
    "concurrency",
    "rate_multiplier",
    "status",
    "schedulable",
    "expires_at",
    "auto_pause_on_expired",
    "cache_ttl_override",
    "supported_models",
    "model_mapping",
    "quota_limit_usd",
    "quota_daily_limit_usd",
    "quota_daily_reset_mode",
    "quota_daily_reset_hour",
    "quota_weekly_limit_usd",
    "quota_weekly_reset_mode",
    "quota_weekly_reset_hour",
    "quota_weekly_reset_weekday",
    "quota_timezone",
]


class UpstreamAccountForm(ConsoleModelForm):
    """One form for every platform and type; the credential section of the chosen type is read.

    Secret inputs never carry the stored value back to the page; left blank they keep it.
    """

    groups = forms.ModelMultipleChoiceField(
        label="Groups",
        queryset=Group.objects.order_by("sort_order", "id"),
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 5}),
        help_text="Groups of the same platform whose keys may use this account.",
    )
    auth_mode = forms.ChoiceField(
        label="AWS authentication",
        choices=BEDROCK_AUTH_MODES,
        initial="sigv4",
        required=False,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )
    clear_session_token = forms.BooleanField(label="Remove the stored session token", required=False)
    rate_multiplier = DecimalInputField(
        label="Rate multiplier",
        initial=UpstreamAccount._meta.get_field("rate_multiplier").default,
        max_digits=12,
        decimal_places=6,
        help_text="Multiplies the upstream cost in this account's stats and quotas. Greater than 0.",
    )
    priority = forms.IntegerField(
        label="Priority",
        initial=UpstreamAccount._meta.get_field("priority").default,
        min_value=MIN_PRIORITY,
        max_value=MAX_PRIORITY,
        help_text=f"A whole number from {MIN_PRIORITY} to {MAX_PRIORITY:,}; lower is preferred.",
    )
    quota_limit_usd = MoneyField(
        label="Total quota (USD)", min_value=0, required=False, initial=0, help_text=QUOTA_HELP
    )
    quota_daily_limit_usd = MoneyField(
        label="Daily quota (USD)", min_value=0, required=False, initial=0, help_text=QUOTA_HELP
    )
    quota_weekly_limit_usd = MoneyField(
        label="Weekly quota (USD)", min_value=0, required=False, initial=0, help_text=QUOTA_HELP
    )
    quota_daily_reset_hour = forms.TypedChoiceField(label="Daily reset at", choices=HOURS, coerce=int)
    quota_weekly_reset_hour = forms.TypedChoiceField(label="Weekly reset at", choices=HOURS, coerce=int)
    quota_weekly_reset_weekday = forms.TypedChoiceField(label="Weekly reset on", choices=WEEKDAYS, coerce=int)
    expires_at = forms.DateTimeField(
        label="Expires at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty = never. In the server's timezone.",
    )
    supported_models = forms.CharField(
        label="Models it serves",
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 3, "spellcheck": "false", "placeholder": "claude-sonnet-4-5\nclaude-opus-*"}
        ),
        help_text="One model per line; a line may end in * (a prefix). Empty = every model the group asks for.",
    )
    model_mapping = forms.CharField(
        label="Model mapping",
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 3, "spellcheck": "false", "placeholder": "gpt-4o → gpt-4o-2024-11-20"}
        ),
        help_text="One “source → target” per line: the name this account is sent instead, after the channel's mapping.",
    )

    class Meta:
        model = UpstreamAccount
        fields = ACCOUNT_FIELDS
        labels = {
            "schedulable": "Schedulable (the gateway may pick this account)",
            "auto_pause_on_expired": "Pause automatically when expired",
            "cache_ttl_override": "Cache TTL override",
            "quota_daily_reset_mode": "Daily period",
            "quota_weekly_reset_mode": "Weekly period",
            "quota_timezone": "Quota timezone",
        }
        help_texts = {
            "concurrency": "Requests in flight at once.",
            "cache_ttl_override": "Bill every cache write of a response in this bucket.",
            "quota_daily_reset_mode": "Rolling: 24 hours from the first request. Fixed: at a set hour.",
            "quota_weekly_reset_mode": "Rolling: 168 hours from the first request. Fixed: a set weekday and hour.",
            "quota_timezone": "IANA name, e.g. Asia/Shanghai. Fixed resets happen at the hour in this zone.",
        }
        widgets = {
            "notes": forms.Textarea(attrs={"rows": 2}),
            "quota_timezone": forms.TextInput(attrs={"list": "timezones", "autocomplete": "off"}),
        }

    def __init__(self, *args, stored_credentials: dict | None = None, **kwargs) -> None:
        self.stored = stored_credentials or {}
        super().__init__(*args, **kwargs)
        status = self.fields["status"]
        if self.instance.status != UpstreamAccount.Status.ERROR:
            status.choices = [c for c in status.choices if c[0] != UpstreamAccount.Status.ERROR]
        if not self.instance.pk:
            self.fields["quota_timezone"].initial = settings.TIME_ZONE
            self.fields["platform"].initial = Platform.ANTHROPIC
            self.fields["type"].initial = UpstreamAccount.Type.APIKEY
        else:
            self.fields["groups"].initial = list(self.instance.groups.values_list("pk", flat=True))
            self.fields["auth_mode"].initial = self.stored.get("auth_mode") or "sigv4"
        stored_section = (
            credential_section(self.instance.type, self.stored.get("auth_mode", ""))
            if self.instance.pk
            else ""
        )
        for section, specs in CREDENTIAL_SECTIONS.items():
            for spec in specs:
                name = credential_form_name(section, spec.key)
                kept = spec.secret and section == stored_section and self.stored.get(spec.key)
                if spec.secret:
                    placeholder = "Stored; leave blank to keep it" if kept else ""
                    # A secret typed into a form that comes back with an error is kept (only
                    # this response carries it, uncached), so nothing typed is lost.
                    widget = forms.PasswordInput(
                        attrs={
                            "autocomplete": "new-password",
                            "placeholder": placeholder,
                            "class": "form-control",
                        },
                        render_value=True,
                    )
                else:
                    widget = forms.TextInput(attrs={"class": "form-control"})
                self.fields[name] = forms.CharField(
                    label=spec.label,
                    required=False,
                    strip=True,
                    widget=widget,
                    help_text=spec.help_text,
                    initial=None
                    if spec.secret or section != stored_section
                    else self.stored.get(spec.key, ""),
                )
        self.fields["clear_session_token"].widget.attrs["class"] = "form-check-input"
        if not self.is_bound and self.instance.pk:
            self.initial["supported_models"] = "\n".join(self.instance.supported_models or ())
            self.initial["model_mapping"] = model_mapping_lines(self.instance.model_mapping or {})

    def clean_supported_models(self) -> list[str]:
        return parse_model_list((self.cleaned_data.get("supported_models") or "").splitlines())

    def clean_model_mapping(self) -> dict[str, str]:
        return parse_model_mapping((self.cleaned_data.get("model_mapping") or "").splitlines())

    def clean_expires_at(self) -> datetime | None:
        expires_at = self.cleaned_data.get("expires_at")
        current = self.instance.expires_at
        if expires_at and current and expires_at == current.replace(second=0, microsecond=0):
            return current  # the picker shows minutes only; an untouched expiry stays exact
        if expires_at and expires_at <= timezone.now():
            raise forms.ValidationError(
                "Choose a time in the future, or leave it empty for an account that never expires."
            )
        return expires_at

    def clean_rate_multiplier(self) -> Decimal:
        value = self.cleaned_data["rate_multiplier"]
        if value <= 0:
            raise forms.ValidationError("The rate multiplier must be greater than 0.")
        return value

    def clean_quota_timezone(self) -> str:
        value = (self.cleaned_data.get("quota_timezone") or "").strip()
        if not is_valid_timezone(value):
            raise forms.ValidationError(f"{value!r} is not an IANA timezone name (e.g. Europe/Berlin).")
        return value

    def model_fields(self) -> dict:
        fields = {name: self.cleaned_data[name] for name in ACCOUNT_FIELDS if name in self.cleaned_data}
        for name in QUOTA_LIMITS:
            if fields.get(name) is None:
                fields[name] = Decimal(0)  # an empty quota is no quota
        return fields

    def credentials(self) -> dict:
        """What was typed into the chosen type's section (blank secrets included: they mean keep)."""
        account_type = self.cleaned_data.get("type", "")
        auth_mode = self.cleaned_data.get("auth_mode") or "sigv4"
        section = credential_section(account_type, auth_mode)
        values = {
            spec.key: self.cleaned_data.get(credential_form_name(section, spec.key), "")
            for spec in CREDENTIAL_SECTIONS.get(section, ())
        }
        if account_type == UpstreamAccount.Type.BEDROCK:
            values["auth_mode"] = auth_mode
        return values

    def cleared_credentials(self) -> list[str]:
        return ["aws_session_token"] if self.cleaned_data.get("clear_session_token") else []

    def credential_sections(self):
        """(section, [bound fields]) for the template."""
        return [
            (section, [self[credential_form_name(section, spec.key)] for spec in specs])
            for section, specs in CREDENTIAL_SECTIONS.items()
        ]


class UpstreamAccountFilterForm(ConsoleForm):
    q = forms.CharField(
        label="Search", required=False, widget=SearchInput(attrs={"placeholder": "Name or notes"})
    )
    platform = forms.ChoiceField(
        label="Platform", required=False, choices=[("", "Any platform"), *Platform.choices]
    )
    type = forms.ChoiceField(
        label="Type", required=False, choices=[("", "Any type"), *UpstreamAccount.Type.choices]
    )
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *UpstreamAccount.Status.choices]
    )
    group = forms.ModelChoiceField(
        label="Group",
        required=False,
        queryset=Group.objects.order_by("sort_order", "id"),
        empty_label="Any group",
    )
    schedulable = forms.ChoiceField(
        label="Schedulable",
        required=False,
        choices=[("", "Schedulable or not"), ("yes", "Schedulable"), ("no", "Not schedulable")],
    )
