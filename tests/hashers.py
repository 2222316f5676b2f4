"""A password hasher that counts how many passwords were checked (for the sign-in throttle tests).

It is Django's MD5 hasher (the suite's fast hasher, same algorithm name, so stored hashes still
verify) with a counter, and optionally the delay a real hasher costs, so that racing requests
overlap the way they do in production.
"""

from __future__ import annotations

import threading
import time

from django.contrib.auth.hashers import MD5PasswordHasher


class CountingMD5PasswordHasher(MD5PasswordHasher):
    checks = 0
    delay_seconds = 0.0
    _lock = threading.Lock()

    @classmethod
    def reset(cls, *, delay_seconds: float = 0.0) -> None:
        with cls._lock:
            cls.checks = 0
        cls.delay_seconds = delay_seconds

    def verify(self, password: str, encoded: str) -> bool:
        with CountingMD5PasswordHasher._lock:
            CountingMD5PasswordHasher.checks += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        return super().verify(password, encoded)


COUNTING_HASHERS = ["tests.hashers.CountingMD5PasswordHasher"]
