"""Writes of channels: create, update and delete a channel with its cards, mapping and groups.

A channel is saved whole, in one transaction: its fields, its groups, its pricing cards (replaced
by the ones given, in order) and its model mapping. The rules (docs/pricing.md#card-validation)
are checked first by channels.rules, which the form also calls. Every change leaves an audit row
with a JSON diff, and is announced to snapshot listeners after commit. Prices and mapping are
for an admin: each write takes the acting user as `actor` (None is the system) and refuses
anyone else (docs/console.md#roles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import Group, User
from accounts.roles import ConsoleRole, console_role_required
from accounts.snapshots import snapshots_changed
from channels.models import (
    Channel,
    ChannelAuditLog,
    ChannelGroup,
    ModelPricing,
    PricingInterval,
)
from channels.patterns import normalise_pattern
from channels.pricing import PriceInterval
from channels.rules import (
    CARD_PRICES,
    MULTIPLIERS,
    TOKEN_PRICES,
    CardSpec,
    ChannelInvalid,
    MappingRule,
    mapping_as_json,
    mapping_problems,
    pricing_problems,
)
from channels.selectors import channel_names_for_groups
from common.money import per_token_to_per_mtok

CHANNEL_FIELDS = ("name", "description", "status", "billing_model_source", "restrict_models")


# -- writes ---------------------------------------------------------------------------------------


@transaction.atomic
def channel_create(
    *,
    fields: dict[str, Any],
    group_ids: Sequence[int] = (),
    cards: Sequence[CardSpec] = (),
    mapping: Sequence[MappingRule] = (),
    actor: User | None,
) -> Channel:
    console_role_required(actor, ConsoleRole.ADMIN, doing="create channels")
    channel = Channel()
    _save(channel, fields=fields, group_ids=group_ids, cards=cards, mapping=mapping)
    _audit(channel, ChannelAuditLog.Action.CREATE, before=_audit_picture(None), actor=actor)
    # The gateway finds a group's channel by the group, so the groups are named too.
    snapshots_changed(channel_ids=[channel.pk], group_ids=group_ids)
    return channel


@transaction.atomic
def channel_update(
    *,
    channel: Channel,
    fields: dict[str, Any],
    group_ids: Sequence[int],
    cards: Sequence[CardSpec],
    mapping: Sequence[MappingRule],
    actor: User | None,
) -> Channel:
    """Replace the channel's fields, groups, cards and mapping with these; audited when anything changed."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="change channel prices and mapping")
    locked = Channel.objects.select_for_update().get(pk=channel.pk)
    before = _audit_picture(locked)
    snapshots_changed(
        channel_ids=[locked.pk],
        group_ids=[
            *group_ids,
            *ChannelGroup.objects.filter(channel=locked).values_list("group_id", flat=True),
        ],
    )
    _save(locked, fields=fields, group_ids=group_ids, cards=cards, mapping=mapping)
    _audit(locked, ChannelAuditLog.Action.UPDATE, before=before, actor=actor)
    return locked


