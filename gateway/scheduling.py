"""Choosing the upstream account for a request (docs/gateway.md#account-choice).

`candidates` is a pure function over the group's members, their account snapshots, the model and
this process's view of each account (last use, fresh rate-limit marks): the usable accounts that
serve the model, in the order to try them. `AccountBoard` keeps that view for one process;
`StickySessions` remembers which account served a conversation. An account's concurrency slots
are shared by every process (gateway.limits): a full account is skipped when it is its turn.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from channels.patterns import match_pattern

UNSUPPORTED_TYPES = frozenset({"bedrock"})


class AccountLike(Protocol):
    id: int
    platform: str
    type: str
    status: str
    schedulable: bool
    rate_limited_until: datetime | None
    expires_at: datetime | None
    concurrency: int
    quota_applies: bool
    model_mapping: Mapping[str, str]
    supported_models: tuple[str, ...]

    def is_quota_exceeded(self, now: datetime) -> bool: ...


def serves_model(account: AccountLike, model: str) -> bool:
    """An empty supported-model list serves every model; patterns may end in one `*`."""
    if not account.supported_models:
        return True
    return match_pattern(account.supported_models, model) is not None


def account_model(account: AccountLike, model: str) -> str:
    """The name sent upstream after the account's own mapping (exact beats prefix)."""
    mapping = account.model_mapping
    if not mapping:
        return model
    source = match_pattern(mapping.keys(), model)
    return mapping[source] if source is not None else model


def is_usable(account: AccountLike, now: datetime, *, rate_limited_until: datetime | None = None) -> bool:
    """docs/entities.md: active, schedulable, not rate-limited, not expired, quota not exceeded."""
    if account.status != "active" or not account.schedulable:
        return False
    limited = max(filter(None, (account.rate_limited_until, rate_limited_until)), default=None)
    if limited is not None and limited > now:
        return False
    if account.expires_at is not None and account.expires_at <= now:
        return False
    return not (account.quota_applies and account.is_quota_exceeded(now))


@dataclass(slots=True)
class AccountBoard:
    """This process's live view of the accounts: last use, marks not yet reloaded. (Their slots are
    shared by every process: gateway.limits.)"""

    last_used: dict[int, float] = field(default_factory=dict)
    rate_limited_until: dict[int, datetime] = field(default_factory=dict)
    disabled: set[int] = field(default_factory=set)

    def touch(self, account_id: int) -> None:
        self.last_used[account_id] = time.monotonic()

    def mark_rate_limited(self, account_id: int, until: datetime) -> None:
        self.rate_limited_until[account_id] = until

    def mark_disabled(self, account_id: int) -> None:
        self.disabled.add(account_id)

    def forget(self, account_ids: Iterable[int]) -> None:
        """The accounts' rows were reloaded: their own fields speak for them again."""
        for account_id in account_ids:
            self.rate_limited_until.pop(account_id, None)
            self.disabled.discard(account_id)


@dataclass(frozen=True, slots=True)
class Candidates:
    accounts: tuple[Any, ...]  # usable, serving the model, in the order to try
    unsupported: int  # accounts that would serve the model but whose type is not relayed yet


def candidates(
    *,
    platform: str,
    members: Sequence[Any],  # GroupMember(account_id, priority), the group's order
    accounts: Mapping[int, AccountLike],
    model: str,
    routed: Sequence[int] | None,
    now: datetime,
    board: AccountBoard,
    sticky_account_id: int | None = None,
) -> Candidates:
    """Routing first (the rule's accounts in the rule's order), then the group's priority, then the
    least recently used in this process; a sticky account that is still usable goes first."""
    usable: list[tuple[tuple, Any]] = []
    unsupported = 0
    route_rank = {account_id: position for position, account_id in enumerate(routed or ())}
    for member in members:
        account = accounts.get(member.account_id)
        if account is None or account.platform != platform or account.id in board.disabled:
            continue
        if not is_usable(account, now, rate_limited_until=board.rate_limited_until.get(account.id)):
            continue
        if not serves_model(account, model):
            continue
        if account.type in UNSUPPORTED_TYPES:
            unsupported += 1
            continue
        rank = (
            0 if account.id == sticky_account_id else 1,
            route_rank.get(account.id, len(route_rank)),
            member.priority,
            board.last_used.get(account.id, 0.0),
            account.id,
        )
        usable.append((rank, account))
    usable.sort(key=lambda item: item[0])
    return Candidates(accounts=tuple(account for _, account in usable), unsupported=unsupported)


# --- Sticky sessions ---------------------------------------------------------------------------------


def session_key(*, kind: str, body: Mapping[str, Any], key_id: int) -> str | None:
    """What identifies a conversation (docs/gateway.md#account-choice), scoped to the API key.

    Anthropic `metadata.user_id`; OpenAI `prompt_cache_key`, then `user`; else a hash of the system
    prompt and the first message (the prefix an upstream prompt cache keys on). None for requests
    without a conversation (embeddings)."""
    if kind == "embeddings":
        return None
    identity: Any = None
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        identity = ("user_id", metadata["user_id"])
    elif isinstance(body.get("prompt_cache_key"), str) and body["prompt_cache_key"]:
        identity = ("prompt_cache_key", body["prompt_cache_key"])
    elif isinstance(body.get("user"), str) and body["user"]:
        identity = ("user", body["user"])
    else:
        messages = body.get("messages") if kind != "responses" else body.get("input")
        first = messages[0] if isinstance(messages, list) and messages else messages
        system = body.get("system") or body.get("instructions")
        if first is None and system is None:
            return None
        identity = ("prefix", system, first)
    digest = hashlib.sha256(orjson.dumps([key_id, identity], option=orjson.OPT_NON_STR_KEYS)).hexdigest()
    return digest[:32]


class StickySessions:
    """session key → account id, each for `ttl` seconds after its last use, at most `size` of them."""

    def __init__(self, *, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def get(self, key: str | None) -> int | None:
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        account_id, expires = entry
        if expires <= time.monotonic():
            del self._entries[key]
            return None
        return account_id

    def put(self, key: str | None, account_id: int) -> None:
        if key is None:
            return
        self._entries[key] = (account_id, time.monotonic() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
