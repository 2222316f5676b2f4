"""The channel form's price preview (docs/pricing.md#price-preview): the last 30 days of the
channel's groups' usage re-priced under the cards as typed, read in chunks, nothing written."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from billing.cost import Usage
from billing.models import UsageLog
from billing.selectors import channel_price_preview
from billing.services import usage_record
from channels.rules import CardSpec
from channels.services import channel_create
from channels.snapshots import channel_cards_of_specs
from tests.channels.test_channels import channel_post
from tests.factories import APIKeyFactory, GroupFactory, UpstreamAccountFactory, UserFactory

pytestmark = pytest.mark.django_db

D = Decimal
MTOK = D("0.000001")
SONNET = "claude-sonnet-4-5"
CHANNEL_FIELDS = {
    "name": "Claude retail",
    "status": "active",
    "billing_model_source": "channel_mapped",
    "restrict_models": False,
    "description": "",
}


def sonnet_card(input_per_mtok: str) -> CardSpec:
    return CardSpec(
        platform="anthropic",
        models=(SONNET,),
        input_price=D(input_per_mtok) * MTOK,
        output_price=D("15") * MTOK,
    )


def record(
    key, account, request_id, *, model=SONNET, input_tokens, output_tokens=1000, ago=timedelta(hours=1)
):
    return usage_record(
        request_id=request_id,
        api_key_id=key.pk,
        account_id=account.pk,
        requested_model=model,
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        created_at=timezone.now() - ago,
    )


@pytest.fixture
def billed():
    return bill_example()


def bill_example() -> dict:
    """Three Sonnet requests billed at $3/MTok input, $15/MTok output, group rate 1.5; a Haiku
    request priced by the catalog; and rows the preview must leave out (another group, too old)."""
    group = GroupFactory(name="retail", platform="anthropic", rate_multiplier=D("1.5"))
    other_group = GroupFactory(name="wholesale", platform="anthropic")
    channel = channel_create(
        fields=CHANNEL_FIELDS, group_ids=[group.pk], cards=[sonnet_card("3")], actor=None
    )
    alice = UserFactory(email="alice@example.com", balance=D("100"))
    bob = UserFactory(email="bob@example.com", balance=D("100"))
    account = UpstreamAccountFactory()
    alice_key, bob_key = APIKeyFactory(user=alice, group=group), APIKeyFactory(user=bob, group=group)
    record(alice_key, account, "a-1", input_tokens=1_000_000)
    record(alice_key, account, "a-2", input_tokens=250_000)
    record(bob_key, account, "b-1", input_tokens=12_345)
    record(bob_key, account, "b-2", model="claude-haiku-4-5", input_tokens=5_000)
    record(bob_key, account, "b-old", input_tokens=9_000_000, ago=timedelta(days=31))
    record(APIKeyFactory(user=bob, group=other_group), account, "w-1", input_tokens=7_000_000)
    return {"channel": channel, "group": group, "alice": alice, "bob": bob}


def preview_post(billed, *, input_price="4", **card):
    card = {"models": SONNET, "input_price": input_price, "output_price": "15", **card}
    return channel_post(name="Claude retail", groups=[billed["group"]], cards=[card], initial_cards=1)


def test_raising_the_input_price_changes_each_request_by_its_input_tokens_times_the_rate(billed):
    preview = channel_price_preview(
        group_ids=[billed["group"].pk], cards=channel_cards_of_specs([sonnet_card("4")])
    )
    # Charged per request = (input × price + 1,000 output × $15/MTok) × 1.5:
    #   a-1: (1,000,000 × $3/MTok = 3.00 + 0.015) × 1.5 = 4.5225   → at $4: (4.00 + 0.015) × 1.5 = 6.0225
    #   a-2: (  250,000 × $3/MTok = 0.75 + 0.015) × 1.5 = 1.1475   → at $4: (1.00 + 0.015) × 1.5 = 1.5225
    #   b-1: (   12,345 × $3/MTok = 0.037035 + 0.015) × 1.5 = 0.0780525 → at $4: (0.04938 + 0.015) × 1.5 = 0.09657
    # Haiku is priced by the catalog both times (no card names it): its difference is 0.
    haiku = UsageLog.objects.get(request_id="b-2").actual_cost
    assert preview.requests == 4 and preview.changed_requests == 3
    assert preview.old_total == D("4.5225") + D("1.1475") + D("0.0780525") + haiku
    assert preview.new_total == D("6.0225") + D("1.5225") + D("0.09657") + haiku
    # 1.5 + 0.375 + 0.0185175 = (1,262,345 tokens × $1/MTok) × 1.5
    assert preview.difference == D("1.8935175")

    by_model = {line.label: line for line in preview.by_model}
    assert by_model[SONNET].difference == D("1.8935175") and by_model[SONNET].requests == 3
    assert by_model["claude-haiku-4-5"].difference == 0
    by_user = {line.label: line.difference for line in preview.by_user}
    assert by_user == {"alice@example.com": D("1.875"), "bob@example.com": D("0.0185175")}

    assert [row.difference for row in preview.top_rows] == [D("1.5"), D("0.375"), D("0.0185175")]
    first = preview.top_rows[0]
    assert "1,000,000 input × $3" in first.old_sentence and "charged" in first.old_sentence
    assert "1,000,000 input × $4" in first.new_sentence and "$6.0225 charged" in first.new_sentence


def test_the_saved_cards_unchanged_reprice_every_row_to_what_it_was_charged(billed):
    # The preview prices through the same lookup and cost code as billing: no difference at all.
    preview = channel_price_preview(
        group_ids=[billed["group"].pk], cards=channel_cards_of_specs([sonnet_card("3")])
    )
    assert preview.requests == 4 and preview.difference == 0 and preview.top_rows == []


def _database_rows() -> dict[str, list[dict]]:
    return {
        model._meta.label: list(model.objects.order_by("pk").values())
        for model in apps.get_models()
        if model._meta.app_label in ("accounts", "channels", "billing")
    }


def test_the_preview_page_shows_the_totals_and_writes_nothing(staff_client, billed):
    before = _database_rows()
    url = f"/usage/price-preview/{billed['channel'].pk}"
    response = staff_client.post(url, preview_post(billed), headers={"HX-Request": "true"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-total="difference">+$1.8935175<' in page
    assert "alice@example.com" in page and "Would be:" in page and "<strong>retail</strong>" in page
    assert _database_rows() == before


def test_invalid_cards_are_answered_with_each_problem_by_field_and_no_preview(staff_client, billed):
    data = preview_post(billed, input_price="-1", models="")
    page = staff_client.post(f"/usage/price-preview/{billed['channel'].pk}", data).content.decode()
    assert 'data-preview="invalid"' in page and 'data-total="new"' not in page
    assert (
        "<strong>Card 1 · Input ($/MTok)</strong>: Ensure this value is greater than or equal to 0." in page
    )
    assert "<strong>Card 1 · Models</strong>: This field is required." in page


def test_a_new_channel_can_be_previewed_before_it_exists(staff_client, billed):
    other = GroupFactory(name="fresh", platform="anthropic")
    data = channel_post(
        name="Brand new", groups=[other], cards=[{"models": SONNET, "input_price": "4", "output_price": "15"}]
    )
    page = staff_client.post("/usage/price-preview/new", data).content.decode()
    assert 'data-preview="empty"' in page and "no usage in the last 30 days" in page


def test_viewers_and_operators_cannot_preview(client, billed):
    from tests.factories import StaffFactory

    for role in ("viewer", "operator"):
        client.force_login(StaffFactory(console_role=role))
        response = client.post(f"/usage/price-preview/{billed['channel'].pk}", preview_post(billed))
        assert response.status_code == 403


# Over 10 s on a busy machine, for a reason: the row count is the point (a dozen chunks), the
# insert maintains the ledger's indexes, and tracemalloc slows every allocation about fivefold.
ROWS = 25_000
DISTINCT = 2_000  # input token counts 1..2,000, each on 12 or 13 rows: 2,000 prices computed


def test_twenty_five_thousand_rows_are_previewed_in_bounded_memory(billed):
    """The ledger is read through a cursor in chunks: peak Python memory (3.7 MB measured over
    50,000 rows) stays far below what the rows would take loaded (~2 KB each as model instances,
    ~50 MB; ~30 MB as dicts)."""
    template = UsageLog.objects.get(request_id="a-2")
    fixed = ("id", "request_id", "created_at", "input_tokens")
    columns = [f.column for f in UsageLog._meta.concrete_fields if f.column not in fixed]
    listed = ", ".join(columns)
    with connection.cursor() as cursor:
        # Copies of a-2 with 1 to 2,000 input tokens. Their stored charge is a-2's (they are
        # generated, not billed): what matters is what the preview computes for each.
        cursor.execute(
            f"INSERT INTO billing_usagelog (request_id, created_at, input_tokens, {listed}) "  # noqa: S608 - column names from the model
            f"SELECT 'gen-' || g, now() - make_interval(secs => g), 1 + g %% %s, {listed} "
            "FROM generate_series(1, %s) AS g, billing_usagelog WHERE id = %s",
            [DISTINCT, ROWS, template.pk],
        )
    tracemalloc.start()
    try:
        preview = channel_price_preview(
            group_ids=[billed["group"].pk], cards=channel_cards_of_specs([sonnet_card("4")])
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert preview.requests == ROWS + 4
    # A copy with t input tokens is charged (t × $4/MTok + 0.015) × 1.5 = t × 0.000006 + 0.0225,
    # exact to 8 places, against a-2's stored 1.1475.
    copies_new = sum(D(1 + g % DISTINCT) * D("0.000006") + D("0.0225") for g in range(1, ROWS + 1))
    copies_old = ROWS * template.actual_cost
    assert preview.difference == D("1.8935175") + copies_new - copies_old
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