@transaction.atomic
def channel_delete(*, channel: Channel, actor: User | None) -> None:
    """Delete the channel; its groups fall back to catalog prices. The audit row keeps the name."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="delete channels")
    before = _audit_picture(channel)
    ChannelAuditLog.objects.create(
        channel=None,
        channel_name=channel.name,
        action=ChannelAuditLog.Action.DELETE,
        actor=actor,
        changes=_audit_diff(before, _audit_picture(None)),
    )
    snapshots_changed(
        channel_ids=[channel.pk],
        group_ids=ChannelGroup.objects.filter(channel=channel).values_list("group_id", flat=True),
    )
    channel.delete()


def _save(
    channel: Channel,
    *,
    fields: dict[str, Any],
    group_ids: Sequence[int],
    cards: Sequence[CardSpec],
    mapping: Sequence[MappingRule],
) -> None:
    problems = pricing_problems(cards) + mapping_problems(mapping)
    if problems:
        raise ChannelInvalid(problems)
    for name in CHANNEL_FIELDS:
        if name in fields:
            setattr(channel, name, fields[name])
    channel.model_mapping = mapping_as_json(mapping)
    channel.full_clean()
    channel.save()
    _set_groups(channel, list(dict.fromkeys(group_ids)))
    _replace_cards(channel, cards)


def _set_groups(channel: Channel, group_ids: list[int]) -> None:
    taken = channel_names_for_groups(group_ids, exclude_channel=channel)
    if taken:
        raise ValidationError({"groups": _taken_messages(taken)})
    ChannelGroup.objects.filter(channel=channel).exclude(group_id__in=group_ids).delete()
    present = set(ChannelGroup.objects.filter(channel=channel).values_list("group_id", flat=True))
    try:
        with transaction.atomic():
            ChannelGroup.objects.bulk_create(
                [ChannelGroup(channel=channel, group_id=gid) for gid in group_ids if gid not in present]
            )
    except IntegrityError as error:
        # Another channel took one of these groups after the check above.
        taken = channel_names_for_groups(group_ids, exclude_channel=channel)
        raise ValidationError(
            {"groups": _taken_messages(taken) or ["A group was taken by another channel."]}
        ) from error


def _taken_messages(taken: dict[int, str]) -> list[str]:
    names = dict(Group.objects.filter(pk__in=taken).values_list("pk", "name"))
    return [
        f"Group “{names.get(gid, gid)}” already belongs to channel “{channel}”; a group can be in one channel only."
        for gid, channel in taken.items()
    ]


def _replace_cards(channel: Channel, cards: Sequence[CardSpec]) -> None:
    ModelPricing.objects.filter(channel=channel).delete()
    rows = ModelPricing.objects.bulk_create(
        [
            ModelPricing(
                channel=channel,
                sort_order=position,
                platform=card.platform,
                models=list(card.models),
                billing_mode=card.billing_mode,
                per_request_price=card.per_request_price,
                **{name: getattr(card, name) for name in CARD_PRICES},
            )
            for position, card in enumerate(cards)
        ]
    )
    PricingInterval.objects.bulk_create(
        [
            PricingInterval(card=row, sort_order=position, **_interval_values(interval))
            for row, card in zip(rows, cards, strict=True)
            for position, interval in enumerate(card.intervals)
        ]
    )


def _interval_values(interval: PriceInterval) -> dict[str, Any]:
    # The row's sort order is its position on the card, not what the caller passed.
    return {f.name: getattr(interval, f.name) for f in fields(PriceInterval) if f.name != "sort_order"}


# -- audit ----------------------------------------------------------------------------------------


def _audit(channel: Channel, action: str, *, before: dict, actor: User | None) -> None:
    changes = _audit_diff(before, _audit_picture(channel))
    if changes or action != ChannelAuditLog.Action.UPDATE:
        ChannelAuditLog.objects.create(
            channel=channel, channel_name=channel.name, action=action, actor=actor, changes=changes
        )


def _price_text(value: Decimal | None, *, per_mtok: bool = True) -> str | None:
    if value is None:
        return None
    shown = per_token_to_per_mtok(value) if per_mtok else value.normalize()
    return format(shown, "f")


def _card_picture(card: ModelPricing) -> dict[str, Any]:
    prices = {name: _price_text(getattr(card, name)) for name in CARD_PRICES}
    return {
        "platform": card.platform,
        "models": list(card.models),
        "billing_mode": card.billing_mode,
        **{f"{name} ($/MTok)": value for name, value in prices.items() if value is not None},
        **(
            {"per_request_price ($)": _price_text(card.per_request_price, per_mtok=False)}
            if card.per_request_price is not None
            else {}
        ),
        "intervals": [_interval_picture(interval) for interval in card.intervals.all()],
    }


def _interval_picture(interval: PricingInterval) -> str:
    upper = "∞" if interval.max_tokens is None else f"{interval.max_tokens:,}"
    parts = [f"({interval.min_tokens:,}, {upper}]"]
    if interval.tier_label:
        parts.append(interval.tier_label)
    for name in TOKEN_PRICES:
        if getattr(interval, name) is not None:
            parts.append(f"{name.removesuffix('_price')} ${_price_text(getattr(interval, name))}/MTok")
    for name in MULTIPLIERS:
        if getattr(interval, name) is not None:
            parts.append(f"{name.removesuffix('_multiplier')} ×{getattr(interval, name).normalize():f}")
    if interval.per_request_price is not None:
        parts.append(f"${_price_text(interval.per_request_price, per_mtok=False)} each")
    return " ".join(parts)


def _audit_picture(channel: Channel | None) -> dict[str, Any]:
    """A readable, JSON-safe picture of a channel (prices in $/MTok), for the audit diff."""
    if channel is None or channel.pk is None:
        return {"groups": [], "model_mapping": {}, "pricing": []}
    cards = (
        ModelPricing.objects.filter(channel=channel)
        .prefetch_related("intervals")
        .order_by("sort_order", "id")
    )
    return {
        "name": channel.name,
        "description": channel.description,
        "status": channel.status,
        "billing_model_source": channel.billing_model_source,
        "restrict_models": channel.restrict_models,
        "groups": sorted(channel.groups.values_list("name", flat=True)),
        "model_mapping": {
            f"{platform}: {source}": target
            for platform, rules in sorted(channel.mapping.items())
            for source, target in sorted(rules.items())
        },
        "pricing": [_card_picture(card) for card in cards],
    }


def _card_key(card: dict[str, Any]) -> str:
    return f"{card['platform']}: {', '.join(normalise_pattern(m) for m in card['models'])}"


def _audit_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two pictures; {} when nothing did.

    Scalars become {"from", "to"}; groups and mapping entries "added"/"removed"/"changed";
    cards are matched by platform and models (then by position within a platform) and report
    the fields that changed.
    """
    changes: dict[str, Any] = {}
    for name in CHANNEL_FIELDS:
        if before.get(name) != after.get(name):
            changes[name] = {"from": before.get(name), "to": after.get(name)}
    added = [g for g in after["groups"] if g not in before["groups"]]
    removed = [g for g in before["groups"] if g not in after["groups"]]
    if added or removed:
        changes["groups"] = {"added": added, "removed": removed}
    mapping = _dict_diff(before["model_mapping"], after["model_mapping"])
    if mapping:
        changes["model_mapping"] = mapping
    pricing = _cards_diff(before["pricing"], after["pricing"])
    if pricing:
        changes["pricing"] = pricing
    return changes


