"""The accounts app's rules that read nothing and write nothing: pure functions and tables.

Services (writes), selectors (reads), forms and the gateway share them, so each rule is written
once: timezone names, IP allow/deny lines (and what normalising them changes), the key's hash
and status, a group's model routing, its move-up/down order and its fallbacks' platform, and the
credential fields of each kind of upstream account. (An account's priority range is a CHECK on
the model: accounts.models.MIN_PRIORITY / MAX_PRIORITY.)
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.timezone import now as current_time

from accounts.models import APIKey, Platform, UpstreamAccount

KeyStatus = APIKey.Status
Type = UpstreamAccount.Type

# --- Timezones -----------------------------------------------------------------------------------


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone_names() -> list[str]:
    """Every IANA zone name, for the forms' suggestions."""
    return sorted(_zone_names())


def is_valid_timezone(name: str) -> bool:
    return bool(name) and name in _zone_names()


# --- API keys ----------------------------------------------------------------------------------


def api_key_hash(secret: str) -> str:
    """What is stored and looked up: the hex SHA-256 of the whole secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _ip_rule(
    value: str,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_network(value, strict=False) if "/" in value else ipaddress.ip_address(value)


def normalise_ip_rules(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """One IP or CIDR per line: the normalised, de-duplicated rules, and what normalising changed.

    Blank lines and surrounding spaces are not changes. Errors name the line number and the
    value, so a long list is easy to fix.
    """
    rules: list[str] = []
    changes: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        value = raw.strip()
        if not value:
            continue
        try:
            rule = str(_ip_rule(value))
        except ValueError:
            errors.append(f"Line {number}: “{value}” is not an IP address or CIDR range.")
            continue
        if rule in rules:
            changes.append(f"Line {number}: {value} is listed already; the copy is dropped.")
            continue
        if rule != value:
            network = ipaddress.ip_network(value, strict=False) if "/" in value else None
            if network is not None and str(network.network_address) != value.split("/")[0]:
                changes.append(
                    f"Line {number}: {value} is the range {rule} (the address part is cut to the range's start)."
                )
            else:
                changes.append(f"Line {number}: {value} is written {rule}.")
        rules.append(rule)
    if errors:
        raise ValidationError(errors)
    return rules, changes


def parse_ip_rules(lines: Iterable[str]) -> list[str]:
    """The normalised, de-duplicated rules of `lines` (see normalise_ip_rules)."""
    return normalise_ip_rules(lines)[0]


def ip_rule_conflicts(allowlist: Iterable[str], denylist: Iterable[str]) -> list[str]:
    """Allowlist rules that a denylist rule refuses whole: the key could never be used from them."""
    denied = [ipaddress.ip_network(rule, strict=False) for rule in denylist]
    conflicts = []
    for rule in allowlist:
        allowed = ipaddress.ip_network(rule, strict=False)
        blocker = next((d for d in denied if d.version == allowed.version and allowed.subnet_of(d)), None)
        if blocker is not None:
            same = "is also on the denylist" if blocker == allowed else f"is inside the denied {blocker}"
            conflicts.append(
                f"{rule} is allowed but {same}; the denylist always wins. Remove it from one list."
            )
    return conflicts


def key_status(key: Any, *, now: datetime, disabled: bool | None = None) -> str:
    """The one status rule of a key (a row or a snapshot): disabled stays disabled; then expiry;
    then the quota; else active (docs/windows.md#key-quota).

    `disabled` overrides the key's current disabled-ness (enable / disable); None keeps it.
    """
    if disabled is None:
        disabled = key.status == KeyStatus.DISABLED
    if disabled:
        return KeyStatus.DISABLED
    if key.expires_at is not None and key.expires_at <= now:
        return KeyStatus.EXPIRED
    if key.quota_usd > 0 and key.quota_used_usd >= key.quota_usd:
        return KeyStatus.QUOTA_EXHAUSTED
    return KeyStatus.ACTIVE


def api_key_resolved_status(key: Any, *, enabled: bool | None = None, now: datetime | None = None) -> str:
    """The status `key` would have after a change, e.g. what enabling it would make it."""
    return key_status(key, now=now or current_time(), disabled=None if enabled is None else not enabled)


# --- Groups ----------------------------------------------------------------------------------------


def group_routed_account_ids(group: Any, model: str) -> Sequence[int] | None:
    """The accounts a group (a row or a snapshot) routes `model` to, or None when no rule matches
    or routing is off (docs/entities.md#model-routing).

    An exact pattern beats a trailing-"*" prefix; among prefixes the longest wins. Case-insensitive.
    """
    if not group.model_routing_enabled or not group.model_routing:
        return None
    name = model.lower()
    best: tuple[int, list[int]] | None = None
    for pattern, ids in group.model_routing.items():
        pattern = pattern.lower()
        if pattern == name:
            return list(ids)
        prefix = pattern.endswith("*") and name.startswith(pattern[:-1])
        if prefix and (best is None or len(pattern) > best[0]):
            best = (len(pattern), list(ids))
    return best[1] if best else None


def group_order_move(ordered_ids: list[int], group_id: int, step: int) -> list[int]:
    """The order with one group moved up (step -1) or down (+1); unchanged at either end."""
    ids = list(ordered_ids)
    if group_id not in ids:
        return ids
    at = ids.index(group_id)
    to = max(0, min(len(ids) - 1, at + step))
    ids.insert(to, ids.pop(at))
    return ids


def fallback_platform_error(target: Any, platform: str) -> str:
    """Why `target` cannot be the fallback of a group on `platform`: a request falls back with its
    own protocol, and another platform's accounts cannot serve it."""
    return (
        f"{target.name} is on {target.get_platform_display()}; a fallback must be on this group's "
        f"platform ({Platform(platform).label})."
    )


# --- Upstream account credentials (docs/entities.md#credentials) -----------------------------------


@dataclass(frozen=True, slots=True)
class CredentialField:
    key: str
    label: str
    secret: bool = True
    required: bool = True
    help_text: str = ""


BEDROCK_AUTH_MODES = (("sigv4", "Access key (SigV4)"), ("apikey", "Bedrock API key"))

# One section per type (Bedrock: per auth mode). A form field is named "<section>__<key>", so the
# sections can all live in one HTML form and only the chosen one is read.
CREDENTIAL_SECTIONS: dict[str, tuple[CredentialField, ...]] = {
    "oauth": (
        CredentialField("access_token", "Access token"),
        CredentialField("refresh_token", "Refresh token", required=False),
    ),
    "setup_token": (CredentialField("setup_token", "Setup token"),),
    "apikey": (
        CredentialField("api_key", "API key"),
        CredentialField(
            "base_url",
            "Base URL",
            secret=False,
            required=False,
            help_text="Empty = the provider's official endpoint.",
        ),
    ),
    "upstream": (
        CredentialField("base_url", "Base URL", secret=False, help_text="The relay's endpoint, https://…"),
        CredentialField("api_key", "API key"),
    ),
    "bedrock_sigv4": (
        CredentialField("aws_access_key_id", "Access key ID"),
        CredentialField("aws_secret_access_key", "Secret access key"),
        CredentialField(
            "aws_session_token",
            "Session token",
            required=False,
            help_text="Only for temporary (STS) credentials.",
        ),
        CredentialField("aws_region", "Region", secret=False, help_text="e.g. us-east-1"),
    ),
    "bedrock_apikey": (
        CredentialField("api_key", "Bedrock API key"),
        CredentialField("aws_region", "Region", secret=False, help_text="e.g. us-east-1"),
    ),
}


# Types only the Anthropic platform has.
ANTHROPIC_ONLY_TYPES = (Type.SETUP_TOKEN, Type.BEDROCK)
AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d{1,2}$")


def credential_section(account_type: str, auth_mode: str = "") -> str:
    if account_type == Type.BEDROCK:
        return f"bedrock_{auth_mode or 'sigv4'}"
    return account_type.replace("-", "_")


def credential_form_name(section: str, key: str) -> str:
    return f"{section}__{key}"


# --- An account's models (docs/gateway.md#account-choice) ----------------------------------------

MODEL_NAME_MAX_LENGTH = 200
_MAPPING_ARROWS = ("→", "->", "=")


def _model_name_problem(value: str, *, pattern: bool) -> str | None:
    if len(value) > MODEL_NAME_MAX_LENGTH:
        return f"is longer than {MODEL_NAME_MAX_LENGTH} characters"
    if any(character.isspace() for character in value):
        return "contains a space"
    if "*" in value and not (pattern and value.endswith("*") and value.count("*") == 1):
        return "may only end in one * (a prefix)" if pattern else "is a pattern, not a model name"
    return None


def parse_model_list(lines: Iterable[str]) -> list[str]:
    """Model names or prefixes ending in `*`, one per line, de-duplicated; errors name the line."""
    models: list[str] = []
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        value = raw.strip()
        if not value:
            continue
        problem = _model_name_problem(value, pattern=True)
        if problem:
            errors.append(f"Line {number}: “{value}” {problem}.")
        elif value not in models:
            models.append(value)
    if errors:
        raise ValidationError(errors)
    return models


def parse_model_mapping(lines: Iterable[str]) -> dict[str, str]:
    """`source → target` lines (or `->`, `=`): a source name or prefix ending in `*`, a target name."""
    mapping: dict[str, str] = {}
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        value = raw.strip()
        if not value:
            continue
        arrow = next((arrow for arrow in _MAPPING_ARROWS if arrow in value), None)
        if arrow is None:
            errors.append(f"Line {number}: “{value}” needs an arrow: source → target.")
            continue
        source, _, target = (part.strip() for part in value.partition(arrow))
        problem = (
            "has no source"
            if not source
            else "has no target"
            if not target
            else _model_name_problem(source, pattern=True) or _model_name_problem(target, pattern=False)
        )
        if problem:
            errors.append(f"Line {number}: “{value}” {problem}.")
        elif source in mapping:
            errors.append(f"Line {number}: “{source}” is mapped twice.")
        else:
            mapping[source] = target
    if errors:
        raise ValidationError(errors)
    return mapping


def model_mapping_lines(mapping: dict[str, str]) -> str:
    return "\n".join(f"{source} → {target}" for source, target in mapping.items())
