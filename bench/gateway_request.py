"""What one gateway request costs: CPU time in the gateway process, added latency, database work.

    DATABASE_URL=postgres://… .venv/bin/python -m bench.gateway_request [--requests 2000]
    (make bench-gateway-request; with REDIS_URL set the gateway uses Redis as production does,
    and GATEWAY_LIMITS chooses where its slots live)

In a scratch database: one OpenAI and one Anthropic group with a key each and an account pointed
at the fake upstream. The gateway runs as production runs it (uvicorn, one worker, config.asgi,
no access log) in its own process; this process drives it with bench.fake_upstream's minimal
keep-alive client and reads the gateway's CPU time from /proc. Each case is also sent straight to
the fake upstream, so the latency the gateway adds is the difference. Every request is recorded
(one ledger transaction, after the response): the database's commit count per request is printed,
and the recording's own CPU time is measured apart (the same `gateway.recorder.record` in this
process), so what remains is the hot path: snapshot lookup, checks, scheduling, relay, metering.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from bench.common import ROOT, machine, scratch_database, setup_django
from bench.fake_upstream import cpu_seconds, drive, request_bytes

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello to the toll gate."}]}
LIMIT = 1000  # requests in flight allowed to the user, the key and the account
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": CHAT["messages"]}


def cases(openai_key: str, anthropic_key: str) -> list[tuple[str, str, dict, dict, dict]]:
    bearer = {"authorization": f"Bearer {openai_key}"}
    direct_openai = {"authorization": "Bearer sk-direct"}
    anthropic_headers = {"x-api-key": anthropic_key, "anthropic-version": "2023-06-01"}
    direct_anthropic = {"x-api-key": "sk-direct", "anthropic-version": "2023-06-01"}
    return [
        ("chat JSON", "/v1/chat/completions", CHAT, bearer, direct_openai),
        # The gateway asks for the usage chunk and strips it; the direct run asks for it itself.
        ("chat stream", "/v1/chat/completions", {**CHAT, "stream": True}, bearer, direct_openai),
        ("messages stream", "/v1/messages", {**MESSAGE, "stream": True}, anthropic_headers, direct_anthropic),
    ]


def tenants(upstream_url: str) -> tuple[str, str]:
    from accounts.models import GroupAccount, User
    from accounts.services.groups import group_create
    from accounts.services.keys import api_key_create
    from accounts.services.upstream import upstream_account_create

    user = User.objects.create_user(email="bench@example.com", password=None, balance=Decimal("1000000"))
    # Limits on but never reached: every request takes a user, a key and an account slot
    # (docs/gateway.md#shared-limits), so their cost is in the figures.
    User.objects.filter(pk=user.pk).update(concurrency=LIMIT)
    user.refresh_from_db()
    secrets = []
    for platform in ("openai", "anthropic"):
        group = group_create(fields={"name": f"bench-{platform}", "platform": platform}, actor=None)
        account = upstream_account_create(
            fields={
                "name": f"bench-{platform}",
                "platform": platform,
                "type": "apikey",
                "concurrency": LIMIT,
            },
            credentials={"api_key": "sk-bench-upstream", "base_url": upstream_url},
            actor=None,
        )
        GroupAccount.objects.create(group=group, account=account)
        secrets.append(api_key_create(user=user, group=group, name=f"bench-{platform}", concurrency=LIMIT)[1])
    return secrets[0], secrets[1]


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of the gateway's main thread, where uvicorn runs the event loop: the hot path
    (snapshot lookup, checks, scheduling, upstream call, relay, metering). The database threads,
    which run the recordings, are the rest of the process's time."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ledger_rows() -> int:
    from billing.models import UsageLog

    return UsageLog.objects.count()


def settle(expected: int) -> None:
    """Wait until every request driven so far has its ledger row (recording follows the response)."""
    deadline = time.monotonic() + 120
    while ledger_rows() < expected and time.monotonic() < deadline:
        time.sleep(0.05)


def start_gateway(database: str, port: int) -> subprocess.Popen:
    from django.conf import settings

    db = settings.DATABASES["default"]
    url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{database}"
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING", "DEBUG": "false", "ALLOWED_HOSTS": "*"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "on",
        ],
        cwd=ROOT,
        env=env,
    )


def wait_for(url: str) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1)  # noqa: S310 - loopback
        except urllib.error.HTTPError:
            return  # 401: it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def recording_cpu(count: int) -> float:
    """CPU seconds per `gateway.recorder.record`, in this process, on the same rows."""
    from accounts.models import APIKey
    from accounts.snapshots import key_snapshot_load_by_id, upstream_account_snapshots_load
    from billing.cost import Usage
    from channels.snapshots import channel_snapshot_for_group
    from gateway.recorder import Entry, record

    key = key_snapshot_load_by_id(APIKey.objects.get(name="bench-openai").pk)
    account = next(iter(upstream_account_snapshots_load([key.group.members[0].account_id]).values()))
    channel = channel_snapshot_for_group(key.group_id)
    entries = [
        Entry(
            request_id=f"bench-record-{index}",
            key=key,
            channel=channel,
            account=account,
            requested_model="gpt-4o",
            mapped_model="gpt-4o",
            upstream_model="gpt-4o",
            usage=Usage(input_tokens=11, output_tokens=24),
            usage_source="reported",
            outcome="completed",
            stream=False,
            status_code=200,
            duration_ms=5,
            first_token_ms=5,
            client_ip="127.0.0.1",
            user_agent="bench",
        )
        for index in range(count)
    ]
    record(entries[0])  # warm: compiled statements, connection
    started = time.process_time()
    for entry in entries[1:]:
        record(entry)
    return (time.process_time() - started) / (count - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per case at concurrency 16")
    options = parser.parse_args()
    setup_django()
    from tests.fake_upstream import running_fake_upstream

    with scratch_database() as database, running_fake_upstream() as upstream:
        print(machine())
        store = os.environ.get("GATEWAY_LIMITS") or ("redis" if os.environ.get("REDIS_URL") else "database")
        print(
            f"limits store: {store} (GATEWAY_LIMITS; REDIS_URL {'set' if os.environ.get('REDIS_URL') else 'unset'})"
        )
        openai_key, anthropic_key = tenants(upstream.url)
        port = 18000 + os.getpid() % 1000
        gateway = start_gateway(database, port)
        gateway_url = f"http://127.0.0.1:{port}"
        try:
            wait_for(gateway_url)
            print(
                f"{'case':<17}{'conc':>5}{'req/s':>8}{'p50 ms':>8}{'direct':>8}{'added':>8}"
                f"{'CPU/req: all':>14}{'event loop':>12}{'rows/req':>10}"
            )
            sent = 0  # requests sent through the gateway so far: each leaves one ledger row
            for name, path, body, headers, direct_headers in cases(openai_key, anthropic_key):
                through = request_bytes(urlsplit(gateway_url).netloc, path, body, headers)
                if name == "chat stream":
                    direct_body = {**body, "stream_options": {"include_usage": True}}
                else:
                    direct_body = body
                direct = request_bytes(urlsplit(upstream.url).netloc, path, direct_body, direct_headers)
                for concurrency, total in ((1, options.requests // 4), (16, options.requests)):
                    asyncio.run(drive(gateway_url, through, 200, 4))  # warm: snapshots, pools
                    sent += 200
                    asyncio.run(drive(upstream.url, direct, 200, 4))
                    direct_latencies = asyncio.run(drive(upstream.url, direct, total, concurrency))
                    settle(sent)
                    rows_before = ledger_rows()
                    cpu_before, loop_before = cpu_seconds(gateway.pid), loop_cpu_seconds(gateway.pid)
                    started = time.perf_counter()
                    latencies = asyncio.run(drive(gateway_url, through, total, concurrency))
                    elapsed = time.perf_counter() - started
                    sent += total
                    settle(sent)  # this run's recordings belong to its CPU time
                    cpu = cpu_seconds(gateway.pid) - cpu_before
                    loop = loop_cpu_seconds(gateway.pid) - loop_before
                    rows = (ledger_rows() - rows_before) / total
                    p50, direct_p50 = statistics.median(latencies), statistics.median(direct_latencies)
                    print(
                        f"{name:<17}{concurrency:>5}{total / elapsed:>8.0f}{p50 * 1000:>8.2f}"
                        f"{direct_p50 * 1000:>8.2f}{(p50 - direct_p50) * 1000:>8.2f}"
                        f"{cpu / total * 1000:>11.3f} ms{loop / total * 1000:>9.3f} ms{rows:>10.2f}"
                    )
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
        per_record = recording_cpu(300)
        print(
            f"recording alone (usage_record, one transaction, this process): {per_record * 1000:.3f} ms CPU"
        )


if __name__ == "__main__":
    main()
