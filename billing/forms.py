from __future__ import annotations

from datetime import date

from django import forms
from django.forms.utils import flatatt
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.models import APIKey, Group, UpstreamAccount, User
from billing.models import ReconcileMode, ReconcilePeriod, ReconcileScope
from billing.selectors import DEFAULT_PERIOD, UsageFilters, period_range
from channels.pricing import PricingSource
from common.forms import ConsoleForm

# The date filters' range. Usage older than 2000 does not exist, and earlier dates would
# overflow when moved across timezones; 9999-12-31 as the last day means "no end".
FIRST_DAY = date(2000, 1, 1)


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs=None) -> None:
        super().__init__({"min": FIRST_DAY.isoformat(), "max": date.max.isoformat(), **(attrs or {})})


class FastSelect(forms.Select):
    """A select rendered in one pass rather than one template per option.

    The key and user filters list every key and user; Django's per-option templates made those
    two selects the slowest part of the usage page.
    """

    def render(self, name, value, attrs=None, renderer=None) -> str:
        widget = self.get_context(name, value, attrs)["widget"]
        options = format_html_join(
            "",
            '<option value="{}"{}>{}</option>',
            (
                (option["value"], SELECTED if option["selected"] else "", option["label"])
                for _, group, _ in widget["optgroups"]
                for option in group
            ),
        )
        return format_html(
            '<select name="{}"{}>{}</select>', widget["name"], flatatt(widget["attrs"]), options
        )


SELECTED = mark_safe(" selected")  # noqa: S308 - a constant


class KeyChoiceField(forms.ModelChoiceField):
    widget = FastSelect

    def label_from_instance(self, obj: APIKey) -> str:
        return f"{obj.name} (…{obj.key_last4})"


class UserChoiceField(forms.ModelChoiceField):
    widget = FastSelect

    def label_from_instance(self, obj: User) -> str:
        return obj.email


class UsageFilterForm(ConsoleForm):
    period = forms.ChoiceField(
        label="Period",
        required=False,
        initial=DEFAULT_PERIOD,
        choices=[
            ("today", "Today"),
            ("7d", "Last 7 days"),
            ("30d", "Last 30 days"),
            ("custom", "Custom range"),
        ],
    )
    date_from = forms.DateField(label="From", required=False, widget=DateInput())
    date_to = forms.DateField(label="To", required=False, widget=DateInput())
    user = UserChoiceField(label="User", required=False, queryset=User.objects.none(), empty_label="Any user")
    api_key = KeyChoiceField(
        label="API key", required=False, queryset=APIKey.objects.none(), empty_label="Any key"
    )
    account = forms.ModelChoiceField(
        label="Account", required=False, queryset=UpstreamAccount.objects.none(), empty_label="Any account"
    )
    group = forms.ModelChoiceField(
        label="Group", required=False, queryset=Group.objects.none(), empty_label="Any group"
    )
    model = forms.CharField(
        label="Model",
        required=False,
        max_length=200,
        # A plain text input: the filter applies on Enter or leaving the field, not per keystroke,
        # since only a whole name can match.
        widget=forms.TextInput(attrs={"placeholder": "Exact name", "list": "usage-models"}),
    )
    model_field = forms.ChoiceField(
        label="Model name",
        required=False,
        choices=[("requested", "Requested"), ("upstream", "Upstream"), ("billing", "Billing")],
    )
    pricing_source = forms.ChoiceField(
        label="Price from", required=False, choices=[("", "Any source"), *PricingSource.choices]
    )
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "Any status"), ("ok", "Succeeded (< 400)"), ("error", "Failed (≥ 400)")],
    )

    def __init__(self, data=None, *args, **kwargs) -> None:
        if data is not None and not data.get("period"):
            # Show the period that applies: dates alone mean a custom range, nothing means the default.
            data = data.copy()
            data["period"] = "custom" if data.get("date_from") or data.get("date_to") else DEFAULT_PERIOD
        super().__init__(data, *args, **kwargs)
        self.fields["user"].queryset = User.objects.only("id", "email").order_by("email")
        self.fields["api_key"].queryset = APIKey.objects.only("id", "name", "key_last4").order_by(
            "name", "id"
        )
        self.fields["account"].queryset = UpstreamAccount.objects.only("id", "name").order_by("name", "id")
        self.fields["group"].queryset = Group.objects.only("id", "name").order_by("sort_order", "id")

    def _clean_day(self, name: str) -> date | None:
        day = self.cleaned_data.get(name)
        if day and day < FIRST_DAY:
            raise forms.ValidationError(f"Choose a date from {FIRST_DAY:%Y-%m-%d} on.")
        return day

    def clean_date_from(self) -> date | None:
        return self._clean_day("date_from")

    def clean_date_to(self) -> date | None:
        return self._clean_day("date_to")

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned

    def filters(self) -> UsageFilters | None:
        """The filters to apply, or None when one is invalid: then nothing is shown or exported.

        Falling back to defaults instead would show (and export) every customer's usage while
        the form still shows the one customer that was asked for.
        """
        if self.is_bound and not self.is_valid():
            return None
        data = self.cleaned_data if self.is_bound else {}
        # A preset ignores the dates; usage.js switches the select to "custom" when a date is typed.
        period = data.get("period") or DEFAULT_PERIOD
        start, end = period_range(period, date_from=data.get("date_from"), date_to=data.get("date_to"))
        return UsageFilters(
            start=start,
            end=end,
            user_id=data["user"].pk if data.get("user") else None,
            api_key_id=data["api_key"].pk if data.get("api_key") else None,
            account_id=data["account"].pk if data.get("account") else None,
            group_id=data["group"].pk if data.get("group") else None,
            model=(data.get("model") or "").strip(),
            model_field=data.get("model_field") or "requested",
            pricing_source=data.get("pricing_source") or "",
            status=data.get("status") or "",
        )

    def error_summary(self) -> str:
        """Every field's errors on one line, for answers that are not a page (the CSV export)."""
        return " ".join(
            f"{self.fields[name].label if name in self.fields else 'Filters'}: {' '.join(errors)}"
            for name, errors in self.errors.items()
        )


class ReconcileFilterForm(ConsoleForm):
    batch = forms.CharField(
        label="Batch",
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Batch id"}),
    )
    host = forms.ChoiceField(label="Host", required=False, choices=[])

    def __init__(self, data=None, *args, hosts: list[str] = (), **kwargs) -> None:
        super().__init__(data, *args, **kwargs)
        self.fields["host"].choices = [("", "Any host"), *((host, host) for host in hosts)]


class ReconcileStartForm(ConsoleForm):
    scope = forms.ChoiceField(
        label="Scope",
        choices=[("all", "Everything (one run per scope)"), *ReconcileScope.choices],
        initial="all",
    )
    period = forms.ChoiceField(label="Period", choices=ReconcilePeriod.choices, initial=ReconcilePeriod.ALL)
    mode = forms.ChoiceField(
        label="Mode",
        choices=ReconcileMode.choices,
        initial=ReconcileMode.DRY_RUN,
        widget=forms.RadioSelect,
        help_text="A dry run only reports (operators); a fix moves drifted counters to the ledger's values (admins).",
    )

    def scopes(self) -> list[str]:
        scope = self.cleaned_data["scope"]
        return list(ReconcileScope.values) if scope == "all" else [scope]
