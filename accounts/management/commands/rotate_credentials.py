"""Re-encrypt every upstream account's credentials with the first key in CREDENTIALS_KEYS."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.crypto import rotate_token
from accounts.models import UpstreamAccount
from accounts.snapshots import snapshots_changed


class Command(BaseCommand):
    help = (
        "Re-encrypt upstream credentials with the first CREDENTIALS_KEYS key. Run it after putting a new "
        "key first in the list; once it has finished, the old key can be removed."
    )

    def handle(self, *args, **options) -> None:
        rotated: list[int] = []
        with transaction.atomic():
            accounts = UpstreamAccount.objects.select_for_update().exclude(credentials_encrypted="")
            for pk, token in accounts.values_list("pk", "credentials_encrypted"):
                # rotate_token decrypts with any known key and encrypts with the first: a wrong key
                # list fails here (InvalidToken) and the transaction leaves every row as it was.
                UpstreamAccount.objects.filter(pk=pk).update(credentials_encrypted=rotate_token(token))
                rotated.append(pk)
            snapshots_changed(account_ids=rotated)
        count = len(rotated)
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {count} account{'s' if count != 1 else ''}."))
