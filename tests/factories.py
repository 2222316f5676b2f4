"""factory_boy factories for every model. Later issues add theirs here."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from accounts.models import APIKey, BalanceHistory, Group, GroupAccount, Subscription, UpstreamAccount, User
from accounts.roles import ConsoleRole
from billing.cost import Usage, compute_cost
from billing.models import UsageLog
from billing.services import breakdown_extra, usage_rollup_add
from channels.models import Channel, ChannelGroup, ModelPricing, PricingInterval
from channels.pricing import Price

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
    """An admin by default; console_role=... for an operator or a viewer."""

    email = factory.Sequence(lambda n: f"staff{n}@tollgate.test")
    role = User.Role.ADMIN
    is_staff = True
    console_role = ConsoleRole.ADMIN


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


class GroupAccountFactory(DjangoModelFactory):
    class Meta:
        model = GroupAccount

    group = factory.SubFactory(GroupFactory)
    account = factory.SubFactory(UpstreamAccountFactory)
    priority = 50


class APIKeyFactory(DjangoModelFactory):
    """A key row without a known secret; use accounts.services.keys.api_key_create when the secret matters."""

    class Meta:
        model = APIKey

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"key-{n}")
    key_hash = factory.Sequence(lambda n: hashlib.sha256(f"sk-factory-{n}".encode()).hexdigest())
    key_prefix = factory.Sequence(lambda n: f"sk-{n % 65536:04x}")
    key_last4 = factory.Sequence(lambda n: f"{(n * 7919) % 65536:04x}")


class SubscriptionGroupFactory(GroupFactory):
    platform = "openai"
    subscription_type = Group.SubscriptionType.SUBSCRIPTION


class SubscriptionFactory(DjangoModelFactory):
    class Meta:
        model = Subscription

    user = factory.SubFactory(UserFactory)
    group = factory.SubFactory(SubscriptionGroupFactory)
    starts_at = factory.LazyFunction(timezone.now)
    expires_at = factory.LazyAttribute(lambda o: o.starts_at + timedelta(days=30))


# Sonnet-like card for factory rows: $3 in, $15 out, $3.75 / $6 cache writes, $0.30 cache read.
FACTORY_PRICE = Price(
    input_price=Decimal("0.000003"),
    output_price=Decimal("0.000015"),
    cache_write_price=Decimal("0.00000375"),
    cache_write_1h_price=Decimal("0.000006"),
    cache_read_price=Decimal("0.0000003"),
)


class UsageLogFactory(DjangoModelFactory):
    """A ledger row whose costs are computed from its tokens, as usage_record would store them.

    For page and export tests; tests of billing itself go through billing.services.usage_record.
    Pass pricing_source="missing" for an unpriced row; rate_multiplier scales actual_cost.
    """

    class Meta:
        model = UsageLog

    request_id = factory.Sequence(lambda n: f"req-{n:08d}")
    api_key = factory.SubFactory(APIKeyFactory)
    user = factory.SelfAttribute("api_key.user")
    requested_model = "claude-sonnet-4-5"
    upstream_model = factory.SelfAttribute("requested_model")
    billing_model = factory.SelfAttribute("requested_model")
    input_tokens = 1000
    output_tokens = 200
    pricing_source = "catalog"
    rate_multiplier = Decimal("1")
    account_rate_multiplier = Decimal("1")
    duration_ms = 1200
    created_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        usage = Usage(
            **{
                name: kwargs.get(name, 0)
                for name in (
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_5m_tokens",
                    "cache_creation_1h_tokens",
                    "cache_read_tokens",
                    "image_output_tokens",
                )
            }
        )
        source = kwargs["pricing_source"]
        breakdown = compute_cost(
            price=None if source == "missing" else FACTORY_PRICE,
            usage=usage,
            pricing_source=source,
            rate_multiplier=kwargs["rate_multiplier"],
            account_rate_multiplier=kwargs["account_rate_multiplier"],
            billing_model=kwargs["billing_model"],
        )
        for name in ("input_cost", "output_cost", "cache_creation_cost", "cache_read_cost", "total_cost"):
            kwargs[name] = getattr(breakdown, name)
        kwargs.update(actual_cost=breakdown.actual_cost, account_cost=breakdown.account_cost)
        kwargs["breakdown"] = breakdown_extra(breakdown)
        log = super()._create(model_class, *args, **kwargs)
        usage_rollup_add(log=log)  # the page's totals read the rollups, as usage_record keeps them
        return log


class ChannelFactory(DjangoModelFactory):
    class Meta:
        model = Channel

    name = factory.Sequence(lambda n: f"channel-{n}")


class ChannelGroupFactory(DjangoModelFactory):
    class Meta:
        model = ChannelGroup

    channel = factory.SubFactory(ChannelFactory)
    group = factory.SubFactory(GroupFactory)


class ModelPricingFactory(DjangoModelFactory):
    """A per-token card; prices are USD per token ($3 / $15 per MTok)."""

    class Meta:
        model = ModelPricing

    channel = factory.SubFactory(ChannelFactory)
    platform = "anthropic"
    models = factory.LazyFunction(lambda: ["claude-sonnet-4-5"])
    input_price = Decimal("0.000003")
    output_price = Decimal("0.000015")
    sort_order = factory.Sequence(lambda n: n)


class PricingIntervalFactory(DjangoModelFactory):
    class Meta:
        model = PricingInterval

    card = factory.SubFactory(ModelPricingFactory)
    min_tokens = 0
    max_tokens = None
    sort_order = factory.Sequence(lambda n: n)
