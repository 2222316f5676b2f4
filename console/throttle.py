"""Sign-in throttle: attempts counted per email and per client address, in the database.

The rule (README, "Security"):
- Every attempt is counted **before** its password is checked, in one atomic statement per
  counter, so simultaneous guesses cannot all slip past the check: at most LOGIN_FAILURE_LIMIT
  passwords are ever checked for one email inside its window.
- The email's counter is the hard lock: once LOGIN_FAILURE_LIMIT attempts have failed, every
  attempt for that email is refused without checking the password, from any address, until
  LOGIN_FAILURE_WINDOW_SECONDS after the failure that reached the limit (or an admin unlocks it).
- The address's counter only throttles: once LOGIN_IP_FAILURE_LIMIT attempts from one address
  have failed, that address may still try an email that has no failures in its window, once.
  A shared address (an office, a misconfigured proxy) therefore cannot lock out every staff
  member, while one address still gets no more than one guess per email once it is throttled.
- A successful sign-in forgives its email's failures and gives the address its attempt back.

The counters live in the database (accounts.SignInCounter), not the cache, so every process
shares them on every setup, including the embedded default, and an admin can list and lift
locks from the console or with `manage.py unlock_sign_in`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts.models import SignInCounter, User
from accounts.roles import ConsoleRole, console_role_required

Kind = SignInCounter.Kind
VALUE_LENGTH = SignInCounter._meta.get_field("value").max_length


@dataclass(frozen=True)
class Attempt:
    """One counted sign-in attempt; `refused` means its password must not be checked."""

    username: str
    ip: str
    refused: bool = False
    # When the lock that refused it ends (None unless refused).
    locked_until: datetime | None = None

    @property
    def minutes_left(self) -> int:
        return minutes_until(self.locked_until) if self.locked_until else 0


def normalise_username(username: str) -> str:
    return username.strip().lower()[:VALUE_LENGTH]


def attempt_begin(*, username: str, ip: str) -> Attempt:
    """Count an attempt for this email and address, then say whether its password may be checked."""
    username = normalise_username(username)
    ip = (ip or "unknown")[:VALUE_LENGTH]
    now = timezone.now()
    for_username = _count(kind=Kind.USERNAME, value=username, limit=settings.LOGIN_FAILURE_LIMIT, now=now)
    for_ip = _count(kind=Kind.IP, value=ip, limit=settings.LOGIN_IP_FAILURE_LIMIT, now=now)
    locks = []
    if for_username > settings.LOGIN_FAILURE_LIMIT:
        locks.append(Q(kind=Kind.USERNAME, value=username))
    # A throttled address may still try an email with no earlier attempt in its window.
    if for_ip > settings.LOGIN_IP_FAILURE_LIMIT and for_username > 1:
        locks.append(Q(kind=Kind.IP, value=ip))
    if not locks:
        return Attempt(username=username, ip=ip)
    query = Q()
    for lock in locks:
        query |= lock
    ends = SignInCounter.objects.filter(query).values_list("window_ends_at", flat=True)
    return Attempt(username=username, ip=ip, refused=True, locked_until=max(ends, default=now))


def attempt_succeeded(attempt: Attempt) -> None:
    """The password was right: forgive the email, give the address its attempt back, tidy up."""
    SignInCounter.objects.filter(kind=Kind.USERNAME, value=attempt.username).delete()
    SignInCounter.objects.filter(kind=Kind.IP, value=attempt.ip, attempts__gt=0).update(
        attempts=F("attempts") - 1
    )
    counters_prune()


def counters_prune(*, now: datetime | None = None) -> int:
    """Delete counters whose window has lapsed (they already count as zero)."""
    deleted, _ = SignInCounter.objects.filter(window_ends_at__lte=now or timezone.now()).delete()
    return deleted


def minutes_until(moment: datetime, *, now: datetime | None = None) -> int:
    """Whole minutes left until `moment`, rounded up, at least 1."""
    seconds = (moment - (now or timezone.now())).total_seconds()
    return max(1, math.ceil(seconds / 60))


# -- locks, for the console page and the management command -----------------------------------------


def lockout_list(*, now: datetime | None = None) -> QuerySet[SignInCounter]:
    """Counters that lock (an email) or throttle (an address) right now, latest attempt first."""
    return SignInCounter.objects.filter(
        Q(kind=Kind.USERNAME, attempts__gt=settings.LOGIN_FAILURE_LIMIT - 1)
        | Q(kind=Kind.IP, attempts__gt=settings.LOGIN_IP_FAILURE_LIMIT - 1),
        window_ends_at__gt=now or timezone.now(),
    )


def lockout_lift(*, kind: str, value: str, actor: User | None) -> bool:
    """Forget every attempt for this email or address; True if there was anything to forget.
    Admins only (`actor`; None is the shell's unlock_sign_in command)."""
    console_role_required(actor, ConsoleRole.ADMIN, doing="lift sign-in locks")
    if kind == Kind.USERNAME:
        value = normalise_username(value)
    deleted, _ = SignInCounter.objects.filter(kind=kind, value=value).delete()
    return bool(deleted)


# -- the count ----------------------------------------------------------------------------------------


@cache
def _count_sql() -> str:
    """INSERT … ON CONFLICT shared by PostgreSQL and SQLite; only quoted model metadata goes in.

    In the UPDATE every expression reads the old row: a lapsed window starts again at 1, and
    the attempt that reaches the limit restarts the window, so a lock lasts a full window.
    """
    quote = connection.ops.quote_name
    table = quote(SignInCounter._meta.db_table)
    kind, value = quote("kind"), quote("value")
    attempts, ends, last = quote("attempts"), quote("window_ends_at"), quote("last_attempt_at")
    lapsed = f"{table}.{ends} <= %(now)s"
    return (
        f"INSERT INTO {table} ({kind}, {value}, {attempts}, {ends}, {last}) "  # noqa: S608
        f"VALUES (%(kind)s, %(value)s, 1, %(window_end)s, %(now)s) "
        f"ON CONFLICT ({kind}, {value}) DO UPDATE SET "
        f"{attempts} = CASE WHEN {lapsed} THEN 1 ELSE {table}.{attempts} + 1 END, "
        f"{ends} = CASE WHEN {lapsed} OR {table}.{attempts} + 1 = %(limit)s "
        f"THEN %(window_end)s ELSE {table}.{ends} END, "
        f"{last} = %(now)s "
        f"RETURNING {attempts}"
    )


def _count(*, kind: str, value: str, limit: int, now: datetime) -> int:
    """Add one attempt to the counter and return the new count (this attempt included)."""
    adapt = connection.ops.adapt_datetimefield_value
    window_end = now + timedelta(seconds=settings.LOGIN_FAILURE_WINDOW_SECONDS)
    params = {
        "kind": str(kind),
        "value": value,
        "now": adapt(now),
        "window_end": adapt(window_end),
        "limit": limit,
    }
    with connection.cursor() as cursor:
        cursor.execute(_count_sql(), params)
        return cursor.fetchone()[0]
