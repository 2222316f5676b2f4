"""The channel form: channel fields, pricing cards with nested interval rows, and the mapping.

Prices are typed and shown in $ per million tokens and converted to USD per token here, at the
form boundary, with Decimal arithmetic (common.money). Cards are a formset (prefix ``card``);
each card carries its own interval formset (prefix ``card-<n>-iv``); mapping rows are a formset
(prefix ``map``). The rules (docs/pricing.md#card-validation) come from channels.rules, and
each problem is put on the card, interval row or mapping row (and field) it belongs to.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.forms import formset_factory

from accounts.models import Group, Platform
from channels.catalog import CatalogPrice
from channels.models import Channel, ModelPricing, PricingInterval
from channels.pricing import BillingMode, BillingModelSource, PriceInterval
from channels.rules import (
    CARD_PRICES,
    MULTIPLIERS,
    TOKEN_PRICES,
    CardSpec,
    MappingRule,
    Problem,
    card_problems,
    mapping_problems,
    mapping_rules,
    pattern_overlap_problems,
    split_models,
)
from channels.selectors import channel_names_for_groups, groups_for_channel
from common.forms import ConsoleForm, ConsoleModelForm, DecimalInputField, MoneyField, SearchInput
from common.money import per_mtok_to_per_token, per_token_to_per_mtok

MAX_CARDS = 50
MAX_INTERVALS = 50
MAX_MAPPING_ROWS = 200


class PerMTokField(DecimalInputField):
    """A price typed in USD per million tokens (converted to per token by the form, not here)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("min_value", Decimal(0))
        # 8 places per MTok = 14 places per token, exactly what the model stores.
        super().__init__(max_digits=22, decimal_places=8, **kwargs)
        self.widget.attrs["class"] = "price-input"


class MultiplierField(DecimalInputField):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("required", False)
        super().__init__(max_digits=12, decimal_places=6, min_value=Decimal(0), **kwargs)


def _mark_invalid(form: forms.Form, field: str | None, message: str) -> None:
    """Add an error found after cleaning, flagging the widget the way ConsoleFormMixin does."""
    form.add_error(field if field in form.fields else None, message)
    if field in form.fields:
        widget = form.fields[field].widget
        if "is-invalid" not in widget.attrs.get("class", ""):
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} is-invalid".strip()
        widget.attrs["aria-invalid"] = "true"


def _mtok(value: Decimal | None) -> Decimal | None:
    return per_token_to_per_mtok(value)


def _per_token(value: Decimal | None) -> Decimal | None:
    return per_mtok_to_per_token(value)


# -- channel fields -------------------------------------------------------------------------------


class ChannelForm(ConsoleModelForm):
    groups = forms.ModelMultipleChoiceField(
        queryset=Group.objects.all(),
        required=False,
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="Groups in another channel are not listed: a group belongs to one channel at most.",
    )

    class Meta:
        model = Channel
        fields = ["name", "status", "billing_model_source", "restrict_models", "description", "groups"]
        labels = {
            "billing_model_source": "Bill by",
            "restrict_models": "Only allow models priced in this channel",
        }
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        channel = self.instance if self.instance.pk else None
        if channel is not None:
            self.initial["groups"] = [g.pk for g in channel.groups.all()]
        # Validate against every group (to name the channel holding a taken one) but offer only free ones.
        self.fields["groups"].widget.choices = [(g.pk, g.name) for g in groups_for_channel(channel=channel)]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Channel.objects.filter(name__iexact=name).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("Another channel already has this name.")
        return name

    def clean_groups(self) -> list[Group]:
        groups = list(self.cleaned_data["groups"])
        taken = channel_names_for_groups([g.pk for g in groups], exclude_channel=self.instance)
        if taken:
            raise forms.ValidationError(
                [
                    f"Group “{g.name}” already belongs to channel “{taken[g.pk]}”; a group can be in one channel only."
                    for g in groups
                    if g.pk in taken
                ]
            )
        return groups

    def channel_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if k != "groups"}


class ChannelFilterForm(ConsoleForm):
    q = forms.CharField(
        label="Search", required=False, widget=SearchInput(attrs={"placeholder": "Name or description"})
    )
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *Channel.Status.choices]
    )
    billing_model_source = forms.ChoiceField(
        label="Bill by", required=False, choices=[("", "Any"), *BillingModelSource.choices]
    )


