"""Encryption at rest for upstream credentials.

Credentials are a JSON object encrypted with Fernet (AES-128-CBC + HMAC).
settings.CREDENTIALS_KEYS is a list: the first key encrypts, all of them
decrypt (MultiFernet). To rotate: put a new key first, run
`manage.py rotate_credentials`, then drop the old key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings


def _fernet_key(secret: str) -> bytes:
    # Accept any string as a key: operators paste passphrases as often as Fernet keys.
    try:
        if len(base64.urlsafe_b64decode(secret.encode())) == 32:
            return secret.encode()
    except ValueError:
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest())


@cache
def _cipher(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(key)) for key in keys])


def cipher() -> MultiFernet:
    return _cipher(tuple(settings.CREDENTIALS_KEYS))


def encrypt_credentials(credentials: dict) -> str:
    return cipher().encrypt(json.dumps(credentials, sort_keys=True).encode()).decode()


def decrypt_credentials(token: str) -> dict:
    if not token:
        return {}
    return json.loads(cipher().decrypt(token.encode()))


def rotate_token(token: str) -> str:
    return cipher().rotate(token.encode()).decode() if token else token
