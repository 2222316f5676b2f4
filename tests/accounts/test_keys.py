"""API keys: secrets, reactivation rules, the list, the form and the row actions
(docs/entities.md#api-keys)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.models import APIKey, Group
from accounts.rules import api_key_hash, parse_ip_rules
from accounts.services.keys import (
    api_key_create,
    api_key_expiration_clear,
    api_key_expire_due,
    api_key_quota_reset,
    api_key_set_enabled,
    api_key_update,
    api_key_usage_charge,
    api_key_windows_reset,
)
from accounts.snapshots import key_snapshot_load
from tests.factories import (
    APIKeyFactory,
    GroupFactory,
    SubscriptionFactory,
    SubscriptionGroupFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

NOW = timezone.now


def form_data(user, group=None, **overrides) -> dict:
    data = {
        "user": user.pk,
        "group": group.pk if group else "",
        "name": "ci-runner",
        "quota_usd": "0",
        "expires_at": "",
        "rate_limit_5h_usd": "0",
        "rate_limit_1d_usd": "0",
        "rate_limit_7d_usd": "0",
        "timezone": "",
        "ip_allowlist": "",
        "ip_denylist": "",
    }
    return data | overrides


# --- the secret ------------------------------------------------------------------------------------


def test_a_new_key_returns_its_secret_once_and_stores_only_its_hash():
    user = UserFactory()
    key, secret = api_key_create(user=user, group=None, name="laptop")
    assert re.fullmatch(r"sk-[0-9a-f]{64}", secret)
    key.refresh_from_db()
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest() == api_key_hash(secret)
    assert (key.key_prefix, key.key_last4) == (secret[:7], secret[-4:])
    assert key.masked == f"{secret[:7]}…{secret[-4:]}"
    stored = [str(getattr(key, f.attname)) for f in APIKey._meta.concrete_fields]
    assert not any(secret in value or secret[3:] in value for value in stored)


def test_every_key_gets_a_different_secret():
    user = UserFactory()
    secrets = {api_key_create(user=user, group=None, name=f"k{i}")[1] for i in range(20)}
    assert len(secrets) == 20


# --- which groups a user may bind a key to -----------------------------------------------------------


def test_a_key_cannot_be_bound_to_a_group_the_user_may_not_use():
    user = UserFactory(email="pat@example.com")
    exclusive = GroupFactory(name="vip", is_exclusive=True)
    subscription_group = SubscriptionGroupFactory(name="plus")
    inactive = GroupFactory(name="old", status=Group.Status.INACTIVE)
    for group, reason in [
        (exclusive, "Exclusive group: pat@example.com is not allowed to use it"),
        (subscription_group, "Subscription group: pat@example.com has no live subscription to it"),
        (inactive, "The group is inactive."),
    ]:
        with pytest.raises(ValidationError) as error:
            api_key_create(user=user, group=group, name="x")
        assert reason in error.value.message_dict["group"][0]
    assert not APIKey.objects.exists()


def test_an_allowance_or_a_live_subscription_opens_the_group():
    user = UserFactory()
    exclusive = GroupFactory(is_exclusive=True)
    user.allowed_groups.add(exclusive)
    subscription_group = SubscriptionGroupFactory()
    SubscriptionFactory(user=user, group=subscription_group)
    assert api_key_create(user=user, group=exclusive, name="a")[0].group == exclusive
    assert api_key_create(user=user, group=subscription_group, name="b")[0].group == subscription_group


def test_an_expired_or_revoked_subscription_does_not_open_the_group():
    user = UserFactory()
    group = SubscriptionGroupFactory()
    SubscriptionFactory(user=user, group=group, starts_at=NOW() - timedelta(days=40))  # ended 10 days ago
    SubscriptionFactory(user=user, group=group, status="revoked")
    with pytest.raises(ValidationError, match="no live subscription"):
        api_key_create(user=user, group=group, name="x")


def test_a_bound_key_keeps_its_group_when_edited_after_the_subscription_lapsed():
    user = UserFactory()
    group = SubscriptionGroupFactory()
    subscription = SubscriptionFactory(user=user, group=group)
    key, _ = api_key_create(user=user, group=group, name="x")
    subscription.status = "revoked"
    subscription.save()
    api_key_update(key=key, fields={"name": "renamed", "group": group})
    key.refresh_from_db()
    assert (key.name, key.group) == ("renamed", group)


def test_the_key_form_saves_a_concurrency_limit_and_refuses_a_negative_one(staff_client):
    user = UserFactory()
    response = staff_client.post("/keys/new", form_data(user, concurrency="-1"))
    assert "Ensure this value is greater than or equal to 0." in response.content.decode()
    assert 'value="-1"' in response.content.decode()  # re-rendered with what was typed
    assert not APIKey.objects.exists()
    staff_client.post("/keys/new", form_data(user, concurrency="4"))
    key = APIKey.objects.get()
    assert key.concurrency == 4
    assert key_snapshot_load(key.key_hash).concurrency == 4
    staff_client.post(f"/keys/{key.pk}/", form_data(user, concurrency=""))
    key.refresh_from_db()
    assert key.concurrency == 0  # empty: no limit of its own


def test_the_owner_of_a_key_never_changes(staff_client):
    owner, other = UserFactory(email="owner@example.com"), UserFactory(email="other@example.com")
    key, _ = api_key_create(user=owner, group=None, name="laptop")
    with pytest.raises(ValidationError, match="The owner of a key cannot change"):
        api_key_update(key=key, fields={"user": other})
    page = staff_client.get(f"/keys/{key.pk}/").content.decode()
    assert "The owner of a key is fixed. For another person, create a new key." in page
    assert re.search(r'<select name="user"[^>]*disabled', page)
    data = {"user": other.pk, "name": "renamed", "quota_usd": "0", "rate_limit_5h_usd": "0"}
    data |= {"rate_limit_1d_usd": "0", "rate_limit_7d_usd": "0", "timezone": "", "expires_at": ""}
    response = staff_client.post(f"/keys/{key.pk}/", data)
    assert response.status_code == 302  # the name is saved; the posted owner is ignored
    key.refresh_from_db()
    assert (key.user, key.name) == (owner, "renamed")


# --- reactivation (docs/windows.md#key-quota) -------------------------------------------------


def exhausted_key(**kwargs) -> APIKey:
    key = APIKeyFactory(quota_usd=Decimal("5"), **kwargs)
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("6"))
    key.refresh_from_db()
    assert key.status == "quota_exhausted"
    return key


def expired_key(**kwargs) -> APIKey:
    key, _ = api_key_create(user=UserFactory(), group=None, name="old", expires_at=NOW() - timedelta(hours=1))
    assert key.status == "expired"
    return key


def test_raising_the_quota_above_the_usage_reactivates_an_exhausted_key():
    key = exhausted_key()
    assert api_key_update(key=key, fields={"quota_usd": Decimal("5.5")}).status == "quota_exhausted"
    assert api_key_update(key=key, fields={"quota_usd": Decimal("6.01")}).status == "active"


def test_making_the_quota_unlimited_reactivates_an_exhausted_key():
    key = exhausted_key()
    assert api_key_update(key=key, fields={"quota_usd": Decimal("0")}).status == "active"


def test_resetting_the_quota_reactivates_an_exhausted_key_and_keeps_the_windows():
    key = exhausted_key()
    key = api_key_quota_reset(key_id=key.pk)
    key.refresh_from_db()
    assert (key.status, key.quota_used_usd) == ("active", Decimal("0"))
    assert key.usage_5h_usd == Decimal("6")


def test_lowering_the_quota_below_the_usage_exhausts_the_key():
    key = APIKeyFactory(quota_usd=Decimal("10"), quota_used_usd=Decimal("4"))
    assert api_key_update(key=key, fields={"quota_usd": Decimal("4")}).status == "quota_exhausted"


def test_clearing_the_expiry_reactivates_an_expired_key():
    key = expired_key()
    assert api_key_expiration_clear(key_id=key.pk).status == "active"


def test_moving_the_expiry_into_the_future_reactivates_an_expired_key():
    key = expired_key()
    assert api_key_update(key=key, fields={"expires_at": NOW() + timedelta(days=1)}).status == "active"
    assert api_key_update(key=key, fields={"expires_at": NOW() - timedelta(days=1)}).status == "expired"


def test_an_expired_key_whose_quota_is_also_used_up_becomes_exhausted_when_the_expiry_is_cleared():
    key = exhausted_key()
    api_key_update(key=key, fields={"expires_at": NOW() - timedelta(minutes=1)})
    assert api_key_expiration_clear(key_id=key.pk).status == "quota_exhausted"


def test_a_disabled_key_stays_disabled_whatever_is_reset():
    key = exhausted_key(status="active")
    api_key_set_enabled(key_id=key.pk, enabled=False)
    assert api_key_quota_reset(key_id=key.pk).status == "disabled"
    assert api_key_expiration_clear(key_id=key.pk).status == "disabled"
    assert api_key_update(key=key, fields={"quota_usd": Decimal("0")}).status == "disabled"


def test_enabling_a_key_gives_it_the_status_its_quota_and_expiry_call_for():
    key = exhausted_key()
    api_key_set_enabled(key_id=key.pk, enabled=False)
    assert api_key_set_enabled(key_id=key.pk, enabled=True).status == "quota_exhausted"
    fresh = APIKeyFactory(status="disabled")
    assert api_key_set_enabled(key_id=fresh.pk, enabled=True).status == "active"


def test_resetting_the_windows_zeroes_them_and_they_restart_on_the_next_use():
    key = APIKeyFactory()
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("2"))
    api_key_windows_reset(key_id=key.pk)
    key.refresh_from_db()
    assert (key.usage_5h_usd, key.usage_1d_usd, key.usage_7d_usd) == (Decimal(0),) * 3
    assert (key.window_5h_start, key.window_1d_start, key.window_7d_start) == (None, None, None)
    assert key.quota_used_usd == Decimal("2")


def test_the_tidy_up_job_flips_active_keys_past_their_expiry():
    due = APIKeyFactory(expires_at=NOW() - timedelta(seconds=1))
    later = APIKeyFactory(expires_at=NOW() + timedelta(days=1))
    disabled = APIKeyFactory(expires_at=NOW() - timedelta(days=1), status="disabled")
    assert api_key_expire_due() == 1
    statuses = dict(APIKey.objects.values_list("pk", "status"))
    assert statuses == {due.pk: "expired", later.pk: "active", disabled.pk: "disabled"}


def test_a_list_that_normalising_would_change_is_refused_once_showing_the_normalised_list(staff_client):
    user = UserFactory()
    typed = "10.1.2.3/8\n203.0.113.7\n 203.0.113.7\n2001:DB8::1"
    page = staff_client.post("/keys/new", form_data(user, ip_allowlist=typed)).content.decode()
    assert not APIKey.objects.exists()
    assert "Nothing was saved: check the list as it will be stored" in page
    assert (
        "Line 1: 10.1.2.3/8 is the range 10.0.0.0/8 (the address part is cut to the range&#x27;s start)."
        in page
    )
    assert "Line 3: 203.0.113.7 is listed already; the copy is dropped." in page
    assert "Line 4: 2001:DB8::1 is written 2001:db8::1." in page
    normalised = "10.0.0.0/8\n203.0.113.7\n2001:db8::1"
    assert f">\n{normalised}</textarea>" in page  # the box now holds what would be stored
    response = staff_client.post("/keys/new", form_data(user, ip_allowlist=normalised))
    assert response.status_code == 200 and "Key created" in response.content.decode()
    assert APIKey.objects.get().ip_allowlist == ["10.0.0.0/8", "203.0.113.7", "2001:db8::1"]


@pytest.mark.parametrize(
    ("allow", "deny", "message"),
    [
        ("203.0.113.7", "203.0.113.7", "203.0.113.7 is allowed but is also on the denylist"),
        (
            "203.0.113.0/28",
            "203.0.113.0/24",
            "203.0.113.0/28 is allowed but is inside the denied 203.0.113.0/24",
        ),
    ],
)
def test_an_address_both_allowed_and_denied_is_refused(staff_client, allow, deny, message):
    page = staff_client.post("/keys/new", form_data(UserFactory(), ip_allowlist=allow, ip_denylist=deny))
    assert message in page.content.decode() and not APIKey.objects.exists()
    with pytest.raises(ValidationError, match="the denylist always wins"):
        api_key_create(user=UserFactory(), group=None, name="x", ip_allowlist=[allow], ip_denylist=[deny])


def test_a_denied_address_inside_an_allowed_range_is_an_exception_not_a_contradiction():
    key, _ = api_key_create(
        user=UserFactory(),
        group=None,
        name="x",
        ip_allowlist=["203.0.113.0/24"],
        ip_denylist=["203.0.113.66"],
    )
    assert (key.ip_allowlist, key.ip_denylist) == (["203.0.113.0/24"], ["203.0.113.66"])


def test_ip_rules_are_normalised_and_bad_lines_are_named():
    assert parse_ip_rules(["203.0.113.7", "", " 10.1.2.3/8 ", "2001:db8::/32", "203.0.113.7"]) == [
        "203.0.113.7",
        "10.0.0.0/8",
        "2001:db8::/32",
    ]
    with pytest.raises(ValidationError) as error:
        parse_ip_rules(["1.2.3.4", "10.0.0.300", "", "fe80::/200"])
    assert error.value.messages == [
        "Line 2: “10.0.0.300” is not an IP address or CIDR range.",
        "Line 4: “fe80::/200” is not an IP address or CIDR range.",
    ]


# --- the list ----------------------------------------------------------------------------------------


def test_the_key_list_shows_the_badge_windows_and_expiry(staff_client):
    user = UserFactory(email="ann@example.com")
    key = APIKeyFactory(user=user, name="prod", quota_usd=Decimal("5"), expires_at=NOW() + timedelta(days=30))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("4.5"))
    APIKeyFactory(name="free", quota_usd=Decimal("0"))
    page = staff_client.get("/keys/").content.decode()
    assert "prod" in page and "ann@example.com" in page and key.masked in page
    assert re.search(r'id="key-\d+-quota" class="badge usage-badge usage-warn"', page)
    assert "$4.50 / $5.00" in page
    assert "$0.00 / unlimited" in page
    expires = re.search(rf'id="key-{key.pk}-expires".*?</div>\s*</div>', page, re.S).group(0)
    assert "from now" in expires and timezone.localtime(key.expires_at).strftime("%Y-%m-%d %H:%M") in expires
    assert "never" in page  # the free key never expires and was never used


def test_an_ended_window_shows_zero_and_that_it_restarts_on_the_next_request(staff_client):
    key = APIKeyFactory(rate_limit_5h_usd=Decimal("10"))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("3"), now=NOW() - timedelta(hours=6))
    page = staff_client.get("/keys/").content.decode()
    windows = re.search(r'id="key-\d+-windows".*?</div>\s*</div>', page, re.S).group(0)
    five_hours = windows.split("1d")[0]
    assert "$3.00" not in five_hours and "$0.00" in five_hours  # the 5h window has ended: it reads $0.00 …
    # … and says what happens next, not a reset time that has already passed.
    assert '<span class="window-reset">ended; restarts on the next request</span>' in five_hours
    assert "reset " not in five_hours.split('class="window-kind"')[1]
    assert "$3.00" in windows.split("7d")[1]  # the 7-day window still holds the charge


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "alpha"}, {"alpha"}),
        ({"q": "bob@example"}, {"beta"}),
        ({"status": "expired"}, {"gamma", "delta"}),
        ({"status": "active"}, {"alpha", "beta"}),
        ({"expiring": "7"}, {"beta"}),
        ({"exhausted": "yes"}, {"epsilon"}),
        ({"status": "disabled"}, set()),
    ],
)
def test_the_key_list_filters(staff_client, query, expected):
    bob = UserFactory(email="bob@example.com")
    APIKeyFactory(name="alpha")
    APIKeyFactory(name="beta", user=bob, expires_at=NOW() + timedelta(days=3))
    APIKeyFactory(name="gamma", status="expired")
    APIKeyFactory(name="delta", expires_at=NOW() - timedelta(hours=1))  # active, but past its expiry
    APIKeyFactory(
        name="epsilon", quota_usd=Decimal("1"), quota_used_usd=Decimal("1"), status="quota_exhausted"
    )
    response = staff_client.get("/keys/", query)
    names = set(
        re.findall(r'class="fw-medium cell-name" title="[a-z]+">([a-z]+)</a>', response.content.decode())
    )
    assert names == expected


def test_the_key_list_filters_by_user_and_group_and_finds_a_key_by_its_prefix(staff_client):
    group = GroupFactory()
    user = UserFactory()
    mine, secret = api_key_create(user=user, group=group, name="mine")
    other = APIKeyFactory(name="other", key_prefix="sk-zzzz")
    page = staff_client.get("/keys/", {"user": user.pk}).content.decode()
    assert "mine" in page and other.masked not in page
    page = staff_client.get("/keys/", {"group": group.pk}).content.decode()
    assert "mine" in page and other.masked not in page
    for typed in (secret[:7], secret[:12], secret[-4:]):
        page = staff_client.get("/keys/", {"q": typed}).content.decode()
        assert mine.masked in page and other.masked not in page, typed


def test_an_htmx_request_gets_only_the_table(staff_client):
    APIKeyFactory(name="alpha")
    body = staff_client.get("/keys/", headers={"HX-Request": "true"}).content.decode()
    assert body.lstrip().startswith('<div id="table"') and "<nav" not in body and "alpha" in body


def test_the_key_list_sorts_by_quota_used(staff_client):
    APIKeyFactory(name="low", quota_used_usd=Decimal("1"))
    APIKeyFactory(name="high", quota_used_usd=Decimal("9"))
    page = staff_client.get("/keys/", {"sort": "-quota"}).content.decode()
    assert page.index(">high<") < page.index(">low<")


def test_the_key_list_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    groups = GroupFactory.create_batch(3)
    users = UserFactory.create_batch(10)
    for i in range(300):
        APIKeyFactory(
            user=users[i % 10],
            group=groups[i % 3],
            quota_usd=Decimal(i % 4),
            quota_used_usd=Decimal("0.5"),
            usage_5h_usd=Decimal("0.5"),
            window_5h_start=NOW() - timedelta(hours=1),
            expires_at=NOW() + timedelta(days=i % 40) if i % 2 else None,
            ip_allowlist=["10.0.0.0/8"] if i % 5 == 0 else [],
        )
    # session + staff user + count + one page of rows (user and group joined) + the filter's
    # user and group options.
    with django_assert_max_num_queries(6):
        response = staff_client.get("/keys/", {"per_page": 300})
    assert response.status_code == 200
    assert response.content.decode().count('class="badge usage-badge') >= 300


# --- create and edit ----------------------------------------------------------------------------------


def test_creating_a_key_shows_the_secret_once_and_never_again(staff_client):
    user = UserFactory()
    group = GroupFactory()
    response = staff_client.post(
        "/keys/new", form_data(user, group, quota_usd="12.5", ip_allowlist="203.0.113.7\n10.0.0.0/8")
    )
    assert response.status_code == 200
    page = response.content.decode()
    secret = re.search(r"sk-[0-9a-f]{64}", page).group(0)
    assert page.count(secret) == 1
    assert "It will not be shown again" in page
    assert "no-store" in response["Cache-Control"]
    key = APIKey.objects.get()
    assert key.key_hash == api_key_hash(secret)
    assert (key.user, key.group, key.name, key.quota_usd) == (user, group, "ci-runner", Decimal("12.5"))
    assert key.ip_allowlist == ["203.0.113.7", "10.0.0.0/8"]
    for url in ("/keys/", f"/keys/{key.pk}/", f"/keys/{key.pk}/cells", f"/keys/{key.pk}/reset-quota"):
        assert secret not in staff_client.get(url).content.decode()


def test_creating_a_key_over_htmx_answers_with_the_secret_dialog(staff_client):
    user = UserFactory()
    response = staff_client.post("/keys/new", form_data(user), headers={"HX-Request": "true"})
    assert response["HX-Retarget"] == "#dialog-host" and response["HX-Reswap"] == "innerHTML"
    body = response.content.decode()
    assert body.lstrip().startswith("<dialog") and "data-copy-target" in body
    assert re.search(r'value="sk-[0-9a-f]{64}"', body)


def test_the_form_keeps_the_values_and_names_each_problem(staff_client):
    user = UserFactory(email="kim@example.com")
    group = SubscriptionGroupFactory(name="plus")
    response = staff_client.post(
        "/keys/new",
        form_data(
            user,
            group,
            name="kept name",
            quota_usd="-1",
            expires_at="2001-01-01T00:00",
            ip_allowlist="10.0.0.1\nnot-an-ip",
            ip_denylist="300.1.1.1",
            timezone="Mars/Olympus",
        ),
    )
    page = response.content.decode()
    assert response.status_code == 200 and not APIKey.objects.exists()
    assert "Ensure this value is greater than or equal to 0." in page
    assert "Choose a time in the future" in page
    assert "Line 2: “not-an-ip” is not an IP address or CIDR range." in page
    assert "Line 1: “300.1.1.1” is not an IP address or CIDR range." in page
    assert "“Mars/Olympus” is not an IANA time zone" in page
    assert 'value="kept name"' in page and "10.0.0.1\nnot-an-ip" in page


def test_the_form_says_why_a_group_is_unavailable(staff_client):
    user = UserFactory(email="kim@example.com")
    group = SubscriptionGroupFactory(name="plus")
    response = staff_client.post("/keys/new", form_data(user, group))
    page = response.content.decode()
    assert "Subscription group: kim@example.com has no live subscription to it. Assign one first." in page
    assert not APIKey.objects.exists()


def test_choosing_a_user_re_renders_the_group_choices_for_them(staff_client):
    user = UserFactory(email="kim@example.com")
    plus = SubscriptionGroupFactory(name="plus")
    vip = GroupFactory(name="vip", is_exclusive=True)
    open_group = GroupFactory(name="open")
    body = staff_client.get("/keys/group-options", {"user": user.pk}).content.decode()
    assert body.lstrip().startswith('<div id="group-field"')
    assert re.search(rf'<option value="{plus.pk}" disabled>plus \(OpenAI, subscription\) — unavailable', body)
    assert re.search(rf'<option value="{vip.pk}" disabled>vip .*— unavailable', body)
    assert re.search(rf'<option value="{open_group.pk}">open ', body)
    assert "has no live subscription" in body and "is not allowed to use it" in body
    SubscriptionFactory(user=user, group=plus)
    body = staff_client.get("/keys/group-options", {"user": user.pk, "group": plus.pk}).content.decode()
    assert re.search(rf'<option value="{plus.pk}" selected>plus ', body)


def test_editing_a_key_moves_its_expiry_and_reactivates_it(staff_client):
    key = expired_key()
    future = (timezone.localtime() + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M")
    response = staff_client.post(
        f"/keys/{key.pk}/",
        form_data(key.user, name="old", expires_at=future, quota_usd="3", rate_limit_5h_usd="1.5"),
    )
    assert response.status_code == 302 and response["Location"] == "/keys/"
    key.refresh_from_db()
    assert (
        key.status == "active" and key.quota_usd == Decimal("3") and key.rate_limit_5h_usd == Decimal("1.5")
    )
    assert key.expires_at > NOW() + timedelta(days=9)


def test_the_edit_form_shows_amounts_as_typed(staff_client):
    key = APIKeyFactory(
        quota_usd=Decimal("0"), rate_limit_5h_usd=Decimal("8"), rate_limit_1d_usd=Decimal("2.5")
    )
    page = staff_client.get(f"/keys/{key.pk}/").content.decode()
    assert re.search(r'name="quota_usd" value="0"', page)
    assert re.search(r'name="rate_limit_5h_usd" value="8"', page)
    assert re.search(r'name="rate_limit_1d_usd" value="2.5"', page)
    assert "0E-8" not in page


def test_an_unchanged_past_expiry_does_not_block_saving_other_fields(staff_client):
    key = expired_key()
    past = timezone.localtime(key.expires_at).strftime("%Y-%m-%dT%H:%M")
    response = staff_client.post(f"/keys/{key.pk}/", form_data(key.user, name="renamed", expires_at=past))
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.status) == ("renamed", "expired")


# --- row actions ----------------------------------------------------------------------------------------


def test_the_reset_quota_dialog_names_the_numbers_and_the_badge_re_renders_alone(staff_client):
    key = exhausted_key(name="busy")
    dialog = staff_client.get(f"/keys/{key.pk}/reset-quota").content.decode()
    assert "<dialog" in dialog and "$6.00" in dialog and "$5.00" in dialog and "120%" in dialog
    assert "becomes active again" in dialog
    response = staff_client.post(f"/keys/{key.pk}/reset-quota", headers={"HX-Request": "true"})
    assert response.status_code == 204
    events = json.loads(response["HX-Trigger"])
    assert events[f"key-{key.pk}-changed"] is True and events["dialog:close"] is True
    key.refresh_from_db()
    assert (key.quota_used_usd, key.status) == (Decimal("0"), "active")
    cells = staff_client.get(f"/keys/{key.pk}/cells").content.decode()
    assert f'id="key-{key.pk}-quota"' in cells and 'hx-swap-oob="true"' in cells
    assert "$0.00 / $5.00" in cells and "badge-status-active" in cells
    assert "<nav" not in cells


def test_the_clear_expiration_dialog_reactivates_an_expired_key(staff_client):
    key = expired_key()
    dialog = staff_client.get(f"/keys/{key.pk}/clear-expiration").content.decode()
    assert "expired" in dialog and "becomes active again" in dialog
    assert staff_client.post(f"/keys/{key.pk}/clear-expiration").status_code == 204
    key.refresh_from_db()
    assert (key.expires_at, key.status) == (None, "active")
    assert "never" in staff_client.get(f"/keys/{key.pk}/cells").content.decode()


def test_the_reset_windows_dialog_lists_the_three_windows(staff_client):
    key = APIKeyFactory(rate_limit_1d_usd=Decimal("20"))
    api_key_usage_charge(key_id=key.pk, amount_usd=Decimal("7.25"))
    dialog = staff_client.get(f"/keys/{key.pk}/reset-windows").content.decode()
    assert dialog.count("$7.25") == 4 and "$20.00" in dialog  # three windows + the quota
    staff_client.post(f"/keys/{key.pk}/reset-windows")
    key.refresh_from_db()
    assert key.usage_1d_usd == Decimal("0") and key.quota_used_usd == Decimal("7.25")


def test_disabling_and_enabling_through_the_dialog(staff_client):
    key = APIKeyFactory()
    assert "Disable" in staff_client.get(f"/keys/{key.pk}/status").content.decode()
    staff_client.post(f"/keys/{key.pk}/status")
    key.refresh_from_db()
    assert key.status == "disabled"
    dialog = staff_client.get(f"/keys/{key.pk}/status").content.decode()
    assert "Enable" in dialog and "becomes <strong>active</strong>" in dialog
    staff_client.post(f"/keys/{key.pk}/status")
    key.refresh_from_db()
    assert key.status == "active"


def test_deleting_a_key_refreshes_the_table(staff_client):
    key = APIKeyFactory(name="doomed", quota_used_usd=Decimal("2.5"))
    dialog = staff_client.get(f"/keys/{key.pk}/delete").content.decode()
    assert "doomed" in dialog and "$2.50" in dialog and "cannot be undone" in dialog
    response = staff_client.post(f"/keys/{key.pk}/delete")
    assert json.loads(response["HX-Trigger"])["keys:changed"] is True
    assert not APIKey.objects.exists()
