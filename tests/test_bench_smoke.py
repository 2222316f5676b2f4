"""bench/gateway's quick mode runs end to end (without LiteLLM), so the benchmark cannot rot.

Real processes: the fake upstream, Tollgate under uvicorn on this test database and Redis DB 5,
and the load generator. About 15 s: two servers start (Django's import dominates) before short
phases; kept because a broken benchmark is otherwise found only by the next person to run it.
"""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings

from bench.gateway import Bench, Phase, _drive, _on_own_loop, request_bytes, run, summary
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
    # The second round repeats both concurrencies, starting one target later.
    second_round = [
        (case, concurrency, target, 2)
        for case in ("chat JSON", "chat stream")
        for concurrency in (1, 4)
        for target in ("Tollgate", "direct")
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
    assert all(0 < phase.requests < phase.served for phase in tollgate)  # the warm-up is left out
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


def test_a_latency_goal_is_the_median_of_the_rounds_ratios_and_prints_each_round():
    bench = Bench(load=None, upstream_url="http://127.0.0.1:1", seconds=1.0, secret="")
    # Added p99 (through the proxy − direct): Tollgate 50, 500, 40 ms; LiteLLM 1,000 ms each round.
    for number, ours in ((1, 60), (2, 510), (3, 50)):
        bench.phases += [phase("direct", 10, number), phase("Tollgate", ours, number)]
        bench.phases.append(phase("LiteLLM", 1010, number))

    lines = summary(bench, {}, (64,), two_workers=False)

    goal = next(line for line in lines if line.startswith("- chat JSON: added p99"))
    assert "median of 3 rounds (0.050 / 0.500 / 0.040; met in 2 of 3, worst 0.500)" in goal
    assert goal.endswith(": 0.050 (met; goal ≤ 0.1)")
    assert [line.split(" | ")[2] for line in lines if line.startswith("| chat JSON | 64 |")] == [
        "1",
        "2",
        "3",
    ]


def test_a_phase_measures_only_once_every_connection_has_had_its_first_answer():
    """A server that answers one request at a time, the first four (the opening wave of four
    connections) in 0.15 s each, then in 5 ms: the warm-up (0.05 s) ends while the wave is still
    queued. A connection answered early sends again at once and waits behind the rest of the
    wave; the window opens only when the last connection has its first answer, so that wait is
    left out too."""
    one_at_a_time = asyncio.Lock()
    handled = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal handled
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            async with one_at_a_time:
                handled += 1
                await asyncio.sleep(0.15 if handled <= 4 else 0.005)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    async def measured() -> dict:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        request = request_bytes(f"127.0.0.1:{port}", "/", {}, {})
        async with server:
            return await _drive("127.0.0.1", port, request, 0.05, 0.4, 4)

    result = _on_own_loop(measured())  # the suite's Playwright may run a loop on this thread

    assert result["errors"] == 0
    assert result["served"] >= len(result["latencies"]) + 4  # at least each first answer is left out
    assert max(result["latencies"]) < 0.1