# -- interval rows --------------------------------------------------------------------------------


class IntervalForm(ConsoleForm):
    min_tokens = forms.IntegerField(label="Above (tokens)", min_value=0, initial=0, required=False)
    max_tokens = forms.IntegerField(
        label="Up to (tokens)",
        min_value=1,
        required=False,
        widget=forms.NumberInput(attrs={"placeholder": "∞"}),
    )
    tier_label = forms.CharField(label="Tier label", max_length=32, required=False)
    input_price = PerMTokField(label="Input ($/MTok)")
    output_price = PerMTokField(label="Output ($/MTok)")
    cache_write_price = PerMTokField(label="Cache write ($/MTok)")
    cache_read_price = PerMTokField(label="Cache read ($/MTok)")
    input_multiplier = MultiplierField(label="Input ×")
    output_multiplier = MultiplierField(label="Output ×")
    cache_write_multiplier = MultiplierField(label="Cache write ×")
    cache_read_multiplier = MultiplierField(label="Cache read ×")
    per_request_price = MoneyField(label="Per unit ($)", required=False, min_value=0)

    @staticmethod
    def initial_from(interval: PricingInterval) -> dict[str, Any]:
        return {
            "min_tokens": interval.min_tokens,
            "max_tokens": interval.max_tokens,
            "tier_label": interval.tier_label,
            **{name: _mtok(getattr(interval, name)) for name in TOKEN_PRICES},
            **{name: _normal(getattr(interval, name)) for name in (*MULTIPLIERS, "per_request_price")},
        }

    def to_spec(self) -> PriceInterval:
        data = self.cleaned_data
        return PriceInterval(
            min_tokens=data["min_tokens"] or 0,
            max_tokens=data["max_tokens"],
            tier_label=data["tier_label"].strip(),
            **{name: _per_token(data[name]) for name in TOKEN_PRICES},
            **{name: data[name] for name in (*MULTIPLIERS, "per_request_price")},
        )


