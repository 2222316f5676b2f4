"""Deploy checks (`manage.py check --deploy`) for Tollgate's own settings."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

from accounts.crypto import weak_keys


@register(Tags.security, deploy=True)
def credentials_keys_are_strong(app_configs, **kwargs) -> list[Error]:
    return [
        Error(
            problem,
            hint="Put a Fernet key first, run manage.py rotate_credentials, then drop the weak key.",
            id="tollgate.E001",
        )
        for problem in weak_keys(list(settings.CREDENTIALS_KEYS))
    ]
