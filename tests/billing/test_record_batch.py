"""usage_record_batch (docs/recording.md#batches): one transaction for several requests, leaving
exactly the ledger rows and counters that usage_record row by row leaves."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext

import common.statements
from accounts.models import APIKey, Subscription, UpstreamAccount, User
from accounts.services.keys import api_key_usage_charge_statement
from accounts.services.users import user_balance_charge_statement
from accounts.snapshots import AccountQuota
from billing.cost import Usage
from billing.holds import AccountHold, holds_lower_statement, pending_hold
from billing.models import PendingRequest, UsageLog, UsageRollup
from billing.pricing import billing_context
from billing.services import BatchRecord, usage_record, usage_record_batch
from common.statements import run_at_once
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UpstreamAccountFactory,
    UserFactory,
)
from tests.sent import statements_run

pytestmark = pytest.mark.django_db

D = Decimal
NOON = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)

# Columns that differ between two worlds by construction (ids of their own rows).
OWN_IDS = {"id", "user", "api_key", "account", "group", "subscription", "channel"}


def world(suffix: str) -> dict:
    """Two balance keys of one user, a subscription key of another, two accounts."""
    group = GroupFactory(rate_multiplier=D("1.3"), name=f"g-{suffix}")
    sub_group = SubscriptionGroupFactory(rate_multiplier=D("0.9"), name=f"s-{suffix}")
    payer = UserFactory(balance=D("50"))
    subscriber = UserFactory(balance=D("7"))
    subscription = SubscriptionFactory(user=subscriber, group=sub_group)
    return {
        "keys": [
            APIKeyFactory(user=payer, group=group),
            APIKeyFactory(user=payer, group=group),
            APIKeyFactory(user=subscriber, group=sub_group),
        ],
        "accounts": [
            UpstreamAccountFactory(rate_multiplier=D("0.7")),
            UpstreamAccountFactory(rate_multiplier=D("1.1")),
        ],
        "users": [payer, subscriber],
        "subscription": subscription,
    }


def plan() -> list[tuple[str, int, int, Usage]]:
    """(request id, key index, account index, usage): mixed keys and accounts, with repeats."""
    rows = []
    for n in range(14):
        usage = Usage(
            input_tokens=1_000 + 37 * n,
            output_tokens=101 + n,
            cache_read_tokens=7 * n,
            cache_creation_5m_tokens=3 * n,
        )
        rows.append((f"r{n}", n % 3, n % 2, usage))
    rows.insert(5, rows[2])  # the same request twice in one batch
    rows.insert(9, ("r0", 1, 0, rows[0][3]))  # the same request id on another key is another request
    return rows


def record_one_by_one(batch: list[BatchRecord]) -> None:
    """What the batch is compared with: each record in its own usage_record transaction."""
    for record in batch:
        usage_record(**{name: getattr(record, name) for name in record.__slots__ if name != "pending_id"})


def records(w: dict) -> list[BatchRecord]:
    return [
        BatchRecord(
            request_id=request_id,
            api_key_id=w["keys"][key].pk,
            account_id=w["accounts"][account].pk,
            requested_model="claude-sonnet-4-5",
            usage=usage,
            created_at=NOON,
            stream=True,
            duration_ms=900,
        )
        for request_id, key, account, usage in plan()
    ]


def ledger(w: dict) -> list[dict]:
    key_index = {key.pk: index for index, key in enumerate(w["keys"])}
    rows = []
    for row in UsageLog.objects.filter(api_key__in=w["keys"]).order_by("request_id", "api_key_id").values():
        rows.append(
            {
                "key": key_index[row["api_key_id"]],
                **{name: value for name, value in row.items() if name.removesuffix("_id") not in OWN_IDS},
            }
        )
    return sorted(rows, key=lambda row: (row["request_id"], row["key"]))


def counters(w: dict) -> dict:
    keys = [
        APIKey.objects.values("quota_used_usd", "usage_5h_usd", "usage_1d_usd", "usage_7d_usd", "status").get(
            pk=key.pk
        )
        for key in w["keys"]
    ]
    balances = [User.objects.values_list("balance", flat=True).get(pk=user.pk) for user in w["users"]]
    subscription = Subscription.objects.values(
        "daily_usage_usd", "weekly_usage_usd", "monthly_usage_usd", "daily_window_start"
    ).get(pk=w["subscription"].pk)
    accounts = [
        UpstreamAccount.objects.values("quota_used_usd", "quota_daily_used_usd", "quota_weekly_used_usd").get(
            pk=account.pk
        )
        for account in w["accounts"]
    ]
    rollups = UsageRollup.objects.filter(api_key_id__in=[key.pk for key in w["keys"]]).aggregate(
        n=Sum("requests"), actual=Sum("actual_cost"), account=Sum("account_cost"), tokens=Sum("input_tokens")
    )
    return {"keys": keys, "balances": balances, "subscription": subscription, "accounts": accounts, **rollups}


def test_a_batch_leaves_the_same_ledger_rows_and_counters_as_recording_row_by_row():
    one_by_one, batched = world("a"), world("b")
    record_one_by_one(records(one_by_one))
    results = usage_record_batch(records(batched))

    assert ledger(batched) == ledger(one_by_one)
    assert counters(batched) == counters(one_by_one)
    assert len(ledger(batched)) == len(plan()) - 1  # only the repeat in the batch was dropped
    duplicates = [result for result in results if result.duplicate]
    assert len(duplicates) == 1 and duplicates[0].charged_usd == 0
    assert duplicates[0].usage_log_id == results[2].usage_log_id  # the first r2 of the batch
    charged = sum(result.charged_usd for result in results)
    assert (
        charged == UsageLog.objects.filter(api_key__in=batched["keys"]).aggregate(s=Sum("actual_cost"))["s"]
    )


def test_replaying_a_batch_bills_nothing_and_answers_with_the_original_rows():
    w = world("a")
    first = usage_record_batch(records(w))
    before = counters(w)

    again = usage_record_batch(records(w))

    assert all(result.duplicate for result in again)
    assert [result.usage_log_id for result in again] == [result.usage_log_id for result in first]
    assert counters(w) == before
    assert UsageLog.objects.count() == len(plan()) - 1


def test_a_batch_of_new_and_already_recorded_requests_charges_only_the_new_ones():
    w = world("a")
    batch = records(w)
    usage_record_batch(batch[:6])
    paid_before = counters(w)["keys"][0]["quota_used_usd"]

    results = usage_record_batch(batch)

    assert [result.duplicate for result in results[:6]] == [True] * 6
    new = [result for result, record in zip(results[6:], batch[6:], strict=True) if not result.duplicate]
    key0 = w["keys"][0].pk
    added = sum(r.charged_usd for r, rec in zip(results, batch, strict=True) if rec.api_key_id == key0)
    assert counters(w)["keys"][0]["quota_used_usd"] == paid_before + added
    assert len(new) == len(batch) - 6  # the first 6 (the repeat of r2 among them) were recorded before
    assert UsageLog.objects.count() == len(plan()) - 1


def test_each_result_carries_the_counters_as_the_batch_left_them():
    w = world("a")
    results = usage_record_batch(records(w))
    key0 = APIKey.objects.get(pk=w["keys"][0].pk)
    payer = User.objects.get(pk=w["users"][0].pk)
    for result, record in zip(results, records(w), strict=True):
        if record.api_key_id == key0.pk and not result.duplicate:
            assert result.key_charge.quota_used_usd == key0.quota_used_usd
            assert result.balance_usd == payer.balance
            assert result.charged_to == "balance"
        if record.api_key_id == w["keys"][2].pk and not result.duplicate:
            assert result.charged_to == "subscription" and result.balance_usd is None
            assert (
                result.subscription_windows["daily_usage_usd"] == Subscription.objects.get().daily_usage_usd
            )


def test_a_batch_is_one_insert_and_one_update_per_distinct_counted_row():
    w = world("a")
    # With the gateway's cached BillingContexts, as the gateway's recorder passes them.
    contexts = {}
    for record in records(w):
        pair = (record.api_key_id, record.account_id)
        contexts.setdefault(pair, billing_context(api_key_id=pair[0], account_id=pair[1]))
    batch = [dataclasses.replace(r, context=contexts[r.api_key_id, r.account_id]) for r in records(w)]
    with CaptureQueriesContext(connection) as queries:
        usage_record_batch(batch)
    # (the counter statements go to PostgreSQL as one query string: count its statements)
    statements = [
        part.split()[0] for query in queries.captured_queries for part in statements_run(query["sql"])
    ]
    # ledger, 3 keys, rollups, 1 balance, 1 subscription, 2 accounts (savepoint-free: the test's
    # transaction), and one DELETE settling every pending record of the batch
    assert statements.count("INSERT") == 2
    assert statements.count("DELETE") == 1
    assert statements.count("UPDATE") == 3 + 1 + 1 + 2
    assert "SELECT" not in statements  # no replays: nothing to look up


def test_a_batch_over_the_limit_is_refused_before_anything_is_written():
    w = world("a")
    record = records(w)[0]
    with pytest.raises(ValueError, match="at most"):
        usage_record_batch([record] * 101)
    assert UsageLog.objects.count() == 0


def hold_all(w: dict, batch: list[BatchRecord]) -> None:
    """The holds the gateway takes before relaying each request of `batch` (one per request id)."""
    for record in {(r.request_id, r.api_key_id): r for r in batch}.values():
        key = APIKey.objects.get(pk=record.api_key_id)
        subscription = w["subscription"] if key.group_id == w["subscription"].group_id else None
        account = UpstreamAccount.objects.get(pk=record.account_id)
        result = pending_hold(
            request_id=record.request_id,
            api_key_id=key.pk,
            user_id=key.user_id,
            amount_usd=D("0.05"),
            now=datetime.now(UTC),
            lease_seconds=60,
            requested_model=record.requested_model,
            mapped_model=record.requested_model,
            protocol="anthropic",
            stream=True,
            estimate={"input_tokens": 1000, "output_tokens": 100},
            subscription_id=subscription.pk if subscription else None,
            subscription_limits={"daily": None, "weekly": None, "monthly": None} if subscription else None,
            subscription_starts_at=subscription.starts_at if subscription else None,
            subscription_timezone=subscription.group.timezone if subscription else "",
            accounts=(
                AccountHold(account_id=account.pk, amount_usd=D("0.04"), quota=AccountQuota.of(account)),
            ),
        )
        assert result.held


def held_columns(w: dict) -> list[Decimal]:
    return [
        *(APIKey.objects.values_list("held_usd", flat=True).get(pk=key.pk) for key in w["keys"]),
        *(User.objects.values_list("balance_held", flat=True).get(pk=user.pk) for user in w["users"]),
        Subscription.objects.values_list("held_usd", flat=True).get(pk=w["subscription"].pk),
        *(
            UpstreamAccount.objects.values_list("quota_held_usd", flat=True).get(pk=a.pk)
            for a in w["accounts"]
        ),
    ]


def test_a_batch_settles_every_hold_it_records_and_charges_what_row_by_row_recording_charges():
    one_by_one, batched = world("a"), world("b")
    for w in (one_by_one, batched):
        # Every account with a quota, so the account holds are real.
        UpstreamAccount.objects.filter(pk__in=[a.pk for a in w["accounts"]]).update(quota_limit_usd=D("100"))
        hold_all(w, records(w))
    # Everything is held but the subscriber's balance (a subscription key holds its subscription).
    assert [amount > 0 for amount in held_columns(batched)] == [True] * 4 + [False] + [True] * 3

    record_one_by_one(records(one_by_one))
    usage_record_batch(records(batched))

    assert ledger(batched) == ledger(one_by_one)
    assert counters(batched) == counters(one_by_one)
    assert held_columns(batched) == held_columns(one_by_one) == [0] * 8
    assert not PendingRequest.objects.exists()


def test_a_held_request_recorded_for_free_is_settled_without_a_charge():
    w = world("a")
    UpstreamAccount.objects.filter(pk__in=[a.pk for a in w["accounts"]]).update(quota_limit_usd=D("100"))
    batch = [dataclasses.replace(record, usage=Usage()) for record in records(w)[:3]]
    hold_all(w, batch)
    before = counters(w)

    usage_record_batch(batch)

    assert held_columns(w) == [0] * 8
    assert not PendingRequest.objects.exists()
    assert counters(w)["keys"] == before["keys"] and counters(w)["balances"] == before["balances"]


def awkward(w: dict) -> list[BatchRecord]:
    """records(w) with no account at all (a column of NULLs), columns mixing NULLs and values,
    IPv4 and IPv6 addresses, and text that needs escaping in an array literal or in JSON."""
    return [
        dataclasses.replace(
            record,
            account_id=None,
            first_token_ms=None if index % 3 else 40 + index,
            client_ip=(None, "203.0.113.9", "2001:db8::1", "2001:0DB8:0:0::1")[index % 4],
            user_agent=('say "hi", {x} \\ NULL é', "NULL \\u0041\t\u2028 null", "")[index % 3],
        )
        for index, record in enumerate(records(w))
    ]


def test_a_batch_stores_nulls_json_and_quoted_text_as_recording_row_by_row_does():
    # On PostgreSQL the batch sends its rows as one JSON document (INSERT … SELECT … FROM
    # jsonb_array_elements): every value goes through JSON text, so compare with the one-row
    # INSERT's values.
    one_by_one, batched = world("a"), world("b")
    record_one_by_one(awkward(one_by_one))
    results = usage_record_batch(awkward(batched))

    assert ledger(batched) == ledger(one_by_one)
    assert counters(batched) == counters(one_by_one)
    rows = UsageLog.objects.filter(api_key__in=batched["keys"])
    assert {row.user_agent for row in rows} == {'say "hi", {x} \\ NULL é', "NULL \\u0041\t\u2028 null", ""}
    assert {row.breakdown["usage_source"] for row in rows} == {"reported"}  # an object, not a string
    # The rows went in in the order the batch sorted them into (ids follow it): the lock order.
    inserted = list(rows.order_by("id").values_list("api_key_id", "request_id"))
    assert inserted == sorted(inserted)

    # A replay among new requests: the replays answer with the original ids, the new one is added.
    extra = dataclasses.replace(awkward(batched)[0], request_id="r-new")
    again = usage_record_batch([*awkward(batched), extra])
    assert [result.duplicate for result in again] == [True] * len(results) + [False]
    assert [result.usage_log_id for result in again[:-1]] == [result.usage_log_id for result in results]
    assert again[-1].usage_log_id == UsageLog.objects.get(request_id="r-new").pk


@pytest.mark.skipif(connection.vendor != "postgresql", reason="only PostgreSQL's adapter checks an address")
def test_a_batch_with_an_address_that_is_not_one_is_refused_whole():
    w = world("a")
    for bad in ("010.0.0.1", "10.0.0.256", " 10.0.0.1", "١.0.0.1", "2001:db8::g"):
        batch = [records(w)[0], dataclasses.replace(records(w)[1], client_ip=bad)]
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            usage_record_batch(batch)
        assert not UsageLog.objects.exists()
        with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
            record_one_by_one(batch[1:])  # as recording it alone refuses it


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the counter statements are pipelined on PostgreSQL only"
)


@postgresql_only
def test_a_batch_sends_every_counter_statement_at_once_in_lock_order_after_everything_else(monkeypatch):
    # The key row the first counter UPDATE locks is what every request's hold waits for: nothing
    # but the other counter statements may run between it and COMMIT, and those go in one round trip.
    import billing.services

    w = world("a")
    usage_record_batch(records(w)[:4])  # so the next batch has replays to look up
    sent, options = [], []

    def spy(statements, **given):
        sent.append([statement.sql for statement in statements])
        options.append(given)
        return run_at_once(statements, **given)

    monkeypatch.setattr(billing.services, "run_at_once", spy)
    contexts = {}
    for record in records(w):
        pair = (record.api_key_id, record.account_id)
        contexts.setdefault(pair, billing_context(api_key_id=pair[0], account_id=pair[1]))
    batch = [dataclasses.replace(r, context=contexts[r.api_key_id, r.account_id]) for r in records(w)]
    with CaptureQueriesContext(connection) as queries:
        usage_record_batch(batch)

    assert len(sent) == 1 and options == [{"commit": True}]
    tables = [sql.split()[1].strip('"') for sql in sent[0]]
    assert tables == [
        *[APIKey._meta.db_table] * 3,
        "INTO",  # the rollup upsert
        User._meta.db_table,
        Subscription._meta.db_table,
        *[UpstreamAccount._meta.db_table] * 2,
    ]
    # Everything else (ledger INSERT, pending DELETE, the replays' SELECT) ran before them, and
    # they went as one query (the batch's atomic block is a savepoint in the test's transaction).
    captured = [query["sql"] for query in queries.captured_queries]
    assert [statements_run(sql)[0].split()[0] for sql in captured] == [
        "SAVEPOINT",
        "INSERT",
        "DELETE",
        "SELECT",
        "UPDATE",
        "RELEASE",
    ]
    together = statements_run(captured[4])
    assert [sql.split()[0] for sql in together] == [sql.split()[0] for sql in sent[0]]
    assert _updated_ids(together, APIKey) == sorted(key.pk for key in w["keys"])
    assert _updated_ids(together, UpstreamAccount) == sorted(account.pk for account in w["accounts"])


def _updated_ids(statements: list[str], model: type) -> list[int]:
    """The ids the UPDATEs of `model`'s table among `statements` charged, in order."""
    update = f'UPDATE "{model._meta.db_table}"'
    return [
        int(sql.rsplit("WHERE", 1)[1].split("=")[1].split()[0])
        for sql in statements
        if sql.startswith(update)
    ]


