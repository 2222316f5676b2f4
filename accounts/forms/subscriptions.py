from __future__ import annotations

from django import forms
from django.template.loader import render_to_string
from django.urls import reverse

from accounts.models import Group, Subscription, User
from accounts.services.subscriptions import MAX_DAYS
from common.forms import ConsoleForm, SearchInput


def subscription_groups():
    return Group.objects.filter(subscription_type=Group.SubscriptionType.SUBSCRIPTION).order_by(
        "sort_order", "id"
    )


class UserPicker(forms.Widget):
    """Many users, found by typing: only the chosen ones are rendered, never the whole list.

    The search box asks accounts:user-picker for matches; the chosen users are hidden inputs.
    """

    def value_from_datadict(self, data, files, name):
        return data.getlist(name) if hasattr(data, "getlist") else data.get(name, [])

    def value_omitted_from_data(self, data, files, name) -> bool:
        return False  # an empty list is "nobody chosen", not "field absent"

    def render(self, name, value, attrs=None, renderer=None) -> str:
        ids = [int(v) for v in (value or []) if str(v).isdigit()]
        picked = list(User.objects.filter(pk__in=ids).only("id", "email").order_by("email")) if ids else []
        attrs = {**self.build_attrs(self.attrs, attrs)}
        attrs["aria_describedby"] = attrs.pop("aria-describedby", "")
        widget = {
            "name": name,
            "attrs": attrs,
            "picked": picked,
            "search_url": reverse("accounts:user-picker"),
        }
        return render_to_string("accounts/user_picker.html", {"widget": widget})


class SubscriptionAssignForm(ConsoleForm):
    users = forms.ModelMultipleChoiceField(
        label="Users",
        queryset=User.objects.all(),
        widget=UserPicker,
        help_text="Find users by email or name and add one, or several to assign them all at once. "
        "A user who already has a live subscription to the group has it extended instead.",
    )
    group = forms.ModelChoiceField(label="Subscription group", queryset=subscription_groups())
    days = forms.IntegerField(
        label="Days",
        required=False,
        min_value=1,
        max_value=MAX_DAYS,
        help_text="Empty = the group's default validity (shown next to each group).",
    )
    notes = forms.CharField(label="Notes", required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["group"].label_from_instance = lambda group: (
            f"{group.name} ({group.get_platform_display()}, {group.default_validity_days} days)"
        )


class SubscriptionFilterForm(ConsoleForm):
    q = forms.CharField(
        label="Search", required=False, widget=SearchInput(attrs={"placeholder": "User email or name"})
    )
    group = forms.ModelChoiceField(label="Group", required=False, queryset=subscription_groups())
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *Subscription.Status.choices]
    )
    expiring = forms.IntegerField(
        label="Expiring within (days)",
        required=False,
        min_value=1,
        max_value=MAX_DAYS,
        widget=forms.NumberInput(),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["group"].empty_label = "Any group"


class SubscriptionExtendForm(ConsoleForm):
    days = forms.IntegerField(
        label="Days (negative to shorten)",
        min_value=-MAX_DAYS,
        max_value=MAX_DAYS,
        help_text="A live subscription moves from its expiry, an expired one from now.",
    )

    def clean_days(self) -> int:
        days = self.cleaned_data["days"]
        if days == 0:
            raise forms.ValidationError("Enter a number of days other than 0.")
        return days


class SubscriptionResetWindowsForm(ConsoleForm):
    windows = forms.MultipleChoiceField(
        label="Windows to reset",
        choices=[(kind, label) for kind, label, *_ in Subscription.WINDOWS],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one window."},
    )
