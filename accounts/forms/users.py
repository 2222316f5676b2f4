from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib.auth import password_validation
from django.utils.html import format_html

from accounts.models import BalanceHistory, Group, User
from accounts.roles import ROLE_SUMMARIES, ConsoleRole, has_console_role
from common.forms import ConsoleForm, ConsoleModelForm, DecimalInputField, MoneyField, SearchInput

USER_FIELDS = [
    "email",
    "username",
    "status",
    "concurrency",
    "rpm_limit",
    "console_access",
    "allowed_groups",
    "notes",
]


def _choice(name: str, summary: str) -> str:
    return format_html(
        '<strong>{}</strong><span class="d-block small text-body-secondary">{}</span>', name, summary
    )


# Staff (may sign in) and their role, as one choice: a role without staff would mean nothing.
NO_ACCESS = "none"
ACCESS_CHOICES = [
    (NO_ACCESS, _choice("No access", "a customer: uses API keys, never signs in here")),
    *((role.value, _choice(role.label, ROLE_SUMMARIES[role])) for role in ConsoleRole),
]
ACCESS_FILTER_CHOICES = [
    ("", "Anyone"),
    ("none", "Customers (no access)"),
    ("staff", "Any staff"),
    *((role.value, f"{role.label}s") for role in reversed(ConsoleRole)),
]


class UserForm(ConsoleModelForm):
    console_access = forms.ChoiceField(
        label="Console access",
        choices=ACCESS_CHOICES,
        # Never defaulted from a missing value: a form that lost the field must not demote anyone.
        error_messages={"required": "Choose the console access: none, viewer, operator or admin."},
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
        help_text="Staff sign in to this console with their email and password; the role says "
        "what they may do there.",
    )

    class Meta:
        model = User
        fields = USER_FIELDS
        labels = {"rpm_limit": "Requests per minute"}
        help_texts = {
            "email": "Used to sign in.",
            "rpm_limit": "0 = no limit.",
            "concurrency": "Requests this user may have in flight at once.",
            "allowed_groups": "Exclusive groups this user may bind keys to.",
        }
        widgets = {
            "notes": forms.Textarea(attrs={"rows": 3}),
            "allowed_groups": forms.SelectMultiple(attrs={"size": 6}),
        }

    def __init__(self, *args, actor: User | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["allowed_groups"].queryset = Group.objects.filter(is_exclusive=True).order_by(
            "sort_order"
        )
        self.fields["username"].required = False
        access = self.fields["console_access"]
        self.initial["console_access"] = self.instance.console_access or NO_ACCESS
        # A locked field keeps its saved value whatever is posted (Django ignores disabled input);
        # the services refuse the change too.
        locked_because = ""
        if not has_console_role(actor, ConsoleRole.ADMIN):
            locked_because = "Only an admin gives or changes console access."
        elif self.instance.is_superuser:
            locked_because = "A superuser is always an admin; Django admin changes that."
        elif self.instance.pk and actor is not None and self.instance.pk == actor.pk:
            locked_because = "You cannot change your own console access; another admin can."
        if locked_because:
            access.disabled = True
            access.help_text = locked_because

    def clean(self) -> dict:
        cleaned = super().clean()
        access = cleaned.pop("console_access", None)
        if access is not None and not self.fields["console_access"].disabled:
            cleaned["is_staff"] = access != NO_ACCESS
            cleaned["console_role"] = ConsoleRole.VIEWER if access == NO_ACCESS else access
        return cleaned

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        clash = User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk)
        if clash.exists():
            raise forms.ValidationError("Another user already has this email address.")
        return email


class UserCreateForm(UserForm):
    password = forms.CharField(
        label="Password",
        required=False,
        strip=False,
        # Kept when the form comes back with an error (that response is not cached).
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}, render_value=True),
        help_text="Leave empty for a user who only uses API keys and never signs in.",
    )
    initial_balance = MoneyField(label="Initial balance (USD)", required=False, min_value=0)

    class Meta(UserForm.Meta):
        fields = [*USER_FIELDS[:2], "password", "initial_balance", *USER_FIELDS[2:]]

    def clean_password(self) -> str:
        password = self.cleaned_data.get("password") or ""
        if password:
            password_validation.validate_password(password)
        return password

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("is_staff") and not cleaned.get("password"):
            self.add_error("password", "Staff need a password to sign in to the console.")
        return cleaned


class BalanceAdjustForm(ConsoleForm):
    operation = forms.ChoiceField(
        choices=BalanceHistory.Operation.choices,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
        initial="add",
    )
    amount = MoneyField(label="Amount (USD)", min_value=0)
    note = forms.CharField(
        max_length=500, help_text="Why: shown in the user's balance history.", widget=forms.TextInput()
    )


class UserFilterForm(ConsoleForm):
    q = forms.CharField(
        label="Search", required=False, widget=SearchInput(attrs={"placeholder": "Email, name or notes"})
    )
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *User.Status.choices]
    )
    access = forms.ChoiceField(label="Console access", required=False, choices=ACCESS_FILTER_CHOICES)


class UserGroupRateForm(ConsoleForm):
    group = forms.ModelChoiceField(queryset=Group.objects.none(), label="Group")
    rate_multiplier = DecimalInputField(
        label="Multiplier",
        max_digits=12,
        decimal_places=6,
        min_value=Decimal("0.000001"),
        help_text="Replaces the group's own rate multiplier for this user only.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = Group.objects.order_by("sort_order", "id")