@postgresql_only
@pytest.mark.parametrize("binding", ["client", "server"])
def test_statements_run_at_once_answer_in_order_in_one_round_trip(monkeypatch, binding):
    w = world("a")
    key, user = w["keys"][0], w["users"][0]
    pipelines = []
    if binding == "server":  # psycopg's pipeline mode instead of one query string
        monkeypatch.setattr(common.statements, "_binds_client_side", lambda cursor: False)
        pipeline = type(connection.connection).pipeline

        def counting(self):
            pipelines.append(True)
            return pipeline(self)

        monkeypatch.setattr(type(connection.connection), "pipeline", counting)
    now = datetime.now(UTC)
    statements = [
        api_key_usage_charge_statement(key_id=key.pk, amount_usd=D("0.5"), now=now, timezone=""),
        holds_lower_statement(model=APIKey, row_id=key.pk, amount=D(0)),
        user_balance_charge_statement(user_id=user.pk, amount_usd=D("0.25")),
        user_balance_charge_statement(user_id=user.pk + 1000, amount_usd=D("1")),
    ]
    with CaptureQueriesContext(connection) as queries:
        answers = run_at_once(statements)

    assert answers[0].quota_used_usd == D("0.5") and answers[1] is None
    assert answers[2] == D("50") - D("0.25") and answers[3] is None  # an unknown user: no balance
    assert APIKey.objects.get(pk=key.pk).quota_used_usd == D("0.5")
    if binding == "client":
        assert len(queries.captured_queries) == 1
    else:
        assert len(pipelines) == 1 and len(queries.captured_queries) == 4