def _dict_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    added = {k: v for k, v in after.items() if k not in before}
    removed = {k: v for k, v in before.items() if k not in after}
    changed = {k: {"from": before[k], "to": v} for k, v in after.items() if k in before and before[k] != v}
    for name, value in (("added", added), ("removed", removed), ("changed", changed)):
        if value:
            diff[name] = value
    return diff


def _cards_diff(before: list[dict], after: list[dict]) -> dict[str, Any]:
    old = {_card_key(card): card for card in before}
    new = {_card_key(card): card for card in after}
    pairs = [(old[key], new[key]) for key in new if key in old]
    gone = [card for key, card in old.items() if key not in new]
    came = [card for key, card in new.items() if key not in old]
    # A card whose model list was edited is the same card: pair leftovers per platform in order.
    for card in list(came):
        match = next((previous for previous in gone if previous["platform"] == card["platform"]), None)
        if match is not None:
            gone.remove(match)
            came.remove(card)
            pairs.append((match, card))
    changed = {}
    for previous, current in pairs:
        fields_changed = _dict_diff(
            {k: v for k, v in previous.items() if k != "platform"},
            {k: v for k, v in current.items() if k != "platform"},
        )
        if fields_changed:
            changed[_card_key(current)] = fields_changed
    diff: dict[str, Any] = {}
    if came:
        diff["added"] = {_card_key(card): card for card in came}
    if gone:
        diff["removed"] = {_card_key(card): card for card in gone}
    if changed:
        diff["changed"] = changed
    return diff
