"""GET /metrics (docs/gateway.md#metrics): scraped over real HTTP after SDK calls through the gateway,
parsed with prometheus_client's own parser; protected by a token and/or an allow-list; shared by the
worker processes of `uvicorn --workers 2` through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx2 as httpx
import pytest
from django.conf import settings as django_settings
from django.db.models import Sum
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import UpstreamAccount
from billing.models import UsageLog
from gateway import metrics
from tests.fake_upstream import ROOT
from tests.gateway.conftest import anthropic_sdk, gateway_app, ledger_rows, make_tenant, openai_sdk

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-for-tests-0123456789"
QUESTION = [{"role": "user", "content": "Say hello to the toll gate."}]

Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str, token: str = TOKEN, **headers) -> Samples:
    response = httpx.get(
        url + "/metrics", headers={"authorization": f"Bearer {token}", **headers}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there are none)."""
    return sum(
        sample_value
        for sample_name, sample_labels, sample_value in samples
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def settled() -> None:
    """Every recording of the in-process gateway is over (tokens and cost are counted after it)."""
    proxy = gateway_app().proxy
    deadline = time.monotonic() + 15
    while proxy.recordings and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []
    return TOKEN


def test_sdk_requests_are_counted_by_endpoint_status_and_model_with_tokens_and_cost(
    fake_upstream, gateway_url, token
):
    openai_tenant = make_tenant(fake_upstream, platform="openai")
    anthropic_tenant = make_tenant(fake_upstream, platform="anthropic")
    before = scrape(gateway_url)

    chat = openai_sdk(gateway_url, openai_tenant.secret)
    for _ in range(3):
        chat.chat.completions.create(model="gpt-4o", messages=QUESTION)
    messages = anthropic_sdk(gateway_url, anthropic_tenant.secret)
    messages.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=QUESTION)
    with messages.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=QUESTION) as stream:
        stream.get_final_message()
    with pytest.raises(Exception, match="401"):
        openai_sdk(gateway_url, "sk-not-a-key").chat.completions.create(model="gpt-4o", messages=QUESTION)
    ledger_rows(5)
    settled()
    after = scrape(gateway_url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    chat_labels = {"endpoint": "/v1/chat/completions", "status": "200", "model": "gpt-4o"}
    assert delta("tollgate_requests_total", **chat_labels) == 3
    assert delta("tollgate_request_duration_seconds_count", **chat_labels) == 3
    assert delta("tollgate_request_duration_seconds_bucket", le="+Inf", **chat_labels) == 3
    assert delta("tollgate_request_duration_seconds_sum", **chat_labels) > 0
    messages_labels = {"endpoint": "/v1/messages", "status": "200", "model": "claude-haiku-4-5"}
    assert delta("tollgate_requests_total", **messages_labels) == 2
    # A refusal before admission names no model (a client may invent any number of them).
    assert delta("tollgate_requests_total", endpoint="/v1/chat/completions", status="401", model="") == 1
    assert delta("tollgate_refusals_total", code="INVALID_API_KEY") == 1

    for model in ("gpt-4o", "claude-haiku-4-5"):
        rows = UsageLog.objects.filter(
            requested_model=model, api_key__user__in=[openai_tenant.user, anthropic_tenant.user]
        )
        sums = rows.aggregate(input=Sum("input_tokens"), output=Sum("output_tokens"), cost=Sum("actual_cost"))
        assert sums["input"] > 0 and sums["output"] > 0
        assert delta("tollgate_tokens_total", model=model, kind="input") == sums["input"]
        assert delta("tollgate_tokens_total", model=model, kind="output") == sums["output"]
        assert delta("tollgate_cost_usd_total", model=model) == pytest.approx(float(sums["cost"]))
        assert Decimal(str(sums["cost"])) > 0
    assert value(after, "tollgate_requests_in_flight") == 0


def test_a_failing_account_counts_an_upstream_error_and_a_failover_on_that_account(
    fake_upstream, gateway_url, token
):
    tenant = make_tenant(fake_upstream, platform="openai", scenarios=("status=500", ""))
    failing, healthy = tenant.accounts
    openai_sdk(gateway_url, tenant.secret).chat.completions.create(model="gpt-4o", messages=QUESTION)
    settled()
    samples = scrape(gateway_url)
    assert (
        value(samples, "tollgate_upstream_errors_total", account=str(failing.pk), kind="status", status="500")
        == 1
    )
    assert value(samples, "tollgate_failovers_total", account=str(failing.pk)) == 1
    assert value(samples, "tollgate_upstream_errors_total", account=str(healthy.pk)) == 0
    assert value(samples, "tollgate_failovers_total", account=str(healthy.pk)) == 0


def test_a_stream_in_flight_shows_in_the_in_flight_gauge(fake_upstream, gateway_url, token):
    tenant = make_tenant(fake_upstream, platform="anthropic", scenarios=("slow=100,words=20",))
    client = anthropic_sdk(gateway_url, tenant.secret)
    done = threading.Event()

    def stream() -> None:
        with client.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=QUESTION) as events:
            next(iter(events))
            done.wait(20)
            events.get_final_message()

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while value(scrape(gateway_url), "tollgate_requests_in_flight") != 1:
            assert time.monotonic() < deadline, "the stream never showed in flight"
            time.sleep(0.05)
    finally:
        done.set()
        worker.join(30)
    settled()
    assert value(scrape(gateway_url), "tollgate_requests_in_flight") == 0


