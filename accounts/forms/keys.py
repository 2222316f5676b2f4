from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.timezone import now as current_time

from accounts.models import APIKey, Group, User
from accounts.rules import ip_rule_conflicts, normalise_ip_rules
from accounts.selectors.keys import GroupChoice, key_group_choices
from common.forms import ConsoleForm, ConsoleModelForm, MoneyField, SearchInput

EXPIRY_QUICK_PICKS = (7, 30, 90)


class IPRulesField(forms.CharField):
    """One IP or CIDR per line in a textarea; a list of normalised rules in cleaned_data.

    A list that normalising would change (10.1.2.3/8 is the range 10.0.0.0/8; a repeated line
    is dropped) is refused once, with the normalised list put in the field and each change
    named, so what is saved is exactly what the operator saw.
    """

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocomplete": "off"})

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("strip", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def bound_data(self, data, initial):
        try:
            rules, changes = normalise_ip_rules((data or "").splitlines())
        except ValidationError:
            return data
        return "\n".join(rules) if changes else data

    def clean(self, value) -> list[str]:
        value = super().clean(value)
        rules, changes = normalise_ip_rules((value or "").splitlines())
        if changes:
            raise ValidationError(
                [
                    "Nothing was saved: check the list as it will be stored (shown in the box) and save again.",
                    *changes,
                ]
            )
        return rules


class GroupSelect(forms.Select):
    """Groups the chosen user may not use are listed but disabled, marked "unavailable"."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.problems: dict[int, str] = {}
        self.keep: int | None = None  # the key's own group stays selectable for its own user

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        pk = getattr(value, "value", value)
        if self.problems.get(pk) and pk != self.keep:
            option["attrs"]["disabled"] = True
            option["label"] = f"{label} — unavailable"
        return option


def group_label(group: Group) -> str:
    kind = "subscription" if group.is_subscription else "standard"
    exclusive = ", exclusive" if group.is_exclusive else ""
    return f"{group.name} ({group.get_platform_display()}, {kind}{exclusive})"


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class APIKeyForm(ConsoleModelForm):
    quota_usd = MoneyField(
        label="Quota (USD)", min_value=0, initial=0, help_text="Total the key may spend. 0 = unlimited."
    )
    rate_limit_5h_usd = MoneyField(label="5-hour limit (USD)", min_value=0, initial=0)
    rate_limit_1d_usd = MoneyField(label="1-day limit (USD)", min_value=0, initial=0)
    rate_limit_7d_usd = MoneyField(label="7-day limit (USD)", min_value=0, initial=0)
    concurrency = forms.IntegerField(
        label="Requests in flight",
        min_value=0,
        required=False,
        initial=0,
        help_text="How many requests this key may have running at once, across every gateway process. "
        "0 or empty = no limit of its own (the user's limit still applies).",
    )
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty = never expires.",
    )
    ip_allowlist = IPRulesField(
        label="IP allowlist",
        help_text="One IP or CIDR range per line (e.g. 203.0.113.7 or 10.0.0.0/8). Empty = any.",
    )
    ip_denylist = IPRulesField(
        label="IP denylist", help_text="One IP or CIDR range per line, always refused."
    )

    class Meta:
        model = APIKey
        fields = [
            "user",
            "group",
            "name",
            "quota_usd",
            "expires_at",
            "rate_limit_5h_usd",
            "rate_limit_1d_usd",
            "rate_limit_7d_usd",
            "concurrency",
            "timezone",
            "ip_allowlist",
            "ip_denylist",
        ]
        labels = {"timezone": "Timezone of the 1-day and 7-day windows"}
        widgets = {
            "group": GroupSelect,
            "timezone": forms.TextInput(attrs={"placeholder": settings.TIME_ZONE}),
        }

    def __init__(self, *args, now: datetime | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.now = now or current_time()
        self.fields["user"].queryset = User.objects.order_by("email")
        self.fields["user"].label_from_instance = lambda user: user.email
        self.fields["user"].empty_label = "Choose a user"
        self.fields["group"].queryset = Group.objects.order_by("sort_order", "id")
        self.fields["group"].label_from_instance = group_label
        self.fields["group"].empty_label = "No group"
        self.fields["expires_at"].label = f"Expires at ({settings.TIME_ZONE})"
        self.fields["expires_at"].widget.attrs["data-timezone"] = settings.TIME_ZONE
        self.fields["timezone"].help_text = f"IANA name, e.g. Europe/Berlin. Empty = {settings.TIME_ZONE}."
        self.fields["name"].widget.attrs["autocomplete"] = "off"
        if self.instance.pk:
            # The secret stays the same, so a new owner would silently start paying for its use.
            self.fields["user"].disabled = True
            self.fields[
                "user"
            ].help_text = "The owner of a key is fixed. For another person, create a new key."
        self.chosen_user = self._chosen_user()
        self.group_choices = key_group_choices(user=self.chosen_user, now=self.now)
        group_widget = self.fields["group"].widget
        group_widget.problems = {c.group.pk: c.problem for c in self.group_choices}
        if self.instance.pk and self.chosen_user and self.chosen_user.pk == self.instance.user_id:
            group_widget.keep = self.instance.group_id
        chosen_group = _int_or_none(self.initial.get("group"))
        if (
            not self.is_bound
            and group_widget.problems.get(chosen_group)
            and chosen_group != group_widget.keep
        ):
            self.initial["group"] = None  # the user just chosen may not use it
        if not self.instance.pk:
            # Choosing a user re-renders the group field with what that user may use (HTMX).
            self.fields["user"].widget.attrs.update(
                {
                    "hx-get": reverse("accounts:key-group-options"),
                    "hx-trigger": "change",
                    "hx-target": "#group-field",
                    "hx-swap": "outerHTML",
                    "hx-include": "[name='group']",
                }
            )

    def _chosen_user(self) -> User | None:
        """The user the group choices are for: the key's, else the one submitted or first offered."""
        if self.instance.pk:
            return self.instance.user
        if self.is_bound:
            pk = _int_or_none(self.data.get(self.add_prefix("user")))
        else:
            pk = _int_or_none(getattr(self.initial.get("user"), "pk", self.initial.get("user")))
        return User.objects.filter(pk=pk).first() if pk else None

    @property
    def unavailable_groups(self) -> list[GroupChoice]:
        return [choice for choice in self.group_choices if choice.problem]

    def clean_concurrency(self) -> int:
        return self.cleaned_data.get("concurrency") or 0

    def clean_expires_at(self) -> datetime | None:
        expires_at = self.cleaned_data.get("expires_at")
        current = self.instance.expires_at
        if expires_at and current and expires_at == current.replace(second=0, microsecond=0):
            return current  # the picker shows minutes only; an untouched expiry stays exact
        if expires_at and expires_at <= self.now:
            raise ValidationError(
                "Choose a time in the future, or leave it empty for a key that never expires."
            )
        return expires_at

    def clean(self) -> dict:
        cleaned = super().clean()
        allow, deny = cleaned.get("ip_allowlist"), cleaned.get("ip_denylist")
        if allow is not None and deny is not None:
            for conflict in ip_rule_conflicts(allow, deny):
                self.add_error("ip_denylist", conflict)
        return cleaned

    def clean_timezone(self) -> str:
        name = self.cleaned_data.get("timezone", "").strip()
        if name:
            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as error:
                raise ValidationError(f"“{name}” is not an IANA time zone (e.g. Europe/Berlin).") from error
        return name


class KeyFilterForm(ConsoleForm):
    q = forms.CharField(
        label="Search",
        required=False,
        widget=SearchInput(attrs={"placeholder": "Name, user email or key prefix (sk-ab12)"}),
    )
    user = forms.ModelChoiceField(label="User", required=False, queryset=User.objects.order_by("email"))
    group = forms.ModelChoiceField(
        label="Group", required=False, queryset=Group.objects.order_by("sort_order")
    )
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *APIKey.Status.choices]
    )
    expiring = forms.IntegerField(
        label="Expiring within (days)",
        required=False,
        min_value=1,
        max_value=3650,
        widget=forms.NumberInput(),
    )
    exhausted = forms.ChoiceField(
        label="Quota",
        required=False,
        choices=[("", "Any quota"), ("yes", "Used up"), ("no", "Not used up")],
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["user"].label_from_instance = lambda user: user.email
        self.fields["user"].empty_label = "Any user"
        self.fields["group"].empty_label = "Any group"
