"""List sign-in locks, or lift them: for when nobody who could use the console page can sign in."""

from __future__ import annotations

import ipaddress

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import SignInCounter
from console import throttle


class Command(BaseCommand):
    help = (
        "Lift sign-in locks: give emails or client addresses to unlock, --all to unlock everything, "
        "or --list to see what is locked."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("targets", nargs="*", metavar="EMAIL_OR_ADDRESS")
        parser.add_argument("--all", action="store_true", help="Forget every failed attempt.")
        parser.add_argument("--list", action="store_true", help="Show the current locks and change nothing.")

    def handle(self, *targets: str, **options) -> None:
        targets = options["targets"]
        if options["list"]:
            self._list()
        elif options["all"]:
            deleted, _ = SignInCounter.objects.all().delete()
            self.stdout.write(self.style.SUCCESS(f"Forgot every failed sign-in ({deleted} counters)."))
        elif targets:
            for target in targets:
                kind = SignInCounter.Kind.IP if _is_address(target) else SignInCounter.Kind.USERNAME
                if throttle.lockout_lift(kind=kind, value=target, actor=None):
                    self.stdout.write(self.style.SUCCESS(f"Unlocked {target}."))
                else:
                    self.stdout.write(f"Nothing to unlock for {target}.")
        else:
            raise CommandError("Give an email or address to unlock, --all, or --list.")

    def _list(self) -> None:
        locks = list(throttle.lockout_list())
        if not locks:
            self.stdout.write("No sign-in is locked.")
        for lock in locks:
            what = "email" if lock.kind == SignInCounter.Kind.USERNAME else "address"
            until = timezone.localtime(lock.window_ends_at).strftime("%Y-%m-%d %H:%M %Z")
            self.stdout.write(
                f"{what} {lock.value}: {lock.attempts} failed attempts, locked until {until} "
                f"(in {throttle.minutes_until(lock.window_ends_at)} min)"
            )


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
