"""Balance adjustments from many threads at once lose nothing (real PostgreSQL)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts.models import BalanceHistory, User
from accounts.services.users import user_balance_adjust
from tests.concurrency import run_in_threads, run_naive_increments
from tests.factories import UserFactory

THREADS = 20


@pytest.mark.django_db(transaction=True)
def test_twenty_threads_adding_and_subtracting_lose_nothing():
    user = UserFactory(balance=Decimal("100"))

    def work(index: int) -> None:
        operation = "add" if index % 2 == 0 else "subtract"
        user_balance_adjust(
            user_id=user.pk,
            operation=operation,
            amount=Decimal("0.12345678") * (index + 1),
            note=f"thread {index}",
            changed_by=None,
        )

    failures = run_in_threads(THREADS, work)
    assert failures == []
    expected = Decimal("100") + sum(
        (Decimal("0.12345678") * (i + 1) * (1 if i % 2 == 0 else -1) for i in range(THREADS)), Decimal("0")
    )
    user.refresh_from_db()
    assert user.balance == expected
    history = list(BalanceHistory.objects.filter(user=user).order_by("id"))
    assert len(history) == THREADS
    # Each row's before is the previous row's after: the history is a consistent chain.
    for earlier, later in zip(history, history[1:], strict=False):
        assert later.balance_before == earlier.balance_after
    assert history[-1].balance_after == expected


@pytest.mark.django_db(transaction=True)
def test_the_harness_sees_a_race_a_naive_read_modify_write_loses_balance_updates():
    # The control: what user_balance_adjust must not do, on the same harness. If this ever
    # stopped losing updates, the test above would prove nothing.
    user = UserFactory(balance=Decimal("100"))
    failures = run_naive_increments(THREADS, model=User, pk=user.pk, field="balance", amount=Decimal("1"))
    assert failures == []
    user.refresh_from_db()
    assert user.balance == Decimal("101")  # every thread read 100: THREADS - 1 additions were lost
