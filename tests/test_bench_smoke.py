"""bench/gateway's quick mode runs end to end (without LiteLLM), so the benchmark cannot rot.

Real processes: the fake upstream, Tollgate under uvicorn on this test database and Redis DB 5,
and the load generator. About 15 s: two servers start (Django's import dominates) before short
phases; kept because a broken benchmark is otherwise found only by the next person to run it.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from bench.gateway import run
from billing.models import UsageLog

REDIS_URL = "redis://127.0.0.1:6379/5"


@pytest.mark.django_db(transaction=True)
def test_the_gateway_bench_in_quick_mode_measures_every_phase_and_tollgate_records_every_request():
    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"

    lines, bench = run(
        database_url=url,
        redis_url=REDIS_URL,
        seconds=0.3,
        concurrencies=(1, 4),
        two_workers=False,
        litellm=False,
    )

    assert [(p.case, p.concurrency, p.target) for p in bench.phases] == [
        (case, concurrency, target)
        for case in ("chat JSON", "chat stream")
        for concurrency in (1, 4)
        for target in ("direct", "Tollgate")
    ]
    for phase in bench.phases:
        assert phase.requests > 0 and phase.errors == 0, phase
        assert phase.p50 <= phase.p90 <= phase.p99
    tollgate = [phase for phase in bench.phases if phase.target == "Tollgate"]
    assert all(phase.cpu_per_request > 0 for phase in tollgate)
    assert all(phase.ttfb50 <= phase.p50 for phase in tollgate if phase.case == "chat stream")
    assert UsageLog.objects.count() == bench.recorded  # warm-ups and phases, one row each
    assert any("peak RSS per worker: Tollgate" in line for line in lines)
    assert lines[2].startswith("| case | conc |")
