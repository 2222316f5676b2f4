"""Every list page: a filter the server refuses is named next to its field, and lists nothing."""

from __future__ import annotations

import pytest

from tests.factories import APIKeyFactory, ChannelFactory, SubscriptionFactory, UpstreamAccountFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/keys/", {"user": "999999"}, "user"),
        ("/keys/", {"expiring": "soon"}, "expiring"),
        ("/users/", {"status": "gone"}, "status"),
        ("/subscriptions/", {"group": "999999"}, "group"),
        ("/accounts/", {"platform": "mainframe"}, "platform"),
        ("/channels/", {"status": "paused"}, "status"),
    ],
)
def test_an_invalid_list_filter_is_named_and_lists_nothing(staff_client, path, params, field):
    APIKeyFactory()
    SubscriptionFactory()
    ChannelFactory()
    UpstreamAccountFactory()
    response = staff_client.get(path, params)
    page = response.content.decode()
    slot = page[page.index(f'id="id_{field}_errors"') :]
    assert (
        "Select a valid choice" in slot[: slot.index("</div>")]
        or "Enter a whole number" in slot[: slot.index("</div>")]
    )
    assert response.context["table"].paginator.count == 0
    assert "The filters above need fixing" in page
    body = staff_client.get(path, params, headers={"HX-Request": "true"}).content.decode()
    assert f'id="id_{field}_errors" data-errors-for="id_{field}" hx-swap-oob="true"' in body
