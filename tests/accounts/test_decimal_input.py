"""Decimals typed into console forms: a decimal comma is a decimal point, an ambiguous one is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django import forms

from accounts.forms.groups import GroupForm
from accounts.forms.keys import APIKeyForm
from accounts.forms.upstream import UpstreamAccountForm
from accounts.forms.users import BalanceAdjustForm, UserCreateForm, UserGroupRateForm
from channels.forms import CardForm, IntervalForm
from common.forms import DecimalInputField, decimal_text

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("typed", "read"),
    [("2,50", "2.50"), ("1,5", "1.5"), (" 0,25 ", "0.25"), ("12", "12"), ("3.75", "3.75"), (",5", ".5")],
)
def test_a_comma_is_read_as_the_decimal_point(typed, read):
    assert decimal_text(typed) == read
    assert DecimalInputField(max_digits=20, decimal_places=8).clean(typed) == Decimal(read)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("1,000", "“1,000” could mean 1000 or 1.000"),
        ("12,500", "“12,500” could mean 12500 or 12.500"),
        ("1.000,5", "Use one decimal separator and no thousands separators"),
        ("1,000.5", "Use one decimal separator and no thousands separators"),
        ("1,2,3", "Use one decimal separator and no thousands separators"),
    ],
)
def test_a_comma_that_could_separate_thousands_is_refused(typed, message):
    with pytest.raises(forms.ValidationError) as refused:
        DecimalInputField(max_digits=20, decimal_places=8).clean(typed)
    assert message in refused.value.messages[0]


@pytest.mark.parametrize(
    "form_class",
    [
        BalanceAdjustForm,
        UserCreateForm,
        UserGroupRateForm,
        APIKeyForm,
        GroupForm,
        UpstreamAccountForm,
        CardForm,
        IntervalForm,
    ],
)
def test_every_decimal_field_of_the_console_is_a_text_box_that_keeps_a_comma(form_class):
    form = form_class()
    decimals = {name: field for name, field in form.fields.items() if isinstance(field, forms.DecimalField)}
    assert decimals
    for name, field in decimals.items():
        assert isinstance(field, DecimalInputField), name
        html = str(form[name])
        assert 'type="text"' in html and 'inputmode="decimal"' in html, html