@postgresql_only
def test_a_charge_of_a_missing_row_fails_the_whole_batch():
    w = world("a")
    batch = [
        dataclasses.replace(record, account_id=UpstreamAccount.objects.order_by("-pk")[0].pk + 1000)
        for record in records(w)
    ]
    before = counters(w)

    with pytest.raises(UpstreamAccount.DoesNotExist):
        usage_record_batch(batch)

    # Rolled back: no ledger row, no counter moved, and the connection works on.
    assert UsageLog.objects.count() == 0
    assert counters(w) == before
    usage_record_batch(records(w))
    assert UsageLog.objects.count() == len(plan()) - 1


# --- the COMMIT in the same round trip (a batch in its own transaction, as the recorder runs it) -----


def _locked_elsewhere(model: type, row_id: int) -> bool:
    """Whether another connection finds `row_id` locked right now (it does not wait for it)."""
    import psycopg

    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"],
        user=settings["USER"],
        dbname=settings["NAME"],
        password=settings["PASSWORD"] or None,
        autocommit=True,
    ) as other:
        try:
            other.execute(f'SELECT 1 FROM "{model._meta.db_table}" WHERE id = %s FOR UPDATE NOWAIT', [row_id])
        except psycopg.errors.LockNotAvailable:
            return True
    return False


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("binding", ["client", "server"])
def test_a_batch_in_its_own_transaction_frees_the_hot_rows_when_its_counter_statements_return(
    monkeypatch, binding
):
    # Every hold on a busy key waits for its row: it must not stay locked while the recorder
    # thread reads the answers and waits for the GIL to send COMMIT.
    import billing.services

    if binding == "server":
        monkeypatch.setattr(common.statements, "_binds_client_side", lambda cursor: False)
    w = world("a")
    key = w["keys"][0]
    seen = []

    def then_look(statements, **given):
        answers = run_at_once(statements, **given)
        seen.append(_locked_elsewhere(APIKey, key.pk))  # still inside the batch's atomic block
        return answers

    monkeypatch.setattr(billing.services, "run_at_once", then_look)
    results = usage_record_batch(records(w))

    assert seen == [False]
    assert len(results) == len(records(w)) and UsageLog.objects.count() == len(plan()) - 1
    # What row-by-row recording of the same requests leaves, as the nested batches above.
    assert counters(w) == _counters_recorded_one_by_one()