def test_registered_gauge_sources_are_read_at_each_scrape_and_a_failing_one_is_left_out(
    fake_upstream, gateway_url, token
):
    make_tenant(fake_upstream, platform="openai", scenarios=("", ""))
    metrics.register_gauge_source(
        "test_accounts", lambda: UpstreamAccount.objects.count(), documentation="Accounts (ORM, DB thread)."
    )
    metrics.register_gauge_source(
        "test_accounts_by_platform",
        lambda: [
            ((platform,), UpstreamAccount.objects.filter(platform=platform).count())
            for platform in ("openai", "anthropic")
        ],
        labels=("platform",),
    )
    metrics.register_gauge_source("test_broken", lambda: 1 / 0)
    try:
        samples = scrape(gateway_url)
        assert value(samples, "tollgate_test_accounts") == 2
        assert value(samples, "tollgate_test_accounts_by_platform", platform="openai") == 2
        assert value(samples, "tollgate_test_accounts_by_platform", platform="anthropic") == 0
        assert not [name for name, _, _ in samples if name == "tollgate_test_broken"]
        make_tenant(fake_upstream, platform="anthropic")
        assert value(scrape(gateway_url), "tollgate_test_accounts") == 3
    finally:
        for name in ("test_accounts", "test_accounts_by_platform", "test_broken"):
            metrics.unregister_gauge_source(name)
    with pytest.raises(ValueError):
        metrics.register_gauge_source("not a name", lambda: 0)


# --- Protection ---------------------------------------------------------------------------------


