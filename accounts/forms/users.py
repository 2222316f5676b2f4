from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib.auth import password_validation

from accounts.models import BalanceHistory, Group, User
from common.forms import ConsoleForm, ConsoleModelForm, DecimalInputField, MoneyField, SearchInput

USER_FIELDS = [
    "email",
    "username",
    "role",
    "status",
    "concurrency",
    "rpm_limit",
    "is_staff",
    "allowed_groups",
    "notes",
]


class UserForm(ConsoleModelForm):
    class Meta:
        model = User
        fields = USER_FIELDS
        labels = {"is_staff": "Staff (may sign in to this console)", "rpm_limit": "Requests per minute"}
        help_texts = {
            "email": "Used to sign in.",
            "rpm_limit": "0 = no limit.",
            "concurrency": "Requests this user may have in flight at once.",
            "allowed_groups": "Exclusive groups this user may bind keys to.",
            "is_staff": "Staff sign in to this console with their email and password.",
        }
        widgets = {
            "notes": forms.Textarea(attrs={"rows": 3}),
            "allowed_groups": forms.SelectMultiple(attrs={"size": 6}),
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["allowed_groups"].queryset = Group.objects.filter(is_exclusive=True).order_by(
            "sort_order"
        )
        self.fields["username"].required = False

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
    role = forms.ChoiceField(label="Role", required=False, choices=[("", "Any role"), *User.Role.choices])
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *User.Status.choices]
    )
    staff = forms.ChoiceField(
        label="Staff", required=False, choices=[("", "Staff or not"), ("yes", "Staff"), ("no", "Not staff")]
    )


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
