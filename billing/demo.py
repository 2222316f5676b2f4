"""A realistic week of demo usage, recorded through billing.services.usage_record.

Nothing is inserted directly: every row is priced and charged by the same service the gateway
calls, so balances, key quotas and windows, account quotas and rollups all agree with the
ledger. Request ids are deterministic, so running the seed again replays them as no-ops.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.utils import timezone

from accounts.selectors.keys import key_list
from accounts.snapshots import KeySnapshot, key_snapshot_load_by_id, upstream_account_snapshots_load
from billing.cost import Usage
from billing.models import UsageLog
from billing.pricing import billing_context_from
from billing.services import usage_record
from channels.snapshots import channel_snapshot_for_group

REQUESTS_PER_KEY = 300
DAYS = 7
# Models an operator would see per platform; the last of each is one no catalog prices,
# so the unpriced-model warning has something to show.
PLATFORM_MODELS = {
    "anthropic": [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-next-preview",
    ],
    "openai": ["gpt-4o", "gpt-4.1-mini", "gpt-4.1-mini", "o3", "gpt-internal-eval"],
    "gemini": [
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        "gemini-2.5-pro",
        "gemini-2.5-flash-image",
        "gemini-lab-exp",
    ],
    "antigravity": [
        "claude-sonnet-4-5",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "claude-haiku-4-5",
        "ag-preview",
    ],
}
USER_AGENTS = ["claude-cli/2.0.14 (external, cli)", "OpenAI/Python 1.99.1", "curl/8.5.0", "Cursor/1.4"]


def seed_usage(*, now: datetime | None = None) -> int:
    """Record a week of usage for every active key of an active user; returns rows added.

    Keys are read as the gateway reads them, through accounts' snapshots, never accounts' rows.
    """
    now = now or timezone.now()
    added = 0
    for key_id in key_list(status="active").order_by("id").values_list("pk", flat=True):
        key = key_snapshot_load_by_id(key_id)
        if key is None or key.group is None or not key.user.is_enabled:
            continue
        if key.group.is_subscription and not (key.subscription and key.subscription.is_live(now)):
            continue  # the gateway would refuse this key
        if UsageLog.objects.filter(api_key_id=key.id, request_id__startswith="demo-").exists():
            continue  # seeded before (replaying would change nothing), so skip the work
        added += _seed_key(key, now=now)
    return added


def _seed_key(key: KeySnapshot, *, now: datetime) -> int:
    assert key.group is not None  # seed_usage skips keys without a group; narrows the type
    rng = random.Random(f"tollgate-demo-{key.key_hash}")  # noqa: S311 - demo data, not security
    account_ids = [member.account_id for member in key.group.members]  # in the group's order
    accounts = upstream_account_snapshots_load(account_ids)
    channel = channel_snapshot_for_group(key.group_id)
    contexts = {
        account_id: billing_context_from(key=key, channel=channel, account=accounts.get(account_id))
        for account_id in (account_ids or [None])
    }
    models = PLATFORM_MODELS.get(key.group.platform, PLATFORM_MODELS["anthropic"])
    # In time order, as a gateway would see them: lazy window resets depend on it.
    moments = sorted(_business_hours_moment(rng, now) for _ in range(REQUESTS_PER_KEY))
    added = 0
    balance = key.user.balance  # moved below by exactly what each recording charged it
    pays_from_balance = not key.group.is_subscription
    for n, created_at in enumerate(moments):
        if pays_from_balance and balance <= 0:
            break  # out of credit: the gateway answers INSUFFICIENT_BALANCE from here on
        model = rng.choice(models[:-1]) if rng.random() > 0.02 else models[-1]
        schedulable = [aid for aid in contexts if aid is None or not _quota_exceeded(aid, created_at)]
        if not schedulable:
            continue  # every account of the group is at its quota: the gateway would refuse this one
        account_id = rng.choice(schedulable)
        status = rng.choices([200, 429, 500, 529], weights=[94, 3, 2, 1])[0]
        result = usage_record(
            request_id=f"demo-{key.key_hash[:8]}-{n:04d}",
            api_key_id=key.id,
            account_id=account_id,
            requested_model=model,
            usage=_usage(rng, model, failed=status >= 400),
            context=contexts[account_id],
            stream=rng.random() < 0.7,
            duration_ms=rng.randint(400, 45_000),
            first_token_ms=rng.randint(150, 2_500),
            status_code=status,
            client_ip=f"198.51.100.{rng.randint(2, 254)}",
            user_agent=rng.choice(USER_AGENTS),
            created_at=created_at,
        )
        added += not result.duplicate
        if result.charged_to == "balance":
            balance -= result.charged_usd
        if result.key_became_exhausted:
            break  # the key just used up its quota: the gateway refuses it from here on
    return added


def _quota_exceeded(account_id: int, at: datetime) -> bool:
    # Read afresh: every key of the group charges this account's quota.
    return upstream_account_snapshots_load([account_id])[account_id].is_quota_exceeded(at)


def _business_hours_moment(rng: random.Random, now: datetime) -> datetime:
    """A moment in the last week, busier in working hours, never in the future."""
    day = rng.randint(0, DAYS - 1)
    hour = min(23, max(0, int(rng.gauss(14, 4))))
    moment = (now - timedelta(days=day)).replace(
        hour=hour, minute=rng.randint(0, 59), second=rng.randint(0, 59)
    )
    return moment if moment <= now else moment - timedelta(days=1)


def _usage(rng: random.Random, model: str, *, failed: bool) -> Usage:
    if failed:  # rejected upstream: the prompt was read, nothing generated
        return Usage(input_tokens=rng.randint(200, 4_000))
    cached = model.startswith("claude") and rng.random() < 0.6
    image = model.endswith("-image") and rng.random() < 0.5
    image_tokens = 1_290 if image else 0
    return Usage(
        input_tokens=rng.randint(300, 18_000),
        output_tokens=rng.randint(50, 2_500) + image_tokens,
        cache_creation_5m_tokens=rng.randint(0, 6_000) if cached else 0,
        cache_creation_1h_tokens=rng.randint(0, 3_000) if cached and rng.random() < 0.3 else 0,
        cache_read_tokens=rng.randint(2_000, 60_000) if cached else 0,
        image_output_tokens=image_tokens,
    )
