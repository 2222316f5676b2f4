"""Encryption at rest for upstream credentials.

Credentials are a JSON object encrypted with Fernet (AES-128-CBC + HMAC).
settings.CREDENTIALS_KEYS is a list: the first key encrypts, all of them
decrypt (MultiFernet). To rotate: put a new key first, run
`manage.py rotate_credentials`, then drop the old key.

A key is a Fernet key or a passphrase. A passphrase becomes a Fernet key through one SHA-256,
which adds no strength: it must carry as much as a key by itself. Production refuses one that
may not (`weak_key_problem`), and `check --deploy` flags it anywhere.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import string
from functools import cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings

# Fernet encrypts with AES-128 and signs with a 128-bit HMAC key: 128 bits is a key's strength.
MIN_PASSPHRASE_BITS = 128
# Length times alphabet cannot see repetition ("aaaa…"); a floor on distinct characters can.
MIN_PASSPHRASE_DISTINCT = 10
_ALPHABETS = (string.ascii_lowercase, string.ascii_uppercase, string.digits)


def is_fernet_key(secret: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(secret.encode())) == 32
    except (ValueError, binascii.Error):
        return False


def passphrase_bits(secret: str) -> float:
    """At most how many bits a passphrase carries: its length times log2 of the alphabets it uses."""
    pool = sum(len(alphabet) for alphabet in _ALPHABETS if any(c in alphabet for c in secret))
    if any(not any(c in alphabet for alphabet in _ALPHABETS) for c in secret):
        pool += len(string.punctuation) + 1  # symbols and space (and anything else)
    return len(secret) * math.log2(pool) if pool else 0.0


def weak_key_problem(secret: str) -> str | None:
    """Why this key is too weak to protect credentials, or None. Never repeats the key."""
    if is_fernet_key(secret):
        return None
    bits = passphrase_bits(secret)
    if bits >= MIN_PASSPHRASE_BITS and len(set(secret)) >= MIN_PASSPHRASE_DISTINCT:
        return None
    return (
        f"a passphrase of {len(secret)} characters ({len(set(secret))} different) carries at most "
        f"{bits:.0f} bits; a key needs {MIN_PASSPHRASE_BITS} (about 22 random letters and digits, "
        f"or 28 random lowercase letters, with at least {MIN_PASSPHRASE_DISTINCT} different characters). "
        "Use a Fernet key: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
    )


def weak_keys(keys: list[str]) -> list[str]:
    """One line per weak key in CREDENTIALS_KEYS, naming it by position."""
    return [
        f"CREDENTIALS_KEYS key {position} of {len(keys)}: {problem}"
        for position, key in enumerate(keys, start=1)
        if (problem := weak_key_problem(key))
    ]


def _fernet_key(secret: str) -> bytes:
    # Accept a passphrase as well as a Fernet key: operators paste both. The derivation never
    # changes, so credentials encrypted under a passphrase keep decrypting.
    if is_fernet_key(secret):
        return secret.encode()
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
