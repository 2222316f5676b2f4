"""CREDENTIALS_KEYS: weak passphrases are refused in production and flagged by check --deploy."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from accounts.crypto import decrypt_credentials, encrypt_credentials, weak_key_problem
from accounts.models import UpstreamAccount
from tests.factories import UpstreamAccountFactory
from tests.test_settings import manage

FERNET_KEY = Fernet.generate_key().decode()
STRONG_PASSPHRASE = "a-long-credentials-passphrase-for-the-test"
PRODUCTION = {
    "TOLLGATE_ENV": "production",
    "SECRET_KEY": "x" * 30 + "-production-secret-key-with-enough-entropy-9f8e7d6c",
    "ALLOWED_HOSTS": "tollgate.example.com",
}


@pytest.mark.parametrize(
    "key",
    ["a", "hunter2", "Tr0ub4dor&3", "a" * 60, "abababababababababababababababab"],
)
def test_short_or_repetitive_passphrases_are_weak(key):
    problem = weak_key_problem(key)
    assert problem is not None and "carries at most" in problem


# Fixed draws of secrets.token_urlsafe(16) and token_hex(32): a fresh draw made this test flaky,
# since about one urlsafe token in a hundred has no digit, "-" or "_" and so, at 22 letters only,
# honestly carries less than 128 bits by this measure.
URLSAFE_TOKEN = "q3J_x9LmZ2vT8kRb5Wn-0c"
HEX_TOKEN = "9f2c61d0a4b87e35c1f0d29ab6e4370f5c8a1d92e6b3f07a4c5d18e92b70a6f3"


@pytest.mark.parametrize("key", [FERNET_KEY, STRONG_PASSPHRASE, URLSAFE_TOKEN, HEX_TOKEN])
def test_fernet_keys_and_long_random_passphrases_are_strong(key):
    assert weak_key_problem(key) is None


def test_credentials_encrypted_under_a_passphrase_before_keep_decrypting(settings):
    # The derivation (one SHA-256 of the passphrase) is unchanged, so old rows still open.
    derived = base64.urlsafe_b64encode(hashlib.sha256(STRONG_PASSPHRASE.encode()).digest())
    old_token = Fernet(derived).encrypt(b'{"api_key": "sk-old"}').decode()
    settings.CREDENTIALS_KEYS = [STRONG_PASSPHRASE]
    assert decrypt_credentials(old_token) == {"api_key": "sk-old"}


@pytest.mark.django_db
def test_rotating_from_a_passphrase_to_a_fernet_key(settings):
    settings.CREDENTIALS_KEYS = [STRONG_PASSPHRASE]
    account = UpstreamAccountFactory(credentials_encrypted=encrypt_credentials({"api_key": "sk-1"}))
    settings.CREDENTIALS_KEYS = [FERNET_KEY, STRONG_PASSPHRASE]
    call_command("rotate_credentials", stdout=io.StringIO())
    settings.CREDENTIALS_KEYS = [FERNET_KEY]
    token = UpstreamAccount.objects.get(pk=account.pk).credentials_encrypted
    assert decrypt_credentials(token) == {"api_key": "sk-1"}


def test_production_refuses_to_start_with_a_weak_passphrase(tmp_path):
    env = {**PRODUCTION, "CREDENTIALS_KEYS": f"{FERNET_KEY},hunter2", "TOLLGATE_VAR_DIR": str(tmp_path)}
    check = manage("check", "--deploy", env=env)
    assert check.returncode != 0
    assert "CREDENTIALS_KEYS is too weak for production" in check.stderr
    assert "key 2 of 2" in check.stderr
    assert "hunter2" not in check.stderr + check.stdout  # the key itself is never printed


def test_production_with_CREDENTIALS_KEYS_a_fails_the_deploy_check(tmp_path):
    check = manage(
        "check", "--deploy", env={**PRODUCTION, "CREDENTIALS_KEYS": "a", "TOLLGATE_VAR_DIR": str(tmp_path)}
    )
    assert check.returncode != 0
    assert "CREDENTIALS_KEYS" in check.stderr


def test_the_deploy_check_flags_a_weak_passphrase_outside_production(tmp_path):
    env = {"CREDENTIALS_KEYS": "hunter2", "TOLLGATE_VAR_DIR": str(tmp_path)}
    assert manage("check", env=env).returncode == 0  # development may use anything
    check = manage("check", "--deploy", env=env)
    assert check.returncode != 0
    assert "tollgate.E001" in check.stderr and "CREDENTIALS_KEYS key 1 of 1" in check.stderr


def test_production_accepts_fernet_keys_and_strong_passphrases(tmp_path):
    env = {
        **PRODUCTION,
        "CREDENTIALS_KEYS": f"{FERNET_KEY},{STRONG_PASSPHRASE}",
        "TOLLGATE_VAR_DIR": str(tmp_path),
    }
    check = manage("check", "--deploy", "--fail-level", "DEBUG", env=env)
    assert check.returncode == 0, check.stdout + check.stderr
