"""The ledger's and rollup's statement parameters (billing.services): a value that skips
get_db_prep_save is one that preparing would hand back unchanged or, in a batch's JSON rows, one
whose JSON text is its prepared value's, so every stored value is the same as with full
preparation."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils.translation import gettext_lazy

from billing.cost import Usage
from billing.models import RequestOutcome, UsageLog, UsageRollup, UsageSource
from billing.services import _LOG_FIELDS, _priced_row, _rows_params, json_as_is, prepared_as_is
from tests.factories import APIKeyFactory, UpstreamAccountFactory

FIELDS = [
    field
    for model in (UsageLog, UsageRollup)
    for field in model._meta.concrete_fields
    if not field.primary_key
]

# What a ledger row may hold, and what it should not but might.
VALUES = [
    None,
    "",
    "req-1",
    "claude-sonnet-4-5",
    'it\'s "quoted"',
    "10.0.0.1",
    "::ffff:10.0.0.1",
    RequestOutcome.COMPLETED,
    UsageSource.REPORTED,
    gettext_lazy("lazy"),
    0,
    7,
    -1,
    2**40,
    True,
    False,
    1.5,
    "42",
    Decimal("0E-8"),
    Decimal("0.01267500"),
    Decimal("-0"),
    Decimal("1.3"),
    Decimal("12345678901.12345678"),
    Decimal("NaN"),
    Decimal("Infinity"),
    datetime(2026, 11, 25, 12, 30, tzinfo=UTC),
    datetime(2026, 11, 25, 21, 30, tzinfo=ZoneInfo("Asia/Tokyo")),
    datetime(2026, 11, 25, 12, 30),
    date(2026, 11, 25),
    {"version": 3, "usage_source": "reported"},
    [],
]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="values skip preparation on PostgreSQL only")
def test_every_value_that_skips_preparation_on_postgresql_is_what_preparing_it_gives():
    skipped = 0
    for field in FIELDS:
        as_is = prepared_as_is(field, "postgresql")
        for value in VALUES:
            if as_is is not None and as_is(value):
                prepared = field.get_db_prep_save(value, connection)
                # repr too: a Decimal's exponent and a datetime's zone must survive, not just equality.
                assert (type(prepared), prepared, repr(prepared)) == (type(value), value, repr(value)), (
                    field,
                    value,
                )
                skipped += 1
    assert skipped > 100  # the check is not vacuous: most of a row's values skip


@pytest.mark.django_db
def test_a_ledger_row_has_a_value_for_every_column_and_nothing_else():
    # Each INSERT reads every column from the row by name, with no default: a UsageLog field added
    # without its value in _priced_row would fail every recording, so it fails here first.
    _context, _breakdown, row = _priced_row(
        request_id="req-1",
        api_key_id=APIKeyFactory().pk,
        account_id=UpstreamAccountFactory().pk,
        requested_model="claude-sonnet-4-5",
        usage=Usage(input_tokens=10, output_tokens=5),
        mapped_model="",
        upstream_model="",
        context=None,
        stream=False,
        duration_ms=0,
        first_token_ms=None,
        status_code=200,
        client_ip=None,
        user_agent="",
        created_at=datetime(2026, 11, 25, 12, 30, tzinfo=UTC),
        outcome=RequestOutcome.COMPLETED,
        usage_source=UsageSource.REPORTED,
    )
    columns = [field.attname for field in UsageLog._meta.concrete_fields if not field.primary_key]
    assert [field.attname for field in _LOG_FIELDS] == columns
    assert sorted(row) == sorted(columns)


# Addresses, valid or not, that a client or a proxy header may bring.
ADDRESSES = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "010.0.0.1",  # leading zero: ip_address refuses it
    "10.0.0.256",
    "10.0.0",
    " 10.0.0.1",
    "10.0.0.1\n",
    "١.0.0.1",  # Arabic-Indic digits
    "::1",
    "2001:0DB8:0:0::1",
    "::ffff:10.0.0.1",
    "not an address",
]


def _json_text(value: object) -> str:
    """A value as one batch row writes it, or the error writing it raises."""
    try:
        return _rows_params([[value]])[0]
    except (TypeError, ValueError) as error:
        return f"refused: {type(error.__cause__ or error).__name__}"


def _prepared_json_text(field: object, value: object) -> str:
    try:
        prepared = field.get_db_prep_save(value, connection)
    except (TypeError, ValueError) as error:
        return f"refused: {type(error).__name__}"
    return _json_text(prepared)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="batches send JSON rows on PostgreSQL only")
def test_every_value_a_batch_row_writes_unprepared_has_the_json_text_of_its_prepared_value():
    written = 0
    for field in FIELDS:
        as_is = json_as_is(field, "postgresql")
        for value in [*VALUES, *ADDRESSES, 2**70]:
            if as_is is not None and as_is(value):
                assert _json_text(value) == _prepared_json_text(field, value), (field, value)
                written += 1
    assert written > 200  # integers, JSON and addresses among them, not just what prepared_as_is skips
    for name in ("input_tokens", "status_code", "breakdown", "client_ip"):
        assert json_as_is(UsageLog._meta.get_field(name), "postgresql") is not None, name


@pytest.mark.skipif(connection.vendor != "postgresql", reason="batches send JSON rows on PostgreSQL only")
def test_an_address_other_than_a_plain_ipv4_one_is_prepared_and_a_bad_one_still_refused():
    client_ip = UsageLog._meta.get_field("client_ip")
    as_is = json_as_is(client_ip, "postgresql")
    assert [value for value in ADDRESSES if as_is(value)] == ["127.0.0.1", "0.0.0.0", "255.255.255.255"]
    assert not as_is("")  # prepared: an empty address is NULL
    assert not as_is(True) and not as_is(7)
    refused = [value for value in ADDRESSES if _prepared_json_text(client_ip, value).startswith("refused")]
    assert refused == [
        "010.0.0.1",
        "10.0.0.256",
        "10.0.0",
        " 10.0.0.1",
        "10.0.0.1\n",
        "١.0.0.1",
        "not an address",
    ]
    assert _prepared_json_text(client_ip, "2001:0DB8:0:0::1") == '[["2001:db8::1"]]'


def test_json_ips_integers_and_every_field_off_postgresql_are_always_prepared():
    always = ["breakdown", "client_ip", "input_tokens", "duration_ms", "first_token_ms", "status_code"]
    assert [prepared_as_is(UsageLog._meta.get_field(name), "postgresql") for name in always] == [None] * 6
    assert {prepared_as_is(field, "sqlite") for field in FIELDS} == {None}


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="batches send JSON rows on PostgreSQL only")
def test_a_batch_row_carries_money_addresses_json_and_nulls_exactly_through_its_json_text():
    from billing.services import _rows_params, _rows_source

    fields = [
        UsageLog._meta.get_field(name)
        for name in (
            "actual_cost",
            "rate_multiplier",
            "client_ip",
            "breakdown",
            "created_at",
            "first_token_ms",
        )
    ]
    when = datetime(2026, 11, 25, 21, 30, 0, 123456, tzinfo=ZoneInfo("Asia/Tokyo"))
    rows = [
        [field.get_db_prep_save(value, connection) for field, value in zip(fields, row, strict=True)]
        for row in (
            # 20 significant digits: a float would keep about 16 of them.
            [
                Decimal("98765432109.87654321"),
                Decimal("1.234567"),
                "2001:db8::1",
                {"a": ["1.5", None]},
                when,
                7,
            ],
            [Decimal("0E-8"), Decimal("-0.000001"), None, None, None, None],
        )
    ]
    with connection.cursor() as cursor:
        cursor.execute(_rows_source(fields, None), _rows_params(rows))
        stored = [list(row) for row in cursor.fetchall()]

    stored[0][3] = json.loads(stored[0][3])  # Django's connection reads jsonb as its text
    assert stored[0] == [
        Decimal("98765432109.87654321"),
        Decimal("1.234567"),
        "2001:db8::1",
        {"a": ["1.5", None]},
        when,
        7,
    ]
    assert stored[1] == [Decimal("0E-8"), Decimal("-0.000001"), None, None, None, None]
    with pytest.raises(TypeError) as refused:  # orjson's error, raised from ours
        _rows_params([[Decimal("NaN")]])
    assert "NaN is not an amount of money" in str(refused.value.__cause__)
