"""Scheduled tidy-up jobs for accounts (docs/jobs.md#what-runs). Each task calls one service and
returns its count; no limit depends on them having run (docs/jobs.md#correctness-without-jobs)."""

from __future__ import annotations

import logging

from celery import shared_task

from accounts.services.keys import api_key_expire_due
from accounts.services.subscriptions import subscription_expire_due
from accounts.services.upstream import upstream_account_pause_expired

logger = logging.getLogger(__name__)


@shared_task(name="accounts.expire_keys")
def expire_keys() -> int:
    expired = api_key_expire_due()
    logger.info("expired %s API key(s) past their expiry", expired)
    return expired


@shared_task(name="accounts.expire_subscriptions")
def expire_subscriptions() -> int:
    expired = subscription_expire_due()
    logger.info("expired %s subscription(s) past their term", expired)
    return expired


@shared_task(name="accounts.pause_expired_accounts")
def pause_expired_accounts() -> int:
    paused = upstream_account_pause_expired()
    logger.info("paused %s upstream account(s) past their expiry", paused)
    return paused
