from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.crypto import decrypt_credentials, encrypt_credentials
from accounts.models import UpstreamAccount
from accounts.selectors.upstream import upstream_account_credentials
from tests.factories import GroupAccountFactory, GroupFactory, UpstreamAccountFactory

pytestmark = pytest.mark.django_db


def account_data(**overrides) -> dict:
    data = {
        "name": "anthropic-main",
        "platform": "anthropic",
        "type": "apikey",
        "notes": "",
        "priority": "50",
        "concurrency": "3",
        "rate_multiplier": "1",
        "status": "active",
        "schedulable": "on",
        "expires_at": "",
        "auto_pause_on_expired": "on",
        "cache_ttl_override": "",
        "quota_limit_usd": "0",
        "quota_daily_limit_usd": "0",
        "quota_daily_reset_mode": "rolling",
        "quota_daily_reset_hour": "0",
        "quota_weekly_limit_usd": "0",
        "quota_weekly_reset_mode": "rolling",
        "quota_weekly_reset_hour": "0",
        "quota_weekly_reset_weekday": "0",
        "quota_timezone": "UTC",
        "auth_mode": "sigv4",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def with_credentials(account: UpstreamAccount, credentials: dict) -> UpstreamAccount:
    account.credentials_encrypted = encrypt_credentials(credentials)
    account.save(update_fields=["credentials_encrypted"])
    return account


# --- List ----------------------------------------------------------------------------------------


def test_the_list_filters_by_platform_type_status_group_schedulable_and_search(staff_client):
    group = GroupFactory(name="pool")
    GroupAccountFactory(group=group, account=UpstreamAccountFactory(name="in-pool"))
    UpstreamAccountFactory(name="openai-one", platform="openai")
    UpstreamAccountFactory(name="broken", status="error", error_message="401 from upstream")
    UpstreamAccountFactory(name="paused", schedulable=False, notes="waiting for billing")
    UpstreamAccountFactory(name="bedrock-one", type="bedrock")

    def names(**params) -> set[str]:
        page = staff_client.get("/accounts/", params).content.decode()
        return {n for n in ("in-pool", "openai-one", "broken", "paused", "bedrock-one") if f">{n}<" in page}

    assert names() == {"in-pool", "openai-one", "broken", "paused", "bedrock-one"}
    assert names(platform="openai") == {"openai-one"}
    assert names(type="bedrock") == {"bedrock-one"}
    assert names(status="error") == {"broken"}
    assert names(group=group.pk) == {"in-pool"}
    assert names(schedulable="no") == {"paused"}
    assert names(q="billing") == {"paused"}


def test_the_list_shows_the_error_on_hover_and_bedrock_as_anthropic_aws(staff_client):
    UpstreamAccountFactory(name="broken", status="error", error_message="401 from upstream")
    UpstreamAccountFactory(name="aws", type="bedrock")
    page = staff_client.get("/accounts/").content.decode()
    assert 'title="401 from upstream"' in page
    assert "Anthropic | AWS" in page


def test_the_account_list_runs_a_fixed_number_of_queries(staff_client, django_assert_max_num_queries):
    groups = GroupFactory.create_batch(3)
    for n, account in enumerate(UpstreamAccountFactory.create_batch(200, quota_daily_limit_usd=Decimal("5"))):
        GroupAccountFactory(group=groups[n % 3], account=account)
    # session + staff user + count + page of rows + their groups (prefetch) + the group filter's options
    with django_assert_max_num_queries(6):
        response = staff_client.get("/accounts/", {"per_page": 200})
    assert response.status_code == 200
    assert response.content.decode().count('class="quota-badge"') == 200


# --- The quota badge -----------------------------------------------------------------------------


def test_the_badge_colours_each_dimension_by_percentage(staff_client):
    account = UpstreamAccountFactory(
        quota_limit_usd=Decimal("100"),
        quota_used_usd=Decimal("100"),
        quota_daily_limit_usd=Decimal("10"),
        quota_daily_used_usd=Decimal("8.5"),
        quota_daily_start=timezone.now() - timedelta(hours=1),
        quota_weekly_limit_usd=Decimal("50"),
        quota_weekly_used_usd=Decimal("10"),
        quota_weekly_start=timezone.now() - timedelta(hours=1),
    )
    badge = staff_client.get(f"/accounts/{account.pk}/quota-badge").content.decode()
    assert 'quota-warning" data-quota="D"' in badge
    assert 'quota-neutral" data-quota="W"' in badge
    assert 'quota-danger" data-quota="$"' in badge
    assert "over quota" in badge
    assert "<nav" not in badge
    assert f'hx-trigger="account-{account.pk}-changed from:body"' in badge


def test_an_expired_period_shows_zero_and_its_next_reset_in_the_viewers_zone_without_writing(
    staff_client, settings
):
    settings.TIME_ZONE = "America/New_York"
    account = UpstreamAccountFactory(
        quota_daily_limit_usd=Decimal("10"),
        quota_daily_used_usd=Decimal("11"),
        quota_daily_start=datetime(2020, 1, 1, tzinfo=UTC),
        quota_daily_reset_mode="fixed",
        quota_daily_reset_hour=0,
        quota_timezone="UTC",
    )
    badge = staff_client.get(f"/accounts/{account.pk}/quota-badge").content.decode()
    assert '<span class="quota-used">$0.00</span>/$10.00' in badge
    # The next midnight UTC, shown in New York time with the zone named.
    midnight = (timezone.now() + timedelta(days=1)).astimezone(UTC).date()
    shown = datetime(midnight.year, midnight.month, midnight.day, tzinfo=UTC).astimezone(
        timezone.get_current_timezone()
    )
    assert f"resets {shown:%b %-d %H:%M} {shown.tzname()}" in badge
    assert shown.tzname() in ("EST", "EDT")
    account.refresh_from_db()
    assert account.quota_daily_used_usd == Decimal("11")


def test_accounts_without_quota_types_show_not_applicable(staff_client):
    account = UpstreamAccountFactory(type="oauth")
    assert ">n/a<" in staff_client.get(f"/accounts/{account.pk}/quota-badge").content.decode()


# --- Create and edit, credentials ----------------------------------------------------------------


def test_creating_an_api_key_account_encrypts_the_credentials(staff_client):
    group = GroupFactory(name="pool")
    response = staff_client.post(
        "/accounts/new",
        account_data(groups=[group.pk], apikey__api_key="sk-ant-secret-1234", apikey__base_url=""),
    )
    assert response.status_code == 302
    account = UpstreamAccount.objects.get(name="anthropic-main")
    assert "sk-ant-secret-1234" not in account.credentials_encrypted
    assert upstream_account_credentials(account) == {"api_key": "sk-ant-secret-1234"}
    assert list(account.groups.all()) == [group]


def test_a_missing_secret_is_reported_on_its_field_and_nothing_is_saved(staff_client):
    page = staff_client.post("/accounts/new", account_data(name="kept")).content.decode()
    assert "Enter the api key." in page and 'value="kept"' in page
    assert not UpstreamAccount.objects.exists()


@pytest.mark.parametrize(
    ("mode", "fields", "expected"),
    [
        (
            "sigv4",
            {
                "bedrock_sigv4__aws_access_key_id": "AKIAEXAMPLE",
                "bedrock_sigv4__aws_secret_access_key": "wJalrXUtnFEMI",
                "bedrock_sigv4__aws_session_token": "",
                "bedrock_sigv4__aws_region": "us-east-1",
            },
            {
                "auth_mode": "sigv4",
                "aws_access_key_id": "AKIAEXAMPLE",
                "aws_secret_access_key": "wJalrXUtnFEMI",
                "aws_region": "us-east-1",
            },
        ),
        (
            "apikey",
            {"bedrock_apikey__api_key": "bedrock-key-1", "bedrock_apikey__aws_region": "eu-west-3"},
            {"auth_mode": "apikey", "api_key": "bedrock-key-1", "aws_region": "eu-west-3"},
        ),
    ],
)
def test_bedrock_is_one_form_with_an_auth_mode(staff_client, mode, fields, expected):
    response = staff_client.post(
        "/accounts/new", account_data(name="aws", type="bedrock", auth_mode=mode, **fields)
    )
    assert response.status_code == 302
    account = UpstreamAccount.objects.get(name="aws")
    assert (account.platform, account.type, account.platform_badge) == (
        "anthropic",
        "bedrock",
        "Anthropic | AWS",
    )
    assert upstream_account_credentials(account) == expected


def test_bedrock_needs_a_valid_region(staff_client):
    page = staff_client.post(
        "/accounts/new",
        account_data(
            type="bedrock", auth_mode="apikey", bedrock_apikey__api_key="k", bedrock_apikey__aws_region="Mars"
        ),
    ).content.decode()
    assert "is not an AWS region name like us-east-1" in page


@pytest.mark.parametrize("account_type", ["bedrock", "setup-token"])
def test_anthropic_only_types_are_refused_on_other_platforms(staff_client, account_type):
    page = staff_client.post(
        "/accounts/new", account_data(platform="openai", type=account_type, setup_token__setup_token="x")
    ).content.decode()
    assert "accounts exist only on the Anthropic platform." in page
    assert not UpstreamAccount.objects.exists()


def test_secrets_are_never_rendered_and_a_blank_one_keeps_the_stored_value(staff_client):
    account = with_credentials(
        UpstreamAccountFactory(name="relay", type="upstream"),
        {"api_key": "sk-very-secret", "base_url": "https://relay.example.com"},
    )
    page = staff_client.get(f"/accounts/{account.pk}/").content.decode()
    assert "sk-very-secret" not in page
    assert 'value="https://relay.example.com"' in page  # not a secret: shown for editing
    assert "Stored; leave blank to keep it" in page

    response = staff_client.post(
        f"/accounts/{account.pk}/",
        account_data(
            name="relay", type="upstream", upstream__api_key="", upstream__base_url="https://r2.example.com"
        ),
    )
    assert response.status_code == 302
    account.refresh_from_db()
    assert upstream_account_credentials(account) == {
        "api_key": "sk-very-secret",
        "base_url": "https://r2.example.com",
    }

    staff_client.post(
        f"/accounts/{account.pk}/",
        account_data(
            name="relay",
            type="upstream",
            upstream__api_key="sk-new",
            upstream__base_url="https://r2.example.com",
        ),
    )
    account.refresh_from_db()
    assert upstream_account_credentials(account)["api_key"] == "sk-new"


def test_changing_the_type_needs_new_secrets(staff_client):
    account = with_credentials(UpstreamAccountFactory(name="a"), {"api_key": "sk-old"})
    page = staff_client.post(
        f"/accounts/{account.pk}/",
        account_data(name="a", type="bedrock", auth_mode="apikey", bedrock_apikey__aws_region="us-west-2"),
    ).content.decode()
    assert "Enter the bedrock api key." in page
    account.refresh_from_db()
    assert account.type == "apikey"


def test_the_session_token_can_be_removed(staff_client):
    stored = {
        "auth_mode": "sigv4",
        "aws_access_key_id": "AKIA",
        "aws_secret_access_key": "secret",
        "aws_session_token": "session",
        "aws_region": "us-east-1",
    }
    account = with_credentials(UpstreamAccountFactory(name="aws", type="bedrock"), stored)
    staff_client.post(
        f"/accounts/{account.pk}/",
        account_data(
            name="aws", type="bedrock", bedrock_sigv4__aws_region="us-east-1", clear_session_token="on"
        ),
    )
    account.refresh_from_db()
    assert upstream_account_credentials(account) == {
        k: v for k, v in stored.items() if k != "aws_session_token"
    }


def test_editing_never_touches_used_amounts_or_window_starts(staff_client):
    start = timezone.now() - timedelta(hours=2)
    account = with_credentials(
        UpstreamAccountFactory(
            name="a",
            quota_used_usd=Decimal("7"),
            quota_daily_used_usd=Decimal("3"),
            quota_daily_start=start,
            quota_weekly_used_usd=Decimal("5"),
            quota_weekly_start=start,
        ),
        {"api_key": "sk"},
    )
    staff_client.post(
        f"/accounts/{account.pk}/",
        account_data(
            name="a",
            quota_daily_limit_usd="10",
            quota_daily_reset_mode="fixed",
            quota_daily_reset_hour="9",
            quota_used_usd="0",
            quota_daily_used_usd="0",
            quota_daily_start="",
        ),
    )
    account.refresh_from_db()
    assert account.quota_daily_limit_usd == Decimal("10") and account.quota_daily_reset_hour == 9
    assert (account.quota_used_usd, account.quota_daily_used_usd, account.quota_weekly_used_usd) == (7, 3, 5)
    assert account.quota_daily_start == start and account.quota_weekly_start == start


def test_the_quota_timezone_must_be_an_iana_name(staff_client):
    page = staff_client.post(
        "/accounts/new", account_data(quota_timezone="CEST", apikey__api_key="k")
    ).content.decode()
    assert "&#x27;CEST&#x27; is not an IANA timezone name" in page


def test_the_cache_ttl_override_is_only_for_anthropic_oauth_and_setup_token(staff_client):
    page = staff_client.post(
        "/accounts/new", account_data(cache_ttl_override="1h", apikey__api_key="k")
    ).content.decode()
    assert "only for Anthropic OAuth and setup-token accounts" in page
    response = staff_client.post(
        "/accounts/new",
        account_data(
            type="oauth", cache_ttl_override="1h", oauth__access_token="at", oauth__refresh_token="rt"
        ),
    )
    assert response.status_code == 302
    assert UpstreamAccount.objects.get().cache_ttl_override == "1h"


def test_an_account_joins_only_groups_of_its_platform(staff_client):
    openai_group = GroupFactory(name="gpt-pool", platform="openai")
    page = staff_client.post(
        "/accounts/new", account_data(groups=[openai_group.pk], apikey__api_key="k")
    ).content.decode()
    assert "not gpt-pool" in page


# --- Row actions -------------------------------------------------------------------------------


def test_the_reset_dialog_names_the_three_amounts_and_zeroes_them(staff_client):
    account = UpstreamAccountFactory(
        quota_limit_usd=Decimal("100"),
        quota_daily_limit_usd=Decimal("10"),
        quota_weekly_limit_usd=Decimal("50"),
        quota_used_usd=Decimal("42.5"),
        quota_daily_used_usd=Decimal("3.25"),
        quota_daily_start=timezone.now(),
        quota_weekly_used_usd=Decimal("12"),
        quota_weekly_start=timezone.now(),
    )
    dialog = staff_client.get(f"/accounts/{account.pk}/reset-quota").content.decode()
    assert "<dialog" in dialog
    assert "$3.25" in dialog and "$12.00" in dialog and "$42.50" in dialog
    response = staff_client.post(f"/accounts/{account.pk}/reset-quota", headers={"HX-Request": "true"})
    assert response.status_code == 204
    events = json.loads(response["HX-Trigger"])
    assert events["dialog:close"] is True and events[f"account-{account.pk}-changed"] is True
    account.refresh_from_db()
    assert (account.quota_used_usd, account.quota_daily_used_usd, account.quota_weekly_used_usd) == (0, 0, 0)
    assert account.quota_daily_start is None and account.quota_weekly_start is None


def test_the_reset_dialog_shows_an_expired_period_as_zero(staff_client):
    account = UpstreamAccountFactory(
        quota_limit_usd=Decimal("20"),
        quota_daily_limit_usd=Decimal("10"),
        quota_used_usd=Decimal("9"),
        quota_daily_used_usd=Decimal("9"),
        quota_daily_start=datetime(2020, 1, 1, tzinfo=UTC),
    )
    dialog = staff_client.get(f"/accounts/{account.pk}/reset-quota").content.decode()
    assert 'Daily used</dt><dd class="col-7 money">$0.00' in dialog
    assert 'Total used</dt><dd class="col-7 money">$9.00' in dialog


def test_the_reset_dialog_lists_only_the_quotas_the_account_has(staff_client):
    account = UpstreamAccountFactory(
        quota_weekly_limit_usd=Decimal("50"),
        quota_used_usd=Decimal("7"),
        quota_weekly_used_usd=Decimal("7"),
        quota_weekly_start=timezone.now(),
    )
    dialog = staff_client.get(f"/accounts/{account.pk}/reset-quota").content.decode()
    assert (
        'Weekly used</dt><dd class="col-7 money">$7.00 <span class="text-body-secondary">of $50.00' in dialog
    )
    assert "Daily" not in dialog and "Total used" not in dialog
    bare = UpstreamAccountFactory(name="bare", quota_used_usd=Decimal("3"))
    dialog = staff_client.get(f"/accounts/{bare.pk}/reset-quota").content.decode()
    assert (
        'bare has no quota set. Its running total, <span class="money">$3.00</span>, goes back to $0.'
        in dialog
    )
    assert "Daily" not in dialog and "Weekly" not in dialog


def test_toggling_schedulable_swaps_the_switch_and_refreshes_the_badge(staff_client):
    account = UpstreamAccountFactory(schedulable=True)
    response = staff_client.post(f"/accounts/{account.pk}/schedulable", {}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and "checked" not in response.content.decode()
    assert json.loads(response["HX-Trigger"]) == {f"account-{account.pk}-changed": True}
    account.refresh_from_db()
    assert account.schedulable is False
    staff_client.post(
        f"/accounts/{account.pk}/schedulable", {"schedulable": "on"}, headers={"HX-Request": "true"}
    )
    account.refresh_from_db()
    assert account.schedulable is True


def test_clearing_an_error_makes_the_account_active_again(staff_client):
    account = UpstreamAccountFactory(status="error", error_message="invalid x-api-key")
    response = staff_client.post(f"/accounts/{account.pk}/clear-error", headers={"HX-Request": "true"})
    assert response.status_code == 200 and "Active" in response.content.decode()
    assert f"account-{account.pk}-changed" in response["HX-Trigger"]
    account.refresh_from_db()
    assert (account.status, account.error_message) == ("active", "")


def test_clearing_an_error_leaves_an_inactive_account_alone(staff_client):
    account = UpstreamAccountFactory(status="inactive")
    staff_client.post(f"/accounts/{account.pk}/clear-error")
    account.refresh_from_db()
    assert account.status == "inactive"


def test_deleting_an_account_takes_it_out_of_routing(staff_client):
    group = GroupFactory()
    gone = GroupAccountFactory(group=group).account
    kept = GroupAccountFactory(group=group).account
    group.model_routing = {"claude-*": [gone.pk, kept.pk]}
    group.save()
    response = staff_client.post(f"/accounts/{gone.pk}/delete", headers={"HX-Request": "true"})
    assert response.status_code == 204
    assert not UpstreamAccount.objects.filter(pk=gone.pk).exists()
    group.refresh_from_db()
    assert group.model_routing == {"claude-*": [kept.pk]}


# --- Key rotation --------------------------------------------------------------------------------


def test_rotate_credentials_re_encrypts_every_account_with_the_first_key(settings):
    settings.CREDENTIALS_KEYS = ["old-key"]
    account = with_credentials(UpstreamAccountFactory(), {"api_key": "sk-1"})
    UpstreamAccountFactory(credentials_encrypted="")
    settings.CREDENTIALS_KEYS = ["new-key", "old-key"]
    out = io.StringIO()
    call_command("rotate_credentials", stdout=out)
    assert "Re-encrypted 1 account" in out.getvalue()
    settings.CREDENTIALS_KEYS = ["new-key"]
    account.refresh_from_db()
    assert decrypt_credentials(account.credentials_encrypted) == {"api_key": "sk-1"}


def test_the_edit_form_shows_amounts_as_plain_numbers(staff_client):
    account = UpstreamAccountFactory(
        quota_daily_limit_usd=Decimal("10.50000000"), quota_limit_usd=Decimal("100")
    )
    account.refresh_from_db()
    page = staff_client.get(f"/accounts/{account.pk}/").content.decode()
    assert (
        'value="10.5"' in page and 'value="100"' in page and 'name="quota_weekly_limit_usd" value="0"' in page
    )
    assert "E-8" not in page and "E+2" not in page


# --- The models an account serves (docs/gateway.md#account-choice) ---------------------------------


def test_the_models_an_account_serves_and_their_mapping_are_saved_and_shown(staff_client):
    response = staff_client.post(
        "/accounts/new",
        account_data(
            apikey__api_key="sk-ant-1",
            supported_models="claude-sonnet-4-6\n\nclaude-opus-*\nclaude-sonnet-4-6\n",
            model_mapping="claude-sonnet-4-6 → claude-sonnet-4-6-20260101\nclaude-opus-* -> claude-opus-4-1",
        ),
    )
    assert response.status_code == 302
    account = UpstreamAccount.objects.get(name="anthropic-main")
    assert account.supported_models == ["claude-sonnet-4-6", "claude-opus-*"]
    assert account.model_mapping == {
        "claude-sonnet-4-6": "claude-sonnet-4-6-20260101",
        "claude-opus-*": "claude-opus-4-1",
    }
    page = staff_client.get(f"/accounts/{account.pk}/").content.decode()
    assert "claude-sonnet-4-6\nclaude-opus-*</textarea>" in page
    mapping = page.split('id="id_model_mapping">')[1].split("</textarea>")[0]
    # jsonb keeps its own key order; the order of a mapping never matters (exact beats prefix).
    assert sorted(mapping.strip().splitlines()) == [
        "claude-opus-* → claude-opus-4-1",
        "claude-sonnet-4-6 → claude-sonnet-4-6-20260101",
    ]


def test_bad_model_lines_are_named_and_nothing_is_saved(staff_client):
    page = staff_client.post(
        "/accounts/new",
        account_data(
            name="kept",
            apikey__api_key="sk-ant-1",
            supported_models="claude *\nclaude-*-x",
            model_mapping="claude-a\nclaude-b → claude-*\nclaude-c → x\nclaude-c → y",
        ),
    ).content.decode()
    assert "Line 1: “claude *” contains a space." in page
    assert "Line 2: “claude-*-x” may only end in one * (a prefix)." in page
    assert "Line 1: “claude-a” needs an arrow: source → target." in page
    assert "Line 2: “claude-b → claude-*” is a pattern, not a model name." in page
    assert "Line 4: “claude-c” is mapped twice." in page
    assert 'value="kept"' in page and "claude-*-x</textarea>" in page
    assert not UpstreamAccount.objects.exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate_multiplier", "0", "The rate multiplier must be greater than 0."),
        ("rate_multiplier", "-1", "The rate multiplier must be greater than 0."),
        ("priority", "-1", "Ensure this value is greater than or equal to 0."),
        ("priority", "10001", "Ensure this value is less than or equal to 10000."),
    ],
)
def test_a_rate_multiplier_must_be_above_zero_and_the_priority_in_its_range(
    staff_client, field, value, message
):
    page = staff_client.post(
        "/accounts/new", account_data(**{field: value, "apikey__api_key": "sk-ant-1"})
    ).content.decode()
    assert message in page
    assert "A whole number from 0 to 10,000; lower is preferred." in page
    assert not UpstreamAccount.objects.exists()