def _normal(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.normalize()


IntervalFormSet = formset_factory(
    IntervalForm, extra=0, can_delete=True, max_num=MAX_INTERVALS, absolute_max=MAX_INTERVALS
)


# -- pricing cards --------------------------------------------------------------------------------


class CardForm(ConsoleForm):
    platform = forms.ChoiceField(choices=Platform.choices, initial=Platform.ANTHROPIC)
    billing_mode = forms.ChoiceField(
        label="Billing mode", choices=BillingMode.choices, initial=BillingMode.TOKEN
    )
    models = forms.CharField(
        label="Models",
        max_length=20_000,
        widget=forms.Textarea(
            attrs={"rows": 2, "class": "models-input", "autocomplete": "off", "spellcheck": "false"}
        ),
        help_text="Comma- or line-separated. End a name with * to price every model starting with it.",
    )
    input_price = PerMTokField(label="Input ($/MTok)")
    output_price = PerMTokField(label="Output ($/MTok)")
    cache_write_price = PerMTokField(label="Cache write 5m ($/MTok)")
    cache_write_1h_price = PerMTokField(
        label="Cache write 1h ($/MTok)", help_text="Empty = the 5-minute price."
    )
    cache_read_price = PerMTokField(label="Cache read ($/MTok)")
    image_output_price = PerMTokField(label="Image output ($/MTok)")
    per_request_price = MoneyField(label="Per request / image ($)", required=False, min_value=0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["billing_mode"].widget.attrs["class"] += " billing-mode"
        self.intervals = IntervalFormSet(
            self.data if self.is_bound else None,
            prefix=f"{self.prefix}-iv",
            initial=self.initial.get("intervals") or None,
        )

    @staticmethod
    def initial_from(card: ModelPricing) -> dict[str, Any]:
        return {
            "platform": card.platform,
            "billing_mode": card.billing_mode,
            "models": ", ".join(card.models),
            **{name: _mtok(getattr(card, name)) for name in CARD_PRICES},
            "per_request_price": _normal(card.per_request_price),
            "intervals": [IntervalForm.initial_from(interval) for interval in card.intervals.all()],
        }

    @property
    def number(self) -> int:
        """The card's number as the page shows it ("Card 2"): its position in the formset, from 1."""
        return int(self.prefix.rsplit("-", 1)[1]) + 1

    def has_changed(self) -> bool:
        return super().has_changed() or self.intervals.has_changed()

    def clean_models(self) -> list[str]:
        return split_models(self.cleaned_data["models"])

    @property
    def model_names(self) -> list[str]:
        """The names as typed, for chips: from cleaned data, the bound value, or the initial value."""
        value = self["models"].value() or ""
        return split_models(value if isinstance(value, str) else ", ".join(value))

    def live_intervals(self) -> list[IntervalForm]:
        return [form for form in self.intervals.forms if _is_live(self.intervals, form)]

    def to_spec(self) -> CardSpec:
        data = self.cleaned_data
        return CardSpec(
            platform=data["platform"],
            models=tuple(data["models"]),
            billing_mode=data["billing_mode"],
            **{name: _per_token(data[name]) for name in CARD_PRICES},
            per_request_price=data["per_request_price"],
            intervals=tuple(form.to_spec() for form in self.live_intervals()),
        )


CardFormSet = formset_factory(CardForm, extra=0, can_delete=True, max_num=MAX_CARDS, absolute_max=MAX_CARDS)


def new_card_form(index: int) -> CardForm:
    """An empty card at position `index`, as the "Add pricing card" button inserts it."""
    formset = CardFormSet(prefix="card")
    form = CardForm(prefix=f"card-{index}", empty_permitted=True, use_required_attribute=False)
    formset.add_fields(form, index)
    return form


def new_interval_form(card_prefix: str, index: int, initial: dict | None = None) -> IntervalForm:
    formset = IntervalFormSet(prefix=f"{card_prefix}-iv")
    form = IntervalForm(
        prefix=f"{card_prefix}-iv-{index}",
        initial=initial,
        empty_permitted=True,
        use_required_attribute=False,
    )
    formset.add_fields(form, index)
    return form


def catalog_interval_initials(found: CatalogPrice | None) -> list[dict[str, Any]]:
    """Interval rows (in $/MTok) for the catalog's long-context tiers, e.g. above 200K tokens."""
    tiers = found.tiers if found else ()
    rows = []
    for position, tier in enumerate(tiers):
        following = tiers[position + 1] if position + 1 < len(tiers) else None
        label = f">{tier.min_tokens // 1000}K" if tier.min_tokens % 1000 == 0 else f">{tier.min_tokens:,}"
        rows.append(
            {
                "min_tokens": tier.min_tokens,
                "max_tokens": following.min_tokens if following else None,
                "tier_label": label,
                **{name: _mtok(getattr(tier.prices, name)) for name in TOKEN_PRICES},
            }
        )
    return rows


# -- model mapping --------------------------------------------------------------------------------


class MappingForm(ConsoleForm):
    platform = forms.ChoiceField(choices=Platform.choices, initial=Platform.ANTHROPIC)
    source = forms.CharField(
        label="Requested model",
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "claude-3-5-sonnet*"}),
    )
    target = forms.CharField(
        label="Send as", max_length=200, widget=forms.TextInput(attrs={"placeholder": "claude-sonnet-4-5"})
    )

    def to_rule(self) -> MappingRule:
        data = self.cleaned_data
        return MappingRule(
            platform=data["platform"], source=data["source"].strip(), target=data["target"].strip()
        )


MappingFormSet = formset_factory(
    MappingForm, extra=0, can_delete=True, max_num=MAX_MAPPING_ROWS, absolute_max=MAX_MAPPING_ROWS
)


def new_mapping_form(index: int) -> MappingForm:
    formset = MappingFormSet(prefix="map")
    form = MappingForm(prefix=f"map-{index}", empty_permitted=True, use_required_attribute=False)
    formset.add_fields(form, index)
    return form


# -- the whole editor -----------------------------------------------------------------------------


def _is_live(formset: forms.BaseFormSet, form: forms.Form) -> bool:
    """Not marked for removal, and not a blank row that was added and left untouched."""
    if not formset.is_bound:
        return True
    if formset.can_delete and formset._should_delete_form(form):
        return False
    return not (form.empty_permitted and not form.has_changed())


