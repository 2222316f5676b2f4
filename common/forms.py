"""Form plumbing shared by every console form: Bootstrap classes and error states."""

from __future__ import annotations

from decimal import Decimal

from django import forms


class ConsoleFormMixin:
    """Give widgets Bootstrap classes, and mark invalid ones for screen readers too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Stored Decimals read as typed numbers: 10.5 rather than 10.50000000, 0 rather than 0E-8.
        for name, value in list(self.initial.items()):
            if isinstance(value, Decimal):
                self.initial[name] = f"{value.normalize():f}" if value else "0"
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, forms.CheckboxInput):
                css = "form-check-input"
            elif isinstance(widget, forms.Select | forms.SelectMultiple):
                css = "form-select"
            elif isinstance(widget, forms.RadioSelect | forms.CheckboxSelectMultiple):
                continue
            else:
                css = "form-control"
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()

    def full_clean(self) -> None:
        super().full_clean()
        for name in self.errors:
            if name in self.fields:
                widget = self.fields[name].widget
                widget.attrs["class"] = f"{widget.attrs.get('class', '')} is-invalid".strip()
                widget.attrs["aria-invalid"] = "true"


class ConsoleForm(ConsoleFormMixin, forms.Form):
    pass


DECIMAL_ONE_SEPARATOR = "Use one decimal separator and no thousands separators, e.g. 1234.5."


def decimal_text(value: str) -> str:
    """A typed decimal with a comma read as the decimal point: "2,50" is 2.50.

    Money must never change magnitude silently, so what could be a thousands separator is
    refused rather than guessed: "1,000" (one thousand, or 1.000?), and "1.000,5" or "1,000.5".
    """
    value = value.strip()
    if "," not in value:
        return value
    if "." in value or value.count(",") > 1:
        raise forms.ValidationError(f"“{value}”: {DECIMAL_ONE_SEPARATOR}")
    whole, _, fraction = value.partition(",")
    if len(fraction) == 3 and whole.strip("+-").isdigit() and fraction.isdigit():
        raise forms.ValidationError(
            f"“{value}” could mean {whole}{fraction} or {whole}.{fraction}: type it without the comma, "
            "or with a point as the decimal separator."
        )
    return f"{whole}.{fraction}"


class DecimalInputField(forms.DecimalField):
    """A decimal typed into a text box, where a decimal comma reaches the server intact.

    A number input would not do: Chromium drops the comma of "2,50" and sends "250".
    """

    widget = forms.TextInput

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.widget.attrs.setdefault("inputmode", "decimal")
        self.widget.attrs.setdefault("autocomplete", "off")

    def to_python(self, value):
        if isinstance(value, str):
            value = decimal_text(value)
        return super().to_python(value)


class ConsoleModelForm(ConsoleFormMixin, forms.ModelForm):
    pass


class MoneyField(DecimalInputField):
    """A USD amount with 8 decimal places (docs/money.md#precision), shown as typed (8, not 8.00000000)."""

    def prepare_value(self, value):
        if isinstance(value, Decimal):
            return f"{value.normalize():f}" if value else "0"
        return super().prepare_value(value)

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_digits", 20)
        kwargs.setdefault("decimal_places", 8)
        super().__init__(**kwargs)


def filter_criteria(form: forms.Form) -> dict | None:
    """A list's filters: {} when none were given, None when one is invalid (then show no rows).

    Falling back to "no filter" would list everything while the form shows what was asked for.
    """
    if not form.is_bound:
        return {}
    return form.cleaned_data if form.is_valid() else None


INVALID_FILTERS = "The filters above need fixing"


class SearchInput(forms.TextInput):
    input_type = "search"


def add_service_error(form: forms.BaseForm, error) -> None:
    """Put a service's ValidationError on the form, field by field where it names fields."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)