def test_the_services_refuse_a_zero_multiplier_and_a_negative_priority_too():
    from django.core.exceptions import ValidationError

    from accounts.services.upstream import upstream_account_create

    fields = {
        "name": "x",
        "platform": "anthropic",
        "type": "apikey",
        "rate_multiplier": Decimal(0),
        "priority": -1,
    }
    with pytest.raises(ValidationError) as refused:
        upstream_account_create(fields=fields, credentials={"api_key": "k"}, actor=None)
    assert set(refused.value.message_dict) == {"rate_multiplier", "priority"}


def test_an_expiry_in_the_past_is_refused_and_an_expired_account_reads_expired(staff_client):
    past = (timezone.localtime() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page = staff_client.post(
        "/accounts/new", account_data(expires_at=past, apikey__api_key="sk-ant-1")
    ).content.decode()
    assert "Choose a time in the future, or leave it empty for an account that never expires." in page
    assert not UpstreamAccount.objects.exists()

    account = UpstreamAccountFactory(name="lapsed", expires_at=timezone.now() - timedelta(hours=1))
    listing = staff_client.get("/accounts/").content.decode()
    status = listing[listing.index(f'id="account-status-{account.pk}"') :]
    assert 'class="badge badge-status-expired"' in status[:400] and ">Expired<" in status[:400]
    edit = staff_client.get(f"/accounts/{account.pk}/").content.decode()
    assert ">Expired<" in edit[: edit.index("</h1>")]
    # Saving it untouched keeps the stored (past) expiry rather than refusing the form.
    stored = timezone.localtime(account.expires_at).strftime("%Y-%m-%dT%H:%M")
    response = staff_client.post(
        f"/accounts/{account.pk}/", account_data(name="lapsed", expires_at=stored, apikey__api_key="k")
    )
    assert response.status_code == 302


def test_a_refused_form_keeps_the_api_key_typed_into_it_and_is_not_cached(staff_client):
    response = staff_client.post(
        "/accounts/new", account_data(name="", apikey__api_key="sk-ant-typed-1234", rate_multiplier="2")
    )
    page = response.content.decode()
    assert "This field is required." in page and not UpstreamAccount.objects.exists()
    assert 'value="sk-ant-typed-1234"' in page
    assert "no-store" in response["Cache-Control"]
    assert 'value="sk-ant-typed-1234"' not in staff_client.get("/accounts/new").content.decode()


def test_last_used_names_its_timezone_and_breaks_only_between_date_and_time(staff_client, settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    UpstreamAccountFactory(name="busy", last_used_at=datetime(2026, 11, 25, 5, 4, tzinfo=UTC))
    page = staff_client.get("/accounts/").content.decode()
    assert (
        '<time datetime="2026-11-25T05:04:00+00:00"><span class="text-nowrap">2026-11-25</span> '
        '<span class="text-nowrap">14:04 JST</span></time>'
    ) in page
