"""factory_boy factories for every model. Later issues add theirs here."""

from __future__ import annotations

from decimal import Decimal

import factory
from factory.django import DjangoModelFactory

from accounts.models import BalanceHistory, Group, UpstreamAccount, User

STAFF_PASSWORD = "correct-horse-battery-staple"


class UserFactory(DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    username = factory.Sequence(lambda n: f"User {n}")
    role = User.Role.USER
    status = User.Status.ACTIVE
    balance = Decimal("10.00000000")
    password = factory.PostGenerationMethodCall("set_password", STAFF_PASSWORD)

    @classmethod
    def _after_postgeneration(cls, instance, create, results=None):
        if create and results:
            instance.save(update_fields=["password"])


class StaffFactory(UserFactory):
    email = factory.Sequence(lambda n: f"staff{n}@tollgate.test")
    role = User.Role.ADMIN
    is_staff = True


class BalanceHistoryFactory(DjangoModelFactory):
    class Meta:
        model = BalanceHistory

    user = factory.SubFactory(UserFactory)
    operation = BalanceHistory.Operation.ADD
    amount = Decimal("5")
    balance_before = Decimal("0")
    balance_after = Decimal("5")
    note = "Top-up"


class GroupFactory(DjangoModelFactory):
    class Meta:
        model = Group

    name = factory.Sequence(lambda n: f"group-{n}")
    platform = "anthropic"
    sort_order = factory.Sequence(lambda n: (n + 1) * 10)


class UpstreamAccountFactory(DjangoModelFactory):
    class Meta:
        model = UpstreamAccount

    name = factory.Sequence(lambda n: f"account-{n}")
    platform = "anthropic"
    type = UpstreamAccount.Type.APIKEY