def _form_problems(form: forms.Form, where: str) -> list[tuple[str, str]]:
    found = []
    for name, errors in form.errors.items():
        place = f"{where} · {form[name].label}" if name in form.fields else where
        found += [(place, str(error)) for error in errors]
    return found


class ChannelEditor:
    """The channel form, its cards (with their intervals) and its mapping rows, validated together."""

    def __init__(self, data=None, *, channel: Channel | None = None) -> None:
        self.channel = channel
        self.form = ChannelForm(data, instance=channel or Channel())
        cards = list(channel.pricing_cards.all()) if channel else []
        self.cards = CardFormSet(
            data, prefix="card", initial=[CardForm.initial_from(c) for c in cards] or None
        )
        rules = mapping_rules(channel) if channel else []
        self.mapping = MappingFormSet(
            data,
            prefix="map",
            initial=[{"platform": r.platform, "source": r.source, "target": r.target} for r in rules] or None,
        )

    @property
    def is_bound(self) -> bool:
        return self.form.is_bound

    def live_cards(self) -> list[CardForm]:
        return [form for form in self.cards.forms if _is_live(self.cards, form)]

    def live_rules(self) -> list[MappingForm]:
        return [form for form in self.mapping.forms if _is_live(self.mapping, form)]

    def is_valid(self) -> bool:
        valid = self.form.is_valid()
        valid = self.cards.is_valid() and valid
        valid = self.mapping.is_valid() and valid
        cards = self.live_cards()
        for card in cards:
            valid = card.intervals.is_valid() and valid
        valid = self._check_cards(cards) and valid
        valid = self._check_mapping(self.live_rules()) and valid
        return valid

    def _check_cards(self, cards: list[CardForm]) -> bool:
        problems: list[tuple[CardForm, Problem]] = []
        for card in cards:
            if card.is_valid() and card.intervals.is_valid():
                problems += [(card, p) for p in card_problems(0, card.to_spec())]
        # Overlaps are checked across every card whose model list could be read, valid or not.
        readable = [card for card in cards if isinstance(card.cleaned_data.get("models"), list)]
        entries = [(card.cleaned_data.get("platform", ""), card.cleaned_data["models"]) for card in readable]
        labels = [f"card {self.cards.forms.index(card) + 1}" for card in readable]
        problems += [(readable[p.card], p) for p in pattern_overlap_problems(entries, labels=labels)]
        for card, problem in problems:
            if problem.interval is None:
                _mark_invalid(card, problem.field, problem.message)
            else:
                _mark_invalid(card.live_intervals()[problem.interval], problem.field, problem.message)
        return not problems

    def _check_mapping(self, rows: list[MappingForm]) -> bool:
        readable = [row for row in rows if row.is_valid()]
        problems = mapping_problems([row.to_rule() for row in readable])
        for problem in problems:
            _mark_invalid(readable[problem.rule], problem.field, problem.message)
        return not problems

    def card_specs(self) -> list[CardSpec]:
        return [card.to_spec() for card in self.live_cards()]

    def mapping_rules(self) -> list[MappingRule]:
        return [row.to_rule() for row in self.live_rules()]

    def problems(self) -> list[tuple[str, str]]:
        """Every error of a validated editor as (where, message), e.g. ("Card 2 · Input ($/MTok)",
        "Ensure this value is greater than or equal to 0."): what saving would mark on the page,
        for places that show the errors away from their fields (the price preview)."""
        found = _form_problems(self.form, "Channel")
        found += [("Pricing", str(error)) for error in self.cards.non_form_errors()]
        for card in self.live_cards():
            where = f"Card {card.number}"
            found += _form_problems(card, where)
            found += [(f"{where} · intervals", str(error)) for error in card.intervals.non_form_errors()]
            for row, interval in enumerate(card.live_intervals(), start=1):
                found += _form_problems(interval, f"{where} · interval row {row}")
        for row, rule in enumerate(self.live_rules(), start=1):
            found += _form_problems(rule, f"Mapping row {row}")
        return found

    @property
    def has_errors(self) -> bool:
        if not self.is_bound:
            return False
        return bool(
            self.form.errors
            or any(self.cards.errors)
            or self.cards.non_form_errors()
            or any(self.mapping.errors)
            or any(any(card.intervals.errors) for card in self.live_cards())
        )
