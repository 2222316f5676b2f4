"""Staff roles: who each role is, what the services refuse whoever calls them, and that pages offer
only what the signed-in role may do (docs/console.md#roles). The URL walk for every role is in
tests/console/test_staff_only.py."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.utils import timezone

from accounts.models import APIKey, BalanceHistory, Group, SignInCounter, UpstreamAccount, User
from accounts.roles import ConsoleRole, console_role_of, has_console_role, may
from accounts.services import groups as group_services
from accounts.services import upstream as account_services
from accounts.services import users as user_services
from channels import services as channel_services
from channels.models import Channel
from console import throttle
from tests.factories import (
    APIKeyFactory,
    ChannelFactory,
    GroupFactory,
    StaffFactory,
    UpstreamAccountFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

VIEWER, OPERATOR, ADMIN = ConsoleRole.VIEWER, ConsoleRole.OPERATOR, ConsoleRole.ADMIN


def signed_in(role: str, **fields) -> tuple[Client, User]:
    staff = StaffFactory(console_role=role, **fields)
    client = Client()
    client.force_login(staff)
    return client, staff


# --- Who holds which role -----------------------------------------------------------------------


def test_a_staff_member_holds_their_console_role_and_a_superuser_is_always_an_admin():
    assert console_role_of(StaffFactory(console_role=VIEWER)) == VIEWER
    assert console_role_of(StaffFactory(console_role=OPERATOR)) == OPERATOR
    assert console_role_of(StaffFactory(console_role=VIEWER, is_superuser=True)) == ADMIN


def test_customers_and_disabled_staff_hold_no_role():
    assert console_role_of(UserFactory(console_role=ADMIN)) is None
    assert console_role_of(StaffFactory(console_role=ADMIN, is_active=False)) is None
    assert not has_console_role(UserFactory(console_role=ADMIN), VIEWER)


def test_each_role_includes_the_ones_below_it():
    operator = StaffFactory(console_role=OPERATOR)
    assert has_console_role(operator, VIEWER) and has_console_role(operator, OPERATOR)
    assert not has_console_role(operator, ADMIN)


def test_new_staff_start_as_viewers():
    made_staff = User.objects.create_user(email="new@tollgate.test", password="x", is_staff=True)
    assert console_role_of(made_staff) == VIEWER
    assert User.objects.create_superuser(email="root@tollgate.test", password="x").console_role == ADMIN


# --- Services refuse, whoever calls them -------------------------------------------------------


def lock(value: str) -> SignInCounter:
    now = timezone.now()
    return SignInCounter.objects.create(
        kind="username",
        value=value,
        attempts=9,
        window_ends_at=now + timedelta(minutes=5),
        last_attempt_at=now,
    )


# Each case: (make the rows it acts on, act as `actor` on them).
ADMIN_ONLY_SERVICES = {
    "upstream_account_create": (
        lambda: None,
        lambda _, actor: account_services.upstream_account_create(
            fields={"name": "new", "platform": "anthropic", "type": "apikey"},
            credentials={"api_key": "sk-new"},
            actor=actor,
        ),
    ),
    "upstream_account_update": (
        UpstreamAccountFactory,
        lambda account, actor: account_services.upstream_account_update(
            account=account, fields={"name": "renamed"}, credentials={"api_key": "sk-stolen"}, actor=actor
        ),
    ),
    "upstream_account_delete": (
        UpstreamAccountFactory,
        lambda account, actor: account_services.upstream_account_delete(account=account, actor=actor),
    ),
    "group_create": (
        lambda: None,
        lambda _, actor: group_services.group_create(
            fields={"name": "new", "platform": "anthropic"}, actor=actor
        ),
    ),
    "group_update": (
        GroupFactory,
        lambda group, actor: group_services.group_update(
            group=group, fields={"rate_multiplier": Decimal("0.5")}, actor=actor
        ),
    ),
    "group_delete": (
        GroupFactory,
        lambda group, actor: group_services.group_delete(group=group, actor=actor),
    ),
    "group_delete_rebinding_keys": (
        lambda: (GroupFactory(), GroupFactory()),
        lambda groups, actor: group_services.group_delete_rebinding_keys(
            group=groups[0], target_group_id=groups[1].pk, actor=actor
        ),
    ),
    "channel_create": (
        lambda: None,
        lambda _, actor: channel_services.channel_create(fields={"name": "new"}, actor=actor),
    ),
    "channel_update": (
        ChannelFactory,
        lambda channel, actor: channel_services.channel_update(
            channel=channel, fields={"name": "x"}, group_ids=[], cards=[], mapping=[], actor=actor
        ),
    ),
    "channel_delete": (
        ChannelFactory,
        lambda channel, actor: channel_services.channel_delete(channel=channel, actor=actor),
    ),
    "lockout_lift": (
        lambda: lock("a@x.com"),
        lambda _, actor: throttle.lockout_lift(kind="username", value="a@x.com", actor=actor),
    ),
}


def stored_rows() -> dict:
    models = (UpstreamAccount, Group, Channel, APIKey, SignInCounter)
    return {model.__name__: list(model.objects.order_by("pk").values()) for model in models}


@pytest.mark.parametrize("service", sorted(ADMIN_ONLY_SERVICES))
@pytest.mark.parametrize("role", [VIEWER, OPERATOR])
def test_an_admin_only_service_refuses_anyone_below_admin_and_changes_nothing(service, role):
    prepare, act = ADMIN_ONLY_SERVICES[service]
    rows = prepare()
    before = stored_rows()
    with pytest.raises(PermissionDenied, match="Only an admin can"):
        act(rows, StaffFactory(console_role=role))
    assert stored_rows() == before


@pytest.mark.parametrize("service", sorted(ADMIN_ONLY_SERVICES))
@pytest.mark.parametrize("actor", ["admin", "system"])
def test_an_admin_only_service_runs_for_an_admin_and_for_the_system(service, actor):
    prepare, act = ADMIN_ONLY_SERVICES[service]
    rows = prepare()
    before = stored_rows()
    act(rows, StaffFactory(console_role=ADMIN) if actor == "admin" else None)  # None: commands, demo, jobs
    assert stored_rows() != before


def test_a_customer_passed_as_actor_is_refused_too():
    with pytest.raises(PermissionDenied):
        group_services.group_create(fields={"name": "x", "platform": "anthropic"}, actor=UserFactory())


# --- Staff records are for admins --------------------------------------------------------------


STAFF_RECORD_CHANGES = {
    "user_update": lambda target, actor: user_services.user_update(
        user=target, fields={"notes": "changed"}, actor=actor
    ),
    "user_set_status": lambda target, actor: user_services.user_set_status(
        user=target, status="disabled", actor=actor
    ),
    "user_balance_adjust": lambda target, actor: user_services.user_balance_adjust(
        user_id=target.pk, operation="add", amount=Decimal("5"), note="", changed_by=actor
    ),
    "user_group_rate_set": lambda target, actor: user_services.user_group_rate_set(
        user=target, group_id=GroupFactory().pk, rate_multiplier=Decimal("0.5"), actor=actor
    ),
    "user_group_rate_remove": lambda target, actor: user_services.user_group_rate_remove(
        user=target, rate_id=0, actor=actor
    ),
}


@pytest.mark.parametrize("change", sorted(STAFF_RECORD_CHANGES))
def test_an_operator_changes_customers_but_not_staff_nor_their_own_record(change):
    operator = StaffFactory(console_role=OPERATOR)
    STAFF_RECORD_CHANGES[change](UserFactory(), operator)
    for target in (StaffFactory(console_role=VIEWER), StaffFactory(is_superuser=True), operator):
        balance = User.objects.get(pk=target.pk).balance
        with pytest.raises(PermissionDenied, match="Only an admin can"):
            STAFF_RECORD_CHANGES[change](target, operator)
        stored = User.objects.get(pk=target.pk)
        assert (stored.balance, stored.status, stored.notes) == (balance, "active", "")


@pytest.mark.parametrize("change", sorted(STAFF_RECORD_CHANGES))
def test_an_admin_changes_staff_and_superusers(change):
    admin = StaffFactory(console_role=ADMIN)
    STAFF_RECORD_CHANGES[change](StaffFactory(console_role=OPERATOR), admin)
    STAFF_RECORD_CHANGES[change](StaffFactory(is_superuser=True), admin)


def test_only_an_admin_gives_console_access():
    operator = StaffFactory(console_role=OPERATOR)
    for fields in ({"is_staff": True}, {"is_superuser": True}):
        with pytest.raises(PermissionDenied, match="Only an admin can give console access"):
            user_services.user_create(
                email="x@example.com", password="pw-long-enough-1", fields=fields, actor=operator
            )
    assert not User.objects.filter(email="x@example.com").exists()
    customer = UserFactory()
    with pytest.raises(PermissionDenied, match="Only an admin can change console access"):
        user_services.user_update(
            user=customer, fields={"is_staff": True, "console_role": VIEWER}, actor=operator
        )
    assert not User.objects.get(pk=customer.pk).is_staff

    admin = StaffFactory(console_role=ADMIN)
    user_services.user_update(user=customer, fields={"is_staff": True, "console_role": OPERATOR}, actor=admin)
    assert console_role_of(User.objects.get(pk=customer.pk)) == OPERATOR


def test_an_admin_cannot_change_their_own_console_access():
    admin = StaffFactory(console_role=ADMIN)
    with pytest.raises(ValidationError, match="You cannot change your own console access."):
        user_services.user_update(user=admin, fields={"is_staff": True, "console_role": VIEWER}, actor=admin)
    assert User.objects.get(pk=admin.pk).console_role == ADMIN
    # The same fields unchanged are just a save.
    user_services.user_update(
        user=admin, fields={"is_staff": True, "console_role": ADMIN, "notes": "me"}, actor=admin
    )


def test_nobody_disables_themselves():
    admin = StaffFactory(console_role=ADMIN)
    with pytest.raises(ValidationError, match="You cannot disable your own account."):
        user_services.user_set_status(user=admin, status="disabled", actor=admin)


def test_taking_console_access_away_forgets_the_role():
    staff = StaffFactory(console_role=ADMIN)
    user_services.user_update(user=staff, fields={"is_staff": False}, actor=StaffFactory(console_role=ADMIN))
    staff.refresh_from_db()
    assert (staff.is_staff, staff.console_role) == (False, VIEWER)  # made staff again, they start as viewers


# --- The user form -----------------------------------------------------------------------------


def user_post(user: User, **changes) -> dict:
    data = {
        "email": user.email,
        "username": user.username,
        "status": user.status,
        "concurrency": user.concurrency,
        "rpm_limit": user.rpm_limit,
        "console_access": user.console_access or "none",
        "notes": user.notes,
    }
    return {**data, **changes}


def test_an_admin_makes_a_customer_an_operator_on_the_user_form():
    client, _ = signed_in(ADMIN)
    customer = UserFactory()
    response = client.post(f"/users/{customer.pk}/", user_post(customer, console_access="operator"))
    assert response.status_code == 302
    customer.refresh_from_db()
    assert (customer.is_staff, customer.console_role) == (True, OPERATOR)
    page = client.get("/users/", {"access": "operator"}).content.decode()
    assert customer.email in page and "role-badge role-operator" in page


def test_giving_access_to_a_user_without_a_password_warns_that_they_cannot_sign_in():
    client, _ = signed_in(ADMIN)
    customer = UserFactory()
    customer.set_unusable_password()
    customer.save()
    response = client.post(
        f"/users/{customer.pk}/", user_post(customer, console_access="viewer"), follow=True
    )
    assert "has no password yet, so cannot sign in: set one in Django admin." in response.content.decode()
    assert User.objects.get(pk=customer.pk).is_staff


def test_an_admin_creates_a_viewer_with_a_password():
    client, _ = signed_in(ADMIN)
    response = client.post(
        "/users/new",
        {
            "email": "watcher@tollgate.test",
            "password": "a-long-enough-password-1",
            "status": "active",
            "concurrency": 5,
            "rpm_limit": 0,
            "console_access": "viewer",
        },
    )
    assert response.status_code == 302
    created = User.objects.get(email="watcher@tollgate.test")
    assert (created.is_staff, created.console_role) == (True, VIEWER)


def test_a_form_without_the_console_access_field_is_refused_rather_than_demoting_anyone():
    client, _ = signed_in(ADMIN)
    operator = StaffFactory(console_role=OPERATOR)
    data = user_post(operator)
    del data["console_access"]
    response = client.post(f"/users/{operator.pk}/", data)
    assert response.status_code == 200
    assert "Choose the console access" in response.content.decode()
    assert console_role_of(User.objects.get(pk=operator.pk)) == OPERATOR


def test_an_operator_sees_console_access_locked_and_cannot_post_it():
    client, _ = signed_in(OPERATOR)
    customer = UserFactory()
    page = client.get(f"/users/{customer.pk}/").content.decode()
    assert "Only an admin gives or changes console access." in page
    assert 'value="admin" class="form-check-input" id="id_console_access_3" required disabled' in page
    # A hand-made POST: the locked field keeps the saved value, the rest is saved.
    response = client.post(f"/users/{customer.pk}/", user_post(customer, console_access="admin", notes="ok"))
    assert response.status_code == 302
    customer.refresh_from_db()
    assert (customer.is_staff, customer.notes) == (False, "ok")


def test_an_operator_reads_a_staff_member_but_every_change_answers_403():
    client, _ = signed_in(OPERATOR)
    admin = StaffFactory(console_role=ADMIN)
    page = client.get(f"/users/{admin.pk}/").content.decode()
    assert "Read only: only an admin can change a staff member. You are an operator." in page
    assert "Adjust balance" not in page and "Save changes" not in page and "<fieldset disabled>" in page
    for method, path in [
        ("post", f"/users/{admin.pk}/"),
        ("get", f"/users/{admin.pk}/balance"),
        ("post", f"/users/{admin.pk}/balance"),
        ("get", f"/users/{admin.pk}/status"),
        ("post", f"/users/{admin.pk}/status"),
        ("post", f"/users/{admin.pk}/rates"),
        ("post", f"/users/{admin.pk}/rates/1/remove"),
    ]:
        assert getattr(client, method)(path).status_code == 403, (method, path)
    assert User.objects.get(pk=admin.pk).is_active
    assert not BalanceHistory.objects.filter(user=admin).exists()


def test_a_viewer_reads_a_customer_without_a_single_action():
    client, _ = signed_in(VIEWER)
    customer = UserFactory()
    page = client.get(f"/users/{customer.pk}/").content.decode()
    assert "Read only: only an operator or admin can change this user. You are a viewer." in page
    for action in ("Adjust balance", "bi-slash-circle", "Save changes", 'hx-post="', ">Set</button>"):
        assert action not in page, action


def test_the_users_list_shows_each_role_and_filters_by_it(django_assert_max_num_queries):
    client, me = signed_in(ADMIN)
    viewer = StaffFactory(console_role=VIEWER, email="v@tollgate.test")
    root = StaffFactory(console_role=VIEWER, is_superuser=True, email="root@tollgate.test")
    UserFactory.create_batch(60)
    with django_assert_max_num_queries(6):
        page = client.get("/users/", {"per_page": 100}).content.decode()
    table = page[page.index('id="user-table"') :]
    assert table.count("role-badge role-admin") == 2  # me, and the superuser whatever is stored
    assert table.count("role-badge role-viewer") == 1
    assert 'title="Superuser: always an admin"' in page

    def listed(access: str) -> str:
        page = client.get("/users/", {"access": access}).content.decode()
        return page[page.index('id="user-table"') :]

    assert (
        me.email in listed("admin") and root.email in listed("admin") and viewer.email not in listed("admin")
    )
    assert viewer.email in listed("viewer") and root.email not in listed("viewer")
    assert me.email not in listed("none") and "@example.com" in listed("none")


# --- Pages offer only what the role may do -----------------------------------------------------


def test_templates_ask_the_same_policy_the_views_enforce():
    operator = StaffFactory(console_role=OPERATOR)
    assert may(operator, "accounts:key-delete") and may(operator, "accounts:account-schedulable")
    assert not may(operator, "accounts:account-edit") and not may(operator, "channels:channel-delete")
    assert may(operator, "accounts:account-edit", method="GET")
    assert not may(StaffFactory(console_role=VIEWER), "accounts:key-delete")


def test_an_operator_gets_row_actions_but_not_credentials_or_deletes_on_the_accounts_list():
    client, _ = signed_in(OPERATOR)
    account = UpstreamAccountFactory(status="error", error_message="boom")
    page = client.get("/accounts/").content.decode()
    assert f'hx-post="/accounts/{account.pk}/schedulable"' in page
    assert f'hx-post="/accounts/{account.pk}/clear-error"' in page
    assert f'hx-get="/accounts/{account.pk}/reset-quota"' in page
    assert "/accounts/new" not in page and f"/accounts/{account.pk}/delete" not in page
    form = client.get(f"/accounts/{account.pk}/").content.decode()
    assert "Read only: only an admin can change upstream accounts and their credentials." in form
    assert "Save changes" not in form and "<fieldset disabled>" in form


def test_a_viewer_sees_the_schedulable_switch_without_being_able_to_use_it():
    client, _ = signed_in(VIEWER)
    account = UpstreamAccountFactory(status="error")
    page = client.get("/accounts/").content.decode()
    assert f'id="schedulable-{account.pk}" checked disabled' in page
    assert "hx-post" not in page and "Clear error" not in page


def test_a_viewer_gets_no_key_actions_and_a_read_only_key_page():
    client, _ = signed_in(VIEWER)
    key = APIKeyFactory()
    page = client.get("/keys/").content.decode()
    assert "New key" not in page and f"/keys/{key.pk}/delete" not in page
    assert f'href="/keys/{key.pk}/" title="View"' in page
    detail = client.get(f"/keys/{key.pk}/").content.decode()
    assert "Reset quota" not in detail and "Save changes" not in detail and "data-expiry-days" not in detail


def test_only_an_admin_sees_the_channel_form_unlocked_and_the_django_admin_link():
    channel = ChannelFactory()
    for role, editable in ((VIEWER, False), (OPERATOR, False), (ADMIN, True)):
        client, _ = signed_in(role)
        page = client.get(f"/channels/{channel.pk}/").content.decode()
        assert ("Add pricing card" in page) is editable, role
        assert ("data-pricing-defaults-url" in page) is editable, role
        assert ("/django-admin/" in page) is editable, role
        assert f'Role: <span class="badge role-badge role-{role}">{role.label}</span>' in page, role


def test_only_an_admin_gets_the_unlock_button():
    lock("a@x.com")
    for role, offered in ((VIEWER, False), (OPERATOR, False), (ADMIN, True)):
        client, _ = signed_in(role)
        page = client.get("/sign-in-locks/").content.decode()
        assert "a@x.com" in page
        assert ("Unlock<span" in page) is offered, role


def test_groups_are_read_only_below_admin_and_reordered_by_operators():
    group = GroupFactory()
    client, _ = signed_in(OPERATOR)
    page = client.get("/groups/").content.decode()
    assert 'id="group-order"' in page and "New group" not in page
    assert "Edit" not in client.get(f"/groups/{group.pk}/").content.decode()
    client, _ = signed_in(VIEWER)
    page = client.get("/groups/").content.decode()
    assert 'id="group-order"' not in page and "drag-handle" not in page and group.name in page


def test_a_refused_htmx_request_says_why_in_a_toast():
    client, _ = signed_in(VIEWER)
    key = APIKeyFactory()
    response = client.post(f"/keys/{key.pk}/delete", headers={"HX-Request": "true"})
    assert response.status_code == 403
    assert "Only an operator or admin can do this; you are a viewer." in response["HX-Trigger"]
    assert APIKey.objects.filter(pk=key.pk).exists()


# --- The migration -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_every_existing_staff_member_an_admin_and_nobody_else():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = ("accounts", "0005_upstream_account_models"), ("accounts", "0006_console_role")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    try:
        OldUser = executor.loader.project_state([before]).apps.get_model("accounts", "User")
        for email, staff, superuser in [
            ("staff@x.test", True, False),
            ("root@x.test", True, True),
            ("customer@x.test", False, False),
        ]:
            OldUser.objects.create(email=email, username=email, is_staff=staff, is_superuser=superuser)
    finally:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([after])
        # Then on to the latest state, where the rest of the suite expects the database to be.
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
    roles = dict(User.objects.values_list("email", "console_role"))
    assert roles == {"staff@x.test": ADMIN, "root@x.test": ADMIN, "customer@x.test": VIEWER}


def test_django_admin_shows_and_filters_the_console_role():
    client, _ = signed_in(ADMIN)
    operator = StaffFactory(console_role=OPERATOR)
    page = client.get(f"/django-admin/accounts/user/{operator.pk}/change/").content.decode()
    assert 'name="console_role"' in page and '<option value="operator" selected>' in page
    listed = client.get("/django-admin/accounts/user/", {"console_role__exact": "operator"}).content.decode()
    assert operator.email in listed
