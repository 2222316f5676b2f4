"""The channel pages: list, create and edit with cards, intervals, mapping and groups; delete; audit."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from channels.models import Channel, ChannelAuditLog, ChannelGroup, ModelPricing, PricingInterval
from channels.pricing import PriceInterval
from channels.rules import CardSpec, ChannelInvalid, MappingRule
from channels.services import channel_create
from channels.snapshots import channel_snapshot_for_group
from tests.factories import (
    ChannelFactory,
    ChannelGroupFactory,
    GroupFactory,
    ModelPricingFactory,
    PricingIntervalFactory,
)

pytestmark = pytest.mark.django_db

SONNET = {"models": "claude-sonnet-4-5", "input_price": "3", "output_price": "15"}


def channel_post(
    *, name="Claude retail", groups=(), cards=(), mapping=(), initial_cards=0, initial_map=0, **extra
):
    """The POST body of the channel form: fields, a card formset with nested intervals, mapping rows."""
    data = {
        "name": name,
        "status": "active",
        "billing_model_source": "channel_mapped",
        "description": "",
        "groups": [group.pk for group in groups],
        **_management("card", len(cards), initial_cards),
        **_management("map", len(mapping), initial_map),
        **extra,
    }
    for index, card in enumerate(cards):
        card = {"platform": "anthropic", "billing_mode": "token", **card}
        intervals = card.pop("intervals", [])
        initial_intervals = card.pop("initial_intervals", 0)
        data.update({f"card-{index}-{key}": value for key, value in card.items()})
        data.update(_management(f"card-{index}-iv", len(intervals), initial_intervals))
        for row, interval in enumerate(intervals):
            data.update({f"card-{index}-iv-{row}-{key}": value for key, value in interval.items()})
    for row, rule in enumerate(mapping):
        data.update({f"map-{row}-{key}": value for key, value in {"platform": "anthropic", **rule}.items()})
    return data


def _management(prefix, total, initial):
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "50",
    }


def nothing_saved():
    return not (Channel.objects.exists() or ModelPricing.objects.exists() or PricingInterval.objects.exists())


# -- list -----------------------------------------------------------------------------------------


def test_the_list_shows_status_groups_priced_models_and_billing_source(staff_client):
    channel = ChannelFactory(name="Claude retail", billing_model_source="requested")
    ChannelGroupFactory(channel=channel, group=GroupFactory(name="claude-pool"))
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5", "claude-opus-4-1"])
    ModelPricingFactory(channel=channel, models=["claude-haiku-*"])
    ChannelFactory(name="Dormant", status="disabled")
    page = staff_client.get("/channels/").content.decode()
    assert "Claude retail" in page and "claude-pool" in page and "Requested model" in page
    row = page[page.index("Claude retail") : page.index("Dormant")]
    assert '<td class="num" data-label="Priced models">3</td>' in row.replace("\n", "")

    page = staff_client.get("/channels/", {"status": "disabled"}).content.decode()
    assert "Dormant" in page and "Claude retail" not in page


def test_the_list_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    for n in range(100):
        channel = ChannelFactory(name=f"channel-{n:03}")
        ChannelGroupFactory.create_batch(2, channel=channel)
        ModelPricingFactory.create_batch(2, channel=channel, models=["a", "b"])
    # session + staff user + count + page + prefetched groups + prefetched cards
    with django_assert_max_num_queries(7):
        response = staff_client.get("/channels/", {"per_page": 100})
    assert response.status_code == 200
    assert response.content.decode().count('<td class="num" data-label="Priced models">4</td>') == 100


# -- create and edit --------------------------------------------------------------------------------


def test_creating_a_channel_stores_prices_per_token_and_shows_them_per_million(staff_client, staff_user):
    group = GroupFactory(name="claude-pool")
    response = staff_client.post(
        "/channels/new",
        channel_post(
            groups=[group],
            cards=[
                {
                    **SONNET,
                    "cache_write_price": "3.75",
                    "cache_write_1h_price": "6",
                    "cache_read_price": "0.3",
                    "intervals": [
                        {
                            "min_tokens": "200000",
                            "max_tokens": "",
                            "tier_label": ">200K",
                            "input_price": "6",
                            "output_price": "22.5",
                            "cache_read_multiplier": "2",
                        },
                    ],
                }
            ],
            mapping=[{"source": "claude-3-5-sonnet*", "target": "claude-sonnet-4-5"}],
        ),
    )
    channel = Channel.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/channels/{channel.pk}/"
    card = channel.pricing_cards.get()
    assert (card.input_price, card.output_price) == (Decimal("0.000003"), Decimal("0.000015"))
    assert (card.cache_write_price, card.cache_write_1h_price, card.cache_read_price) == (
        Decimal("0.00000375"),
        Decimal("0.000006"),
        Decimal("0.0000003"),
    )
    interval = card.intervals.get()
    assert (
        interval.min_tokens,
        interval.max_tokens,
        interval.input_price,
        interval.cache_read_multiplier,
    ) == (
        200_000,
        None,
        Decimal("0.000006"),
        Decimal("2"),
    )
    assert list(channel.groups.all()) == [group]
    assert channel.model_mapping == {"anthropic": {"claude-3-5-sonnet*": "claude-sonnet-4-5"}}
    snapshot = channel_snapshot_for_group(group.pk)
    assert snapshot.map_model(platform="anthropic", model="claude-3-5-sonnet-20241022") == "claude-sonnet-4-5"
    assert snapshot.price_for(platform="anthropic", model="Claude-Sonnet-4.5").card.models == tuple(
        card.models
    )

    log = ChannelAuditLog.objects.get()
    assert (log.action, log.actor, log.channel) == ("create", staff_user, channel)
    assert log.changes["name"] == {"from": None, "to": "Claude retail"}
    assert log.changes["groups"] == {"added": ["claude-pool"], "removed": []}

    page = staff_client.get(f"/channels/{channel.pk}/").content.decode()
    for shown in (
        'name="card-0-input_price" value="3"',
        'name="card-0-cache_write_price" value="3.75"',
        'name="card-0-cache_write_1h_price" value="6"',
        'name="card-0-cache_read_price" value="0.3"',
        'name="card-0-iv-0-output_price" value="22.5"',
        'name="card-0-iv-0-min_tokens" value="200000"',
    ):
        assert shown in page
    assert "Created" in page and staff_user.email in page


def test_a_price_with_many_decimals_survives_the_round_trip_exactly(staff_client):
    staff_client.post("/channels/new", channel_post(cards=[{**SONNET, "input_price": "0.07512345"}]))
    card = ModelPricing.objects.get()
    assert card.input_price == Decimal("0.00000007512345")
    page = staff_client.get(f"/channels/{card.channel_id}/").content.decode()
    assert 'name="card-0-input_price" value="0.07512345"' in page


def test_overlapping_patterns_across_cards_are_refused_on_the_later_card_and_nothing_is_saved(staff_client):
    response = staff_client.post(
        "/channels/new",
        channel_post(
            cards=[
                {**SONNET, "models": "claude-*"},
                {**SONNET, "platform": "openai", "models": "claude-sonnet-4"},
                {**SONNET, "models": "gpt-4o, claude-sonnet-4", "input_price": "2.5"},
            ]
        ),
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "`claude-*` already covers `claude-sonnet-4` (in card 1)." in page
    assert page.index("already covers") > page.index('id="card-2"')  # shown on the third card
    assert "Nothing was saved" in page
    assert 'name="card-2-input_price" value="2.5"' in page and "gpt-4o, claude-sonnet-4" in page
    assert nothing_saved()


def test_claude_names_with_dots_and_dashes_are_the_same_model(staff_client):
    response = staff_client.post(
        "/channels/new", channel_post(cards=[{**SONNET, "models": "Claude-Sonnet-4.5, claude-sonnet-4-5"}])
    )
    assert "are the same model (claude-sonnet-4-5)" in response.content.decode()
    assert nothing_saved()


def test_overlapping_intervals_are_refused_on_the_row_and_nothing_is_saved(staff_client):
    response = staff_client.post(
        "/channels/new",
        channel_post(
            cards=[
                {
                    **SONNET,
                    "intervals": [
                        {"min_tokens": "0", "max_tokens": "200000", "input_multiplier": "1"},
                        {"min_tokens": "150000", "max_tokens": "", "input_price": "6"},
                    ],
                }
            ]
        ),
    )
    page = response.content.decode()
    message = "Interval 2 (150,000–∞) overlaps interval 1 (0–200,000): it must start at 200,000 or above."
    assert message in page
    assert page.index(message) > page.index('id="card-0-iv-1"')
    assert nothing_saved()


@pytest.mark.parametrize(
    ("intervals", "message"),
    [
        (
            [
                {"min_tokens": "0", "max_tokens": "", "input_price": "1"},
                {"min_tokens": "10", "max_tokens": "20", "input_price": "1"},
            ],
            "Interval 1 (0–∞) has no max: only the last interval may be unbounded.",
        ),
        (
            [{"min_tokens": "100", "max_tokens": "50", "input_price": "1"}],
            "Interval 1 (100–50): max tokens (50) must be greater than min tokens (100).",
        ),
        (
            [
                {"min_tokens": "100", "max_tokens": "200", "input_price": "1"},
                {"min_tokens": "0", "max_tokens": "100", "input_price": "1"},
            ],
            "Interval 2 (0–100) starts below interval 1 (100–200): sort intervals by min tokens.",
        ),
        (
            [{"min_tokens": "100", "max_tokens": "200", "tier_label": "mid"}],
            "Interval 1 has no price: enter at least one price or multiplier.",
        ),
        (
            [{"min_tokens": "0", "max_tokens": "", "input_price": "-1"}],
            "Ensure this value is greater than or equal to 0.",
        ),
    ],
)
def test_each_interval_rule_is_enforced_with_a_message_naming_the_row(staff_client, intervals, message):
    response = staff_client.post("/channels/new", channel_post(cards=[{**SONNET, "intervals": intervals}]))
    assert message in response.content.decode()
    assert nothing_saved()


def test_a_per_token_card_needs_input_and_output_prices(staff_client):
    response = staff_client.post(
        "/channels/new", channel_post(cards=[{"models": "claude-opus-4-1", "input_price": "15"}])
    )
    page = response.content.decode()
    assert "A per-token card needs an output price (0 is allowed)." in page
    assert "needs an input price" not in page
    assert nothing_saved()


def test_an_image_card_needs_a_unit_price_or_tiers_with_labels(staff_client):
    image = {"models": "gemini-2.5-flash-image", "platform": "gemini", "billing_mode": "image"}
    page = staff_client.post("/channels/new", channel_post(cards=[image])).content.decode()
    assert "A per-image card needs a per-image price or at least one interval." in page

    tiers = [
        {"tier_label": "1K", "per_request_price": "0.039"},
        {"tier_label": "1k", "per_request_price": "0.05"},
        {"tier_label": "", "per_request_price": "0.2"},
        {"tier_label": "4K"},
    ]
    page = staff_client.post(
        "/channels/new", channel_post(cards=[{**image, "intervals": tiers}])
    ).content.decode()
    assert "Tier `1k` is already interval 1." in page
    assert "Give this tier a label (e.g. 1K, 2K, 4K, HD)." in page
    assert "Interval 4 has no price: enter its per-unit price." in page
    assert nothing_saved()

    tiers = [
        {"tier_label": label, "per_request_price": price}
        for label, price in (("1K", "0.039"), ("2K", "0.078"), ("4K", "0.156"))
    ]
    staff_client.post("/channels/new", channel_post(cards=[{**image, "intervals": tiers}]))
    card = ModelPricing.objects.get()
    assert [(i.tier_label, i.per_request_price) for i in card.intervals.all()] == [
        ("1K", Decimal("0.039")),
        ("2K", Decimal("0.078")),
        ("4K", Decimal("0.156")),
    ]


def test_a_removed_card_and_an_untouched_new_card_are_not_validated_or_saved(staff_client):
    response = staff_client.post(
        "/channels/new",
        channel_post(
            cards=[
                SONNET,
                {"models": "claude-*", "input_price": "-5", "DELETE": "on"},
                {},  # added with the button and left blank
            ]
        ),
    )
    assert response.status_code == 302
    assert list(ModelPricing.objects.values_list("models", flat=True)) == [["claude-sonnet-4-5"]]


def test_a_group_in_another_channel_is_refused_naming_that_channel(staff_client):
    group = GroupFactory(name="claude-pool")
    ChannelGroupFactory(channel=ChannelFactory(name="Wholesale"), group=group)
    response = staff_client.post("/channels/new", channel_post(name="Retail", groups=[group], cards=[SONNET]))
    assert response.status_code == 409
    page = response.content.decode()
    assert (
        "Group “claude-pool” already belongs to channel “Wholesale”; a group can be in one channel only."
        in page
    )
    assert 'value="Retail"' in page
    assert not Channel.objects.filter(name="Retail").exists()


def test_the_form_offers_only_groups_in_no_other_channel(staff_client):
    mine, free, taken = GroupFactory(name="mine"), GroupFactory(name="free"), GroupFactory(name="taken")
    channel = ChannelFactory()
    ChannelGroupFactory(channel=channel, group=mine)
    ChannelGroupFactory(group=taken)
    page = staff_client.get(f"/channels/{channel.pk}/").content.decode()
    groups = page[page.index('name="groups"') : page.index("</select>", page.index('name="groups"'))]
    assert (
        f'value="{mine.pk}" selected' in groups and f'value="{free.pk}"' in groups and "taken" not in groups
    )


def test_the_database_keeps_a_group_in_one_channel(db):
    group = GroupFactory()
    ChannelGroupFactory(group=group)
    with pytest.raises(IntegrityError), transaction.atomic():
        ChannelGroup.objects.create(channel=ChannelFactory(), group=group)


def test_mapping_rows_with_overlapping_sources_are_refused(staff_client):
    response = staff_client.post(
        "/channels/new",
        channel_post(
            mapping=[
                {"source": "claude-3-*", "target": "claude-sonnet-4-5"},
                {"platform": "openai", "source": "claude-3-opus", "target": "gpt-4o"},
                {"source": "claude-3-opus", "target": "claude-opus-4-1"},
                {"source": "gpt-4o", "target": "gpt-*"},
            ]
        ),
    )
    page = response.content.decode()
    assert "`claude-3-*` already covers `claude-3-opus`." in page
    assert page.index("already covers") > page.index('id="map-2"')
    assert "The target must be one model name, not a pattern." in page
    assert nothing_saved()


def test_channel_names_are_unique_whatever_the_case(staff_client):
    ChannelFactory(name="Retail")
    page = staff_client.post("/channels/new", channel_post(name="retail")).content.decode()
    assert "Another channel already has this name." in page


def test_editing_replaces_cards_and_audits_what_changed(staff_client, staff_user):
    old_group, new_group = GroupFactory(name="old-pool"), GroupFactory(name="new-pool")
    channel = ChannelFactory(name="Retail")
    ChannelGroupFactory(channel=channel, group=old_group)
    card = ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    PricingIntervalFactory(card=card, min_tokens=200_000, input_price=Decimal("0.000006"))
    ModelPricingFactory(channel=channel, platform="openai", models=["gpt-4o"])

    response = staff_client.post(
        f"/channels/{channel.pk}/",
        channel_post(
            name="Retail",
            status="disabled",
            groups=[new_group],
            initial_cards=2,
            cards=[
                {
                    **SONNET,
                    "input_price": "3.3",
                    "initial_intervals": 1,
                    "intervals": [
                        {"min_tokens": "200000", "max_tokens": "", "input_price": "6", "DELETE": "on"}
                    ],
                },
                {
                    "platform": "openai",
                    "models": "gpt-4o",
                    "input_price": "2.5",
                    "output_price": "10",
                    "DELETE": "on",
                },
            ],
        ),
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.status == "disabled" and list(channel.groups.all()) == [new_group]
    card = channel.pricing_cards.get()
    assert card.input_price == Decimal("0.0000033") and not card.intervals.exists()

    log = channel.audit_log.first()
    assert (log.action, log.actor) == ("update", staff_user)
    assert log.changes["status"] == {"from": "active", "to": "disabled"}
    assert log.changes["groups"] == {"added": ["new-pool"], "removed": ["old-pool"]}
    pricing = log.changes["pricing"]
    assert list(pricing["removed"]) == ["openai: gpt-4o"]
    assert pricing["changed"]["anthropic: claude-sonnet-4-5"]["changed"]["input_price ($/MTok)"] == {
        "from": "3",
        "to": "3.3",
    }
    page = staff_client.get(f"/channels/{channel.pk}/").content.decode()
    assert "Status: active → disabled" in page and "Groups: added new-pool; removed old-pool" in page
    assert "Pricing card removed: openai: gpt-4o" in page
    assert "input_price ($/MTok) 3 → 3.3" in page


def test_saving_without_changes_leaves_no_audit_row(staff_client):
    channel = ChannelFactory(name="Retail")
    ModelPricingFactory(channel=channel, models=["claude-sonnet-4-5"])
    body = channel_post(name="Retail", initial_cards=1, cards=[SONNET])
    staff_client.post(f"/channels/{channel.pk}/", body)
    assert not channel.audit_log.exists()


def test_deleting_a_channel_goes_through_a_dialog_and_is_audited(staff_client):
    channel = ChannelFactory(name="Retail")
    ChannelGroupFactory(channel=channel, group=GroupFactory(name="claude-pool"))
    ModelPricingFactory(channel=channel)
    dialog = staff_client.get(f"/channels/{channel.pk}/delete").content.decode()
    assert "<dialog" in dialog and "1 pricing card" in dialog and "claude-pool" in dialog
    response = staff_client.post(f"/channels/{channel.pk}/delete", headers={"HX-Request": "true"})
    assert response.status_code == 204 and response["HX-Redirect"] == "/channels/"
    assert json.loads(response["HX-Trigger"])["dialog:close"] is True
    assert not Channel.objects.exists() and not ModelPricing.objects.exists()
    log = ChannelAuditLog.objects.get()
    assert (log.action, log.channel, log.channel_name) == ("delete", None, "Retail")


def test_an_unknown_channel_is_a_404(staff_client):
    assert staff_client.get("/channels/999999/").status_code == 404


# -- fragments the form inserts -------------------------------------------------------------------


def test_add_card_returns_the_next_card_and_the_new_total(staff_client):
    response = staff_client.get(
        "/channels/card-form", {"card-TOTAL_FORMS": "2"}, headers={"HX-Request": "true"}
    )
    page = response.content.decode()
    assert 'id="card-2"' in page and 'name="card-2-models"' in page and "Card 3" in page
    assert 'name="card-2-iv-TOTAL_FORMS" value="0"' in page
    assert (
        '<input type="hidden" name="card-TOTAL_FORMS" value="3" id="id_card-TOTAL_FORMS" hx-swap-oob="true">'
        in page
    )
    assert "<nav" not in page


def test_add_interval_and_add_mapping_return_rows_at_the_next_index(staff_client):
    page = staff_client.get(
        "/channels/interval-row", {"card": "card-1", "card-1-iv-TOTAL_FORMS": "3"}
    ).content.decode()
    assert 'id="card-1-iv-3"' in page and 'name="card-1-iv-3-min_tokens" value="0"' in page
    assert 'name="card-1-iv-TOTAL_FORMS" value="4"' in page
    page = staff_client.get("/channels/mapping-row", {"map-TOTAL_FORMS": "0"}).content.decode()
    assert 'name="map-0-source"' in page and 'name="map-TOTAL_FORMS" value="1"' in page


@pytest.mark.parametrize(
    "query",
    [
        {"card": "card-x", "card-x-iv-TOTAL_FORMS": "0"},
        {"card": "card-1"},
        {"card": "card-1", "card-1-iv-TOTAL_FORMS": "50"},
    ],
)
def test_fragment_requests_with_bad_parameters_are_404(staff_client, query):
    assert staff_client.get("/channels/interval-row", query).status_code == 404


def test_the_catalog_intervals_for_sonnet_are_its_long_context_tier_in_dollars_per_million(staff_client):
    page = staff_client.get(
        "/channels/catalog-intervals",
        {"card": "card-0", "card-0-models": "claude-sonnet-4-5, claude-*", "card-0-iv-TOTAL_FORMS": "1"},
    ).content.decode()
    assert 'name="card-0-iv-1-min_tokens" value="200000"' in page
    assert 'name="card-0-iv-1-tier_label" value="&gt;200K"' in page
    assert 'name="card-0-iv-1-input_price" value="6"' in page
    assert 'name="card-0-iv-1-output_price" value="22.5"' in page
    assert 'name="card-0-iv-TOTAL_FORMS" value="2"' in page


def test_the_pricing_defaults_endpoint_answers_per_token_decimal_strings(staff_client):
    data = staff_client.get(
        "/channels/model-pricing", {"model": "anthropic/claude-sonnet-4-5-20250929"}
    ).json()
    assert data["found"] is True and data["source"] == "catalog default for claude-sonnet-4-5"
    assert (data["input_price"], data["output_price"], data["cache_write_price"]) == (
        "0.000003",
        "0.000015",
        "0.00000375",
    )
    assert (data["cache_write_1h_price"], data["cache_read_price"], data["image_output_price"]) == (
        "0.000006",
        "0.0000003",
        None,
    )
    assert data["tiers"][0]["min_tokens"] == 200_000

    missing = staff_client.get("/channels/model-pricing", {"model": "no-such-model"}).json()
    assert missing["found"] is False and missing["input_price"] is None


def test_the_pricing_defaults_endpoint_is_staff_only(client):
    response = client.get("/channels/model-pricing", {"model": "claude-sonnet-4-5"})
    assert response.status_code == 302 and "/login/" in response["Location"]


# -- services ---------------------------------------------------------------------------------------


def test_an_empty_post_re_renders_the_form_instead_of_failing(staff_client):
    # A POST without the form's fields (a stale tab, a hand-made request) used to leave the
    # editor unbound and crash reading its cards: it is a refused form like any other.
    channel = ChannelFactory(name="Kept")
    ModelPricingFactory(channel=channel)
    for path in ("/channels/new", f"/channels/{channel.pk}/"):
        response = staff_client.post(path)
        assert response.status_code == 200, path
        assert "Nothing was saved" in response.content.decode()
    assert list(Channel.objects.values_list("name", flat=True)) == ["Kept"]


def test_the_service_refuses_invalid_cards_without_writing_anything():
    cards = [
        CardSpec(platform="anthropic", models=("claude-*",), input_price=Decimal(0), output_price=Decimal(0)),
        CardSpec(
            platform="anthropic",
            models=("claude-opus-4-1",),
            input_price=Decimal("0.000015"),
            output_price=Decimal("0.000075"),
            intervals=(PriceInterval(min_tokens=10, max_tokens=5, input_price=Decimal(1)),),
        ),
    ]
    with pytest.raises(ChannelInvalid) as raised:
        channel_create(fields={"name": "Bad"}, cards=cards, actor=None)
    assert {(p.card, p.interval, p.field) for p in raised.value.problems} == {
        (1, None, "models"),
        (1, 0, None),
    }
    assert nothing_saved()


def test_a_taken_group_rolls_back_the_whole_create():
    group = GroupFactory(name="claude-pool")
    ChannelGroupFactory(channel=ChannelFactory(name="Wholesale"), group=group)
    with pytest.raises(ValidationError) as raised:
        channel_create(
            fields={"name": "Retail"},
            group_ids=[group.pk],
            cards=[
                CardSpec(platform="anthropic", models=("x",), input_price=Decimal(1), output_price=Decimal(1))
            ],
            mapping=[MappingRule(platform="anthropic", source="a", target="b")],
            actor=None,
        )
    assert "already belongs to channel “Wholesale”" in str(raised.value)
    assert list(Channel.objects.values_list("name", flat=True)) == ["Wholesale"]
    assert not ModelPricing.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_channels_racing_for_one_group_end_with_one_owner():
    group = GroupFactory(name="contested")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def create(name):
        try:
            barrier.wait()
            channel_create(fields={"name": name}, group_ids=[group.pk], actor=None)
            outcomes.append("saved")
        except ValidationError as error:
            outcomes.append(str(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(name,)) for name in ("Left", "Right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("saved") == 1
    owner = ChannelGroup.objects.get(group=group).channel
    assert any(f"already belongs to channel “{owner.name}”" in outcome for outcome in outcomes)
    assert Channel.objects.count() == 1