def test_a_scrape_without_the_token_or_with_a_wrong_one_is_refused_401(gateway_url, token):
    bare = httpx.get(gateway_url + "/metrics", timeout=10)
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert "tollgate_requests" not in bare.text
    wrong = httpx.get(gateway_url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert scrape(gateway_url)  # the right one reads them


def test_an_address_outside_the_allow_list_is_refused_403_even_with_the_token(gateway_url, settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    refused = httpx.get(gateway_url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert refused.status_code == 403
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "127.0.0.1"]
    assert scrape(gateway_url)
    settings.METRICS_TOKEN = ""
    assert scrape(gateway_url, token="anything")  # the allow-list alone is enough when no token is set


def test_with_no_protection_set_production_refuses_and_the_embedded_default_answers_loopback_only(
    gateway_url, settings
):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = []
    settings.PRODUCTION = True
    assert httpx.get(gateway_url + "/metrics", timeout=10).status_code == 403
    settings.PRODUCTION = False
    assert httpx.get(gateway_url + "/metrics", timeout=10).status_code == 200
    # Behind a trusted proxy the client is the forwarded address, which is not loopback.
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    forwarded = httpx.get(gateway_url + "/metrics", headers={"x-forwarded-for": "203.0.113.9"}, timeout=10)
    assert forwarded.status_code == 403


def test_only_get_reads_the_metrics(gateway_url, token):
    response = httpx.post(gateway_url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 405


# --- Several worker processes ---------------------------------------------------------------------


def dead_process_files(directory: Path, script: str) -> int:
    """Run `script` in a process with PROMETHEUS_MULTIPROC_DIR=directory; its pid once it is gone."""
    process = subprocess.run(
        [sys.executable, "-c", script + "\nimport os; print(os.getpid())"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout.strip().splitlines()[-1])


WRITER = """
from prometheus_client import Counter, Gauge
Counter("t_requests", "r").inc(3)
Gauge("t_in_flight", "f", multiprocess_mode="livesum").inc(2)
"""


def test_start_up_keeps_a_dead_workers_counters_within_a_run_and_drops_everything_of_an_old_run(tmp_path):
    pid = dead_process_files(tmp_path, WRITER)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{pid}.db", f"gauge_livesum_{pid}.db"]

    # A worker of a new run (no marker, or another supervisor's) removes every file of the dead.
    assert metrics.cleanup_dead_processes(tmp_path, run="supervisor-1") == [pid]
    assert list(tmp_path.glob("*.db")) == []
    assert (tmp_path / metrics.RUN_MARKER).read_text() == "supervisor-1"

    # A worker that replaces a dead one in the same run: its requests are no longer in flight,
    # but what it counted stays in the totals.
    pid = dead_process_files(tmp_path, WRITER)
    assert metrics.cleanup_dead_processes(tmp_path, run="supervisor-1") == [pid]
    assert [p.name for p in tmp_path.glob("*.db")] == [f"counter_{pid}.db"]

    # A live process's files are never touched.
    live = subprocess.Popen(
        [sys.executable, "-c", WRITER + "\nimport sys; sys.stdin.read()"],
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / f"gauge_livesum_{live.pid}.db").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metrics.cleanup_dead_processes(tmp_path, run="supervisor-2") == [pid]
        assert sorted(p.name for p in tmp_path.glob("*.db")) == [
            f"counter_{live.pid}.db",
            f"gauge_livesum_{live.pid}.db",
        ]
    finally:
        live.communicate(b"", timeout=20)


def worker_pids(directory: Path, kind: str = "") -> set[int]:
    """The pids with files in `directory` (of `kind`: "counter" once a worker has counted a request)."""
    return {int(file.stem.rpartition("_")[2]) for file in directory.glob(f"{kind}*.db")}


def test_two_uvicorn_workers_report_every_request_once_and_a_killed_workers_in_flight_goes(
    fake_upstream, transactional_db, tmp_path
):
    # A real production server: `uvicorn --workers 2` with PROMETHEUS_MULTIPROC_DIR. About 20 s:
    # two workers start, one is killed mid-stream and uvicorn starts its replacement.
    tenant = make_tenant(fake_upstream, platform="openai")
    slow = make_tenant(fake_upstream, platform="anthropic", scenarios=("slow=300,words=60",))
    database = django_settings.DATABASES["default"]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--port",
            str(port),
            "--workers",
            "2",
            "--lifespan",
            "on",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "METRICS_TOKEN": TOKEN,
            "GATEWAY_DB_THREADS": "2",
        },
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(
                        url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}, timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "uvicorn did not start"
            time.sleep(0.2)

        # New connections until both workers have served some (the kernel picks the worker; the
        # second may still be starting).
        sent = 0
        deadline = time.monotonic() + 90
        while len(worker_pids(metrics_dir, "counter")) < 2 or sent < 10:
            with openai_sdk(url, tenant.secret) as client:
                client.chat.completions.create(model="gpt-4o", messages=QUESTION)
            sent += 1
            assert time.monotonic() < deadline, "one worker served every request"
        for _ in range(4):  # whichever worker answers, it reports both workers' requests
            samples = scrape(url)
            assert (
                value(samples, "tollgate_requests_total", endpoint="/v1/chat/completions", status="200")
                == sent
            )
            assert value(samples, "tollgate_requests_in_flight") == 0

        # A stream in flight on one worker; that worker is killed (-9) mid-stream.
        streaming = threading.Thread(target=_stream_until_cut, args=(url, slow.secret), daemon=True)
        streaming.start()
        deadline = time.monotonic() + 15
        while value(scrape(url), "tollgate_requests_in_flight") != 1:
            assert time.monotonic() < deadline, "the stream never showed in flight"
            time.sleep(0.05)
        serving = next(pid for pid in worker_pids(metrics_dir) if _in_flight_of(metrics_dir, pid) == 1)
        os.kill(serving, signal.SIGKILL)
        streaming.join(30)
        # uvicorn starts a replacement; its start-up forgets the dead worker's in-flight request
        # and keeps what it counted (a worker has its in-flight gauge's file from its start).
        deadline = time.monotonic() + 60
        while True:
            pids = worker_pids(metrics_dir) - {serving}
            try:
                samples = scrape(url)
            except (httpx.TransportError, AssertionError):
                samples = []
            if len(pids) >= 2 and samples and value(samples, "tollgate_requests_in_flight") == 0:
                break
            assert time.monotonic() < deadline, "no replacement worker tidied the dead one's gauge"
            time.sleep(0.2)
        assert (
            value(samples, "tollgate_requests_total", endpoint="/v1/chat/completions", status="200") == sent
        )
        assert not (metrics_dir / f"gauge_livesum_{serving}.db").exists()
        assert (metrics_dir / f"counter_{serving}.db").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _stream_until_cut(url: str, secret: str) -> None:
    try:
        with anthropic_sdk(url, secret).messages.stream(
            model="claude-haiku-4-5", max_tokens=64, messages=QUESTION
        ) as events:
            for _ in events:
                pass
    except Exception:
        pass  # the worker serving it is killed: the connection breaks


def _in_flight_of(directory: Path, pid: int) -> float:
    from prometheus_client.mmap_dict import MmapedDict

    path = directory / f"gauge_livesum_{pid}.db"
    if not path.exists():
        return 0
    return sum(entry[1] for entry in MmapedDict.read_all_values_from_file(str(path)))


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