def _counters_recorded_one_by_one() -> dict:
    other = world("b")
    record_one_by_one(records(other))
    return counters(other)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_same_look_inside_a_callers_transaction_finds_the_rows_still_locked(monkeypatch):
    # The control: without the COMMIT in the string (a batch nested in a caller's transaction,
    # which that caller ends) another connection does see the lock, so the test above can see it.
    from django.db import transaction

    import billing.services

    w = world("a")
    key = w["keys"][0]
    seen = []

    def then_look(statements, **given):
        answers = run_at_once(statements, **given)
        seen.append(_locked_elsewhere(APIKey, key.pk))
        return answers

    monkeypatch.setattr(billing.services, "run_at_once", then_look)
    with transaction.atomic():
        usage_record_batch(records(w))

    assert seen == [True]
    assert UsageLog.objects.count() == len(plan()) - 1


@postgresql_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("binding", ["client", "server"])
def test_a_missing_row_stops_a_committing_batch_before_its_commit(monkeypatch, binding):
    if binding == "server":
        monkeypatch.setattr(common.statements, "_binds_client_side", lambda cursor: False)
    w = world("a")
    missing = UpstreamAccount.objects.order_by("-pk")[0].pk + 1000
    batch = [dataclasses.replace(record, account_id=missing) for record in records(w)]
    before = counters(w)

    with pytest.raises(UpstreamAccount.DoesNotExist, match=f"upstream account {missing} does not exist"):
        usage_record_batch(batch)

    # The guard failed inside the database: nothing committed, and the connection works on.
    assert UsageLog.objects.count() == 0 and PendingRequest.objects.count() == 0
    assert counters(w) == before
    usage_record_batch(records(w))
    assert UsageLog.objects.count() == len(plan()) - 1
