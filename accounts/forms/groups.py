from __future__ import annotations

from django import forms

from accounts.models import MAX_PRIORITY, MIN_PRIORITY, Group, UpstreamAccount
from accounts.rules import fallback_platform_error, is_valid_timezone
from accounts.selectors.groups import group_choices
from common.forms import ConsoleForm, ConsoleModelForm, DecimalInputField, MoneyField

LIMIT_HELP = "USD. Empty = no limit. 0 = no usage at all: it blocks every request to this group."
LIMITS = (("daily_limit_usd", "daily"), ("weekly_limit_usd", "weekly"), ("monthly_limit_usd", "monthly"))
BLOCKS_ALL = "0 blocks all usage: subscribers of this group cannot make any request."


def limit_warnings(limits: dict) -> dict[str, str]:
    """What an operator should know about a set of subscription limits, by field.

    0 is kept as "no usage allowed" (operators rely on it), so typing it gets said out loud;
    a shorter window's limit above a longer one's can never be reached.
    """
    warnings: dict[str, str] = {}
    for position, (field, period) in enumerate(LIMITS):
        value = limits.get(field)
        if value is None:
            continue
        if value == 0:
            warnings[field] = BLOCKS_ALL
            continue
        for longer_field, longer in LIMITS[position + 1 :]:
            cap = limits.get(longer_field)
            if cap is not None and 0 < cap < value:
                warnings[field] = (
                    f"Higher than the {longer} limit (${cap:,f}), which is reached first: "
                    f"the {period} limit never applies."
                )
                break
    return warnings


IMAGE_HELP = "USD per image. Empty = the model's default price."

GROUP_FIELDS = [
    "name",
    "description",
    "platform",
    "rate_multiplier",
    "status",
    "is_exclusive",
    "subscription_type",
    "daily_limit_usd",
    "weekly_limit_usd",
    "monthly_limit_usd",
    "default_validity_days",
    "timezone",
    "image_price_1k",
    "image_price_2k",
    "image_price_4k",
    "allow_image_generation",
    "claude_code_only",
    "fallback_group",
    "fallback_group_on_invalid_request",
    "rpm_limit",
    "model_routing_enabled",
]

# How the form is laid out: (legend, fields).
GROUP_SECTIONS = [
    (
        "Identity and pricing",
        ["name", "platform", "rate_multiplier", "status", "is_exclusive", "description"],
    ),
    (
        "Subscriptions",
        [
            "subscription_type",
            "default_validity_days",
            "daily_limit_usd",
            "weekly_limit_usd",
            "monthly_limit_usd",
            "timezone",
        ],
    ),
    (
        "Images and clients",
        ["image_price_1k", "image_price_2k", "image_price_4k", "allow_image_generation", "claude_code_only"],
    ),
    ("Fallbacks and limits", ["fallback_group", "fallback_group_on_invalid_request", "rpm_limit"]),
]


class PlatformGroupSelect(forms.Select):
    """Group options carrying their platform, so groups.js can offer only the chosen platform's."""

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex, attrs)
        instance = getattr(value, "instance", None)
        if instance is not None:
            option["attrs"]["data-platform"] = instance.platform
        return option


