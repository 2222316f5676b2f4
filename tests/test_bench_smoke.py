"""bench/gateway's quick mode runs end to end (without LiteLLM), so the benchmark cannot rot.

Real processes: the fake upstream, Tollgate under uvicorn on this test database and Redis DB 5,
and the load generator. About 15 s: two servers start (Django's import dominates) before short
phases; kept because a broken benchmark is otherwise found only by the next person to run it.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from bench.gateway import Bench, Phase, run, summary
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
        rounds=2,
    )

    first_round = [
        (case, concurrency, target, 1)
        for case in ("chat JSON", "chat stream")
        for concurrency in (1, 4)
        for target in ("direct", "Tollgate")
    ]
    second_round = [
        (case, 4, target, 2) for case in ("chat JSON", "chat stream") for target in ("direct", "Tollgate")
    ]
    assert [
        (p.case, p.concurrency, p.target, p.round_number) for p in bench.phases
    ] == first_round + second_round
    for phase in bench.phases:
        assert phase.requests > 0 and phase.errors == 0, phase
        assert phase.p50 <= phase.p90 <= phase.p99
    tollgate = [phase for phase in bench.phases if phase.target == "Tollgate"]
    assert all(phase.cpu_per_request > 0 for phase in tollgate)
    assert all(phase.ttfb50 <= phase.p50 for phase in tollgate if phase.case == "chat stream")
    assert UsageLog.objects.count() == bench.recorded  # warm-ups and measured windows, one row each
    assert all(phase.requests < bench.recorded for phase in tollgate)
    assert any("peak RSS per worker: Tollgate" in line for line in lines)
    assert lines[2].startswith("| case | conc |")


def phase(target: str, p99_ms: float, round_number: int) -> Phase:
    return Phase(
        case="chat JSON",
        concurrency=64,
        workers=1,
        target=target,
        requests=100,
        errors=0,
        rps=100.0,
        p50=p99_ms / 2000,
        p90=p99_ms / 1500,
        p99=p99_ms / 1000,
        ttfb50=float("nan"),
        cpu_per_request=0.001 if target != "direct" else None,
        round_number=round_number,
    )


def test_the_p99_goal_is_the_median_of_the_rounds_ratios_and_prints_each_round():
    bench = Bench(load=None, upstream_url="http://127.0.0.1:1", seconds=1.0, secret="")
    # Added p99 (through the proxy − direct): Tollgate 100, 500, 90 ms; LiteLLM 1,000 ms each round.
    for number, ours in ((1, 110), (2, 510), (3, 100)):
        bench.phases += [phase("direct", 10, number), phase("Tollgate", ours, number)]
        bench.phases.append(phase("LiteLLM", 1010, number))

    lines = summary(bench, {}, (64,), two_workers=False)

    goal = next(line for line in lines if line.startswith("- chat JSON: added p99"))
    assert "median of 3 rounds (0.100 / 0.500 / 0.090)" in goal
    assert goal.endswith("0.100 (met; goal ≤ 0.1)")
    assert [line.split(" | ")[2] for line in lines if line.startswith("| chat JSON | 64 |")] == [
        "1",
        "2",
        "3",
    ]
