"""Channel JSON columns: the model mapping and audit entries keep their shape, and pages tolerate a bad one."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from channels.models import Channel, ChannelAuditLog
from channels.snapshots import channel_snapshot_of
from tests.channels.test_channels import channel_post
from tests.factories import ChannelFactory

pytestmark = pytest.mark.django_db

# Nested shapes a CHECK constraint cannot see, written straight through the ORM.
MALFORMED_MAPPING = {
    "anthropic": {"claude-old": "claude-sonnet-4-5", "claude-x": 5, "claude-y": ""},
    "openai": "gpt-4o",
    "not-a-platform": {"a": "b"},
}


@pytest.mark.parametrize("value", [["anthropic"], "anthropic", 5, None])
def test_the_database_refuses_a_mapping_that_is_not_an_object(value):
    channel = ChannelFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Channel.objects.filter(pk=channel.pk).update(model_mapping=value)


@pytest.mark.parametrize("value", [[], "created", 5])
def test_the_database_refuses_audit_changes_that_are_not_an_object(value):
    with pytest.raises(IntegrityError), transaction.atomic():
        ChannelAuditLog.objects.create(channel_name="x", action="update", changes=value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"anthropic": "claude"}, "The anthropic mapping must be an object"),
        ({"anthropic": {"claude-old": 5}}, "Every anthropic source must map to a model name"),
        ({"anthropic": {"claude-old": ""}}, "Every anthropic source must map to a model name"),
        ({"anthropic": {" ": "claude-sonnet-4-5"}}, "Every anthropic source must map to a model name"),
        ({"mistral": {"a": "b"}}, "“mistral” is not a platform"),
        (["anthropic"], "must be an object of platforms"),
    ],
)
def test_model_validation_refuses_a_malformed_mapping(value, message):
    channel = ChannelFactory.build(model_mapping=value)
    with pytest.raises(ValidationError) as error:
        channel.full_clean()
    assert any(message in text for text in error.value.message_dict["model_mapping"])


def test_model_validation_accepts_the_mapping_the_console_writes():
    ChannelFactory.build(model_mapping={"anthropic": {"claude-*": "claude-sonnet-4-5"}}).full_clean()


def test_django_admin_refuses_a_malformed_mapping_with_a_message(admin_client):
    channel = ChannelFactory(model_mapping={"anthropic": {"claude-old": "claude-sonnet-4-5"}})
    data = {
        "name": channel.name,
        "description": "",
        "status": "active",
        "billing_model_source": "channel_mapped",
        "model_mapping": '{"anthropic": "claude-sonnet-4-5"}',
        "group_links-TOTAL_FORMS": "0",
        "group_links-INITIAL_FORMS": "0",
        "pricing_cards-TOTAL_FORMS": "0",
        "pricing_cards-INITIAL_FORMS": "0",
    }
    response = admin_client.post(f"/django-admin/channels/channel/{channel.pk}/change/", data)
    assert response.status_code == 200
    assert "The anthropic mapping must be an object" in response.content.decode()
    channel.refresh_from_db()
    assert channel.model_mapping == {"anthropic": {"claude-old": "claude-sonnet-4-5"}}


@pytest.fixture
def admin_client(client, staff_user):
    staff_user.is_superuser = True
    staff_user.save(update_fields=["is_superuser"])
    client.force_login(staff_user)
    return client


def test_a_channel_with_a_malformed_stored_mapping_still_opens(staff_client):
    channel = ChannelFactory()
    Channel.objects.filter(pk=channel.pk).update(model_mapping=MALFORMED_MAPPING)
    response = staff_client.get(f"/channels/{channel.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    # The readable rule is shown; the rest is named in a warning, not a 500.
    assert 'value="claude-old"' in page
    assert 'id="mapping-problems"' in page
    assert "The openai mapping must be an object" in page and "“not-a-platform” is not a platform" in page


def test_saving_a_channel_with_a_malformed_stored_mapping_keeps_only_its_rules(staff_client):
    channel = ChannelFactory(name="Claude retail")
    Channel.objects.filter(pk=channel.pk).update(model_mapping=MALFORMED_MAPPING)
    data = channel_post(mapping=[{"source": "claude-old", "target": "claude-sonnet-4-5"}], initial_map=1)
    response = staff_client.post(f"/channels/{channel.pk}/", data)
    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.model_mapping == {"anthropic": {"claude-old": "claude-sonnet-4-5"}}
    assert "mapping-problems" not in staff_client.get(f"/channels/{channel.pk}/").content.decode()


def test_the_price_lookup_uses_only_the_readable_rules():
    channel = ChannelFactory()
    Channel.objects.filter(pk=channel.pk).update(model_mapping=MALFORMED_MAPPING)
    snapshot = channel_snapshot_of(Channel.objects.get(pk=channel.pk))
    assert snapshot.map_model(platform="anthropic", model="claude-old") == "claude-sonnet-4-5"
    assert snapshot.map_model(platform="anthropic", model="claude-x") == "claude-x"
    assert snapshot.map_model(platform="openai", model="gpt-4") == "gpt-4"


def test_audit_entries_of_an_unexpected_shape_are_shown_plainly(staff_client):
    channel = ChannelFactory()
    ChannelAuditLog.objects.create(
        channel=channel,
        channel_name=channel.name,
        action="update",
        changes={
            "model_mapping": {"added": ["anthropic: claude-old"]},
            "groups": {"added": "retail"},
            "pricing": {"changed": {"anthropic: claude-*": "cheaper"}},
            "status": {"to": "disabled"},
            "description": {"from": "old", "to": "new"},
        },
    )
    response = staff_client.get(f"/channels/{channel.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    for label in ("Model mapping", "Groups", "Pricing", "Status"):
        assert f"{label}: recorded in an unexpected shape; see the JSON." in page
    assert "Description: old → new" in page  # well-formed changes still read as before