class GroupForm(ConsoleModelForm):
    rate_multiplier = DecimalInputField(
        label="Rate multiplier",
        initial=Group._meta.get_field("rate_multiplier").default,
        max_digits=12,
        decimal_places=6,
        help_text="Multiplies the cost users pay. Must be greater than 0.",
    )
    daily_limit_usd = MoneyField(label="Daily limit (USD)", required=False, min_value=0, help_text=LIMIT_HELP)
    weekly_limit_usd = MoneyField(
        label="Weekly limit (USD)", required=False, min_value=0, help_text=LIMIT_HELP
    )
    monthly_limit_usd = MoneyField(
        label="Monthly limit (USD)", required=False, min_value=0, help_text=LIMIT_HELP
    )
    image_price_1k = MoneyField(label="Image price 1K", required=False, min_value=0, help_text=IMAGE_HELP)
    image_price_2k = MoneyField(label="Image price 2K", required=False, min_value=0, help_text=IMAGE_HELP)
    image_price_4k = MoneyField(label="Image price 4K", required=False, min_value=0, help_text=IMAGE_HELP)

    class Meta:
        model = Group
        fields = GROUP_FIELDS
        labels = {
            "is_exclusive": "Exclusive (only users allowed this group may bind keys to it)",
            "subscription_type": "Billing",
            "default_validity_days": "Default subscription length (days)",
            "timezone": "Timezone",
            "allow_image_generation": "Allow image generation",
            "claude_code_only": "Claude Code clients only",
            "fallback_group": "Fallback group",
            "fallback_group_on_invalid_request": "Fallback group on invalid request",
            "rpm_limit": "Requests per minute",
            "model_routing_enabled": "Route models to specific accounts",
        }
        help_texts = {
            "subscription_type": "Standard groups charge the user's balance; subscription groups charge a subscription's windows.",
            "timezone": "IANA name, e.g. Europe/Berlin. Empty = the server's timezone. Daily subscription windows reset at midnight here.",
            "fallback_group": "Where requests go when this group has no account available.",
            "fallback_group_on_invalid_request": "Where requests this group's accounts reject as invalid are retried.",
            "rpm_limit": "0 = no limit.",
        }
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2}),
            "timezone": forms.TextInput(attrs={"list": "timezones", "autocomplete": "off"}),
            "fallback_group": PlatformGroupSelect,
            "fallback_group_on_invalid_request": PlatformGroupSelect,
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        warnings = {} if self.is_bound else self.limit_warnings
        for field, _ in LIMITS:
            # A slot under each limit (components/form_field.html); groups.js updates it as you type.
            self.fields[field].hint_slot = True
            self.fields[field].hint = warnings.get(field, "")
            self.fields[field].widget.attrs["data-limit"] = field.removesuffix("_limit_usd")
        others = group_choices(exclude=self.instance)
        for name in ("fallback_group", "fallback_group_on_invalid_request"):
            self.fields[name].queryset = others
            self.fields[name].empty_label = "None"
            self.fields[name].label_from_instance = lambda group: (
                f"{group.name} ({group.get_platform_display()})"
            )
            self.fields[name].widget.attrs["data-platform-of"] = "id_platform"

    def clean(self) -> dict:
        cleaned = super().clean()
        platform = cleaned.get("platform")
        for name in ("fallback_group", "fallback_group_on_invalid_request"):
            target = cleaned.get(name)
            if platform and target is not None and target.platform != platform:
                self.add_error(name, fallback_platform_error(target, platform))
        return cleaned

    @property
    def limit_warnings(self) -> dict[str, str]:
        """limit_warnings() of the limits as submitted (or stored, before a submit)."""
        if self.is_bound:
            source = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        else:
            source = {field: getattr(self.instance, field) for field, _ in LIMITS}
        return limit_warnings({field: source.get(field) for field, _ in LIMITS})

    def full_clean(self) -> None:
        super().full_clean()
        warnings = self.limit_warnings
        for field, _ in LIMITS:
            self.fields[field].hint = warnings.get(field, "")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Group.objects.filter(name__iexact=name).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("Another group already has this name (names ignore case).")
        return name

    def clean_rate_multiplier(self):
        value = self.cleaned_data["rate_multiplier"]
        if value is not None and value <= 0:
            raise forms.ValidationError("The rate multiplier must be greater than 0.")
        return value

    def clean_timezone(self) -> str:
        value = (self.cleaned_data.get("timezone") or "").strip()
        if value and not is_valid_timezone(value):
            raise forms.ValidationError(f"{value!r} is not an IANA timezone name (e.g. Europe/Berlin).")
        return value

    def sections(self):
        return [(legend, [self[name] for name in names]) for legend, names in GROUP_SECTIONS]


class RoutingRuleForm(ConsoleForm):
    pattern = forms.CharField(
        label="Model pattern",
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "claude-opus-4-*"}),
    )
    accounts = forms.ModelMultipleChoiceField(
        label="Accounts",
        queryset=UpstreamAccount.objects.none(),
        widget=forms.SelectMultiple(attrs={"size": 3}),
    )

    def __init__(self, *args, accounts=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if accounts is not None:
            self.fields["accounts"].queryset = accounts


class BaseRoutingFormSet(forms.BaseFormSet):
    def __init__(self, *args, accounts=None, **kwargs) -> None:
        self.accounts = accounts
        super().__init__(*args, **kwargs)

    def get_form_kwargs(self, index):
        return {**super().get_form_kwargs(index), "accounts": self.accounts}

    def clean(self) -> None:
        seen: set[str] = set()
        for form in self.forms:
            if not form.has_changed() or self._should_delete_form(form) or not form.is_valid():
                continue
            pattern = form.cleaned_data["pattern"].strip().lower()
            if pattern in seen:
                form.add_error("pattern", "This pattern is already listed above.")
            seen.add(pattern)

    def routing(self) -> dict[str, list[int]]:
        """{pattern: [account ids]} from the filled-in rows, in row order."""
        return {
            form.cleaned_data["pattern"].strip(): [a.pk for a in form.cleaned_data["accounts"]]
            for form in self.forms
            if form.has_changed() and not self._should_delete_form(form) and form.cleaned_data
        }


RoutingFormSet = forms.formset_factory(
    RoutingRuleForm, formset=BaseRoutingFormSet, extra=1, can_delete=True, max_num=100, validate_max=True
)


def routing_initial(group: Group) -> list[dict]:
    return [{"pattern": pattern, "accounts": ids} for pattern, ids in (group.model_routing or {}).items()]


class MembershipPriorityForm(ConsoleForm):
    priority = forms.IntegerField(
        label="Priority in this group", min_value=MIN_PRIORITY, max_value=MAX_PRIORITY
    )


class GroupTargetChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, group: Group) -> str:
        notes = [group.get_platform_display()]
        if group.is_exclusive:
            notes.append("exclusive")
        if group.subscription_type == Group.SubscriptionType.SUBSCRIPTION:
            notes.append("subscription")
        return f"{group.name} ({', '.join(notes)})"


class RebindKeysForm(ConsoleForm):
    """Where the keys of a group being deleted go. The service checks the platform and existence."""

    target_group = GroupTargetChoiceField(
        label="Move the keys to",
        queryset=Group.objects.none(),
        empty_label="Choose a group…",
        help_text=(
            "A group on the same platform. Exclusive and subscription groups are allowed, but the "
            "gateway may refuse a moved key whose user has no access to that group."
        ),
    )

    def __init__(self, *args, group: Group, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Keys only work on groups of their own platform, so no other group is offered.
        self.fields["target_group"].queryset = group_choices(exclude=group).filter(platform=group.platform)
