"""The fake upstream reached directly, through Tollgate and through LiteLLM's proxy, side by side.

    make bench-gateway     (DATABASE_URL=postgres://… REDIS_URL=redis://…; about 10–12 minutes)
    .venv/bin/python -m bench.gateway [--quick] [--seconds 8] [--rounds 3] [--no-litellm] [--markdown FILE]

Three targets, every phase run on each of them back to back (interleaved), so a busy moment of
a shared machine falls on all three alike:

- (a) direct: the fake upstream (gateway/fake_upstream.py) in its own process;
- (b) Tollgate: `uvicorn config.asgi:application` in its own process(es) on PostgreSQL (a scratch
  database it creates and drops) and Redis, the key with a quota, 5h/1d/7d limits, a user
  concurrency limit and an account quota, every request recorded in the ledger;
- (c) LiteLLM's proxy (`litellm[proxy]` from PyPI, installed on first use in a throwaway venv
  under var/bench/litellm-venv; skipped with a message when it cannot be installed), one model
  pointed at the same fake upstream, a master key, no database (its spend logs need Prisma
  engines it downloads at run time, which this machine cannot fetch: it records nothing, which
  favours it).

Cases: chat completions as JSON and as a stream, at concurrency 1, 16 and 64, one worker each;
then both proxies again with two workers at concurrency 64.

A phase opens its connections and sends through a warm-up before its measured window, on the
same connections: the window opens a quarter of its length (at most 2 s) after the start, and not
before every connection has had its first answer (see _Window). It measures the steady state at
its concurrency rather than the opening wave. Latency and requests/s count the requests started
in the window; CPU per request is the server's CPU over the warm-up and the window divided by
the requests answered in both ("served"; errors count both too), and Tollgate's phase ends when every one of those has its ledger
row, so the recording is counted.

With one worker, concurrency 1 and 64 (whose added p50 and p99 are goals) run in three rounds
(`--rounds`): after the first round's full sequence, each further round runs those two
concurrencies again, both cases and every target, each round starting one target later than the
one before. At the defaults the rounds fall one to two minutes apart. Those two goals are the
medians of the rounds' ratios; each round's ratio, how many met the goal and the worst are
printed beside it. Why: one slow moment of the machine in one target's only phase used to decide
a goal (bench/HISTORY.md, "The night of 2026-12-03"). The CPU goal counts the first round and the
two-worker phases only, as before.

The load comes from a separate process (a minimal keep-alive HTTP/1.1 client on asyncio,
cheaper than any client library) so its CPU is never counted against a server. Each server's CPU
time is read from /proc/<pid>/stat for the server process and all its children (workers) before
and after each phase. Peak memory is VmHWM of the largest process of each server (per worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LITELLM_VENV = ROOT / "var" / "bench" / "litellm-venv"
LITELLM_KEY = "sk-litellm-bench"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello to the toll gate."}]}
CASES = (("chat JSON", False), ("chat stream", True))
TOLLGATES = ("Tollgate", "baseline")  # baseline: Tollgate from another checkout (--baseline)
GOALS = {
    "cpu": 1 / 5,  # CPU time per request, Tollgate / LiteLLM
    "p50": 1 / 5,  # added p50 latency at concurrency 1
    "p99": 1 / 10,  # added p99 latency at concurrency 64
    "rps": 3.0,  # requests/s at concurrency 64, two workers each (at least)
    "rss": 1 / 3,  # peak resident memory per worker
}


# --- the load generator (its own process) -----------------------------------------------------


def request_bytes(host: str, path: str, body: dict, headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _exchange(reader, writer, request: bytes) -> tuple[bool, float, float]:
    """Send one request, read the whole answer: (ok, seconds to first body byte, seconds in all)."""
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    ok = head.startswith(b"HTTP/1.1 200")
    lowered = head.lower()
    first = None
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if first is None and size:
                first = time.perf_counter()
            if size == 0:
                break
    else:
        length = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        first = time.perf_counter()
    done = time.perf_counter()
    return ok, (first or done) - started, done - started


# A connection whose first answer takes longer than this stops holding the measured window back.
FIRST_ANSWER_WAIT = 60.0


@dataclass
class _Window:
    """When a phase's measured window opens: `warm` seconds after the start, and not before every
    connection has had its first answer, so a slow server's opening wave stays out of it too (at
    concurrency 64 LiteLLM's first streams take longer than any fixed warm-up)."""

    earliest: float
    seconds: float
    connections: int
    answered: int = 0
    opens: float | None = None

    def first_answer(self, now: float) -> None:
        self.answered += 1
        if self.answered == self.connections:
            self.opens = max(self.earliest, now)

    def measures(self, began: float) -> bool:
        return self.opens is not None and began >= self.opens

    def still_open(self, now: float) -> bool:
        if self.opens is None and now > self.earliest + FIRST_ANSWER_WAIT:
            self.opens = now
        return self.opens is None or now < self.opens + self.seconds


async def _drive(host: str, port: int, request: bytes, warm: float, seconds: float, concurrency: int) -> dict:
    """`concurrency` connections, each sending `request` back to back through a warm-up and then
    the measured `seconds`, on the same connections: only requests started in the measured window
    count for latency and requests/s (see _Window). Without the warm-up, a phase's opening wave
    (every connection opened at once, the server's pools growing to the new concurrency) held most
    of the slowest 1% of Tollgate's phases at concurrency 64 in their first half second."""
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors = 0
    served = 0  # every 200, warm-up included: the server's CPU and ledger rows cover them all
    window = _Window(earliest=time.perf_counter() + warm, seconds=seconds, connections=concurrency)

    async def worker() -> None:
        nonlocal errors, served
        reader, writer = await asyncio.open_connection(host, port)
        answered = False
        try:
            while window.still_open(began := time.perf_counter()):
                try:
                    ok, ttfb, latency = await _exchange(reader, writer, request)
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                if not answered:
                    answered = True
                    window.first_answer(time.perf_counter())
                if not ok:
                    errors += 1
                    continue
                served += 1
                if window.measures(began):
                    latencies.append(latency)
                    ttfbs.append(ttfb)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"latencies": latencies, "ttfbs": ttfbs, "errors": errors, "served": served}


def _load_process(connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    while True:
        job = connection.recv()
        if job is None:
            return
        connection.send(asyncio.run(_drive(*job)))


class LoadGenerator:
    """A process of its own (spawned: no Django, no server state) that drives one phase at a time."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_load_process, args=(child,), daemon=True)
        self._process.start()

    def run(self, url: str, request: bytes, warm: float, seconds: float, concurrency: int) -> dict:
        address = urlsplit(url)
        self._connection.send((address.hostname, address.port, request, warm, seconds, concurrency))
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=10)


# --- the servers ----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (workers, their children), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads) and of their reaped children."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    workers: int
    log: Path | None = None

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.process.pid))

    def peak_rss_per_worker(self) -> float:
        return max(peak_rss_mb(pid) for pid in process_tree(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(
    name: str, command: list[str], *, env: dict, port: int, workers: int, cwd: Path, log: Path
) -> Server:
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, process, f"http://127.0.0.1:{port}", workers, log)


def wait_until_answering(server: Server, request: bytes, timeout: float) -> int:
    """Until `request` gets a 200 from every worker (a few tries) or the server exits; the 200s."""
    address = urlsplit(server.url)
    deadline = time.monotonic() + timeout
    successes = 0
    while successes < 4 * server.workers:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited: see {server.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not answer within {timeout:.0f} s: see {server.log}")
        try:
            ok = _on_own_loop(_one(address.hostname, address.port, request))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            ok = False
        if ok:
            successes += 1
        else:
            time.sleep(0.2)
    return successes


async def _one(host: str, port: int, request: bytes) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        ok, _, _ = await asyncio.wait_for(_exchange(reader, writer, request), 10)
        return ok
    finally:
        writer.close()


def _on_own_loop(coroutine):
    """asyncio.run on a thread of its own: the caller's thread may already run a loop (the test
    suite's Playwright keeps one running in the main thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def start_tollgate(
    database_url: str,
    redis_url: str,
    workers: int,
    scratch: Path,
    *,
    root: Path = ROOT,
    name: str = "Tollgate",
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "DEBUG": "false",
        "ALLOWED_HOSTS": "*",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        # This checkout's generated secrets for a --baseline checkout too: the tenant's account
        # credentials were encrypted with this checkout's key.
        "TOLLGATE_VAR_DIR": os.environ.get("TOLLGATE_VAR_DIR", str(ROOT / "var")),
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.pop("REDIS_URL", None)
    command = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    command += ["--lifespan", "on"]
    log = scratch / f"{name}.log"
    return start(name, command, env=env, port=port, workers=workers, cwd=root, log=log)


def litellm_python() -> Path | None:
    """The throwaway venv's python with litellm[proxy] installed (installs it on first use); None
    when that is impossible here."""
    python = LITELLM_VENV / "bin" / "python"
    if (
        python.exists()
        and subprocess.run(
            [python, "-c", "import litellm.proxy.proxy_server"], capture_output=True
        ).returncode
        == 0
    ):
        return python
    base = shutil.which("python3.12") or sys.executable
    print(f"installing litellm[proxy] into {LITELLM_VENV} (first run only) …", flush=True)
    try:
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "litellm[proxy]"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as error:
        print(f"LiteLLM could not be installed ({error}); column (c) is skipped.")
        return None
    return python


def start_litellm(python: Path, upstream_url: str, workers: int, scratch: Path) -> Server:
    port = free_port()
    config = scratch / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: sk-bench-upstream\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  set_verbose: false\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS", "DJANGO", "VIRTUAL_ENV"))
    }
    # The price list ships in the package; without this it tries the network first.
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", PYTHONUNBUFFERED="1")
    command = [str(python), str(python.parent / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", str(workers)]
    return start(
        "LiteLLM", command, env=env, port=port, workers=workers, cwd=scratch, log=scratch / "litellm.log"
    )


# --- Tollgate's tenant -------------------------------------------------------------------------------


def tenant(upstream_url: str) -> str:
    """A user, a group, an account at the fake upstream and a key, every limit switched on (with
    room for the whole run); the key's secret."""
    from accounts.models import APIKey, GroupAccount, UpstreamAccount, User
    from accounts.services.groups import group_create
    from accounts.services.keys import api_key_create
    from accounts.services.upstream import upstream_account_create

    big = Decimal("1000000")
    user = User.objects.create_user(email="bench-gateway@example.com", password=None, balance=big)
    User.objects.filter(pk=user.pk).update(concurrency=1000)
    user.refresh_from_db()
    group = group_create(fields={"name": "bench-openai", "platform": "openai"}, actor=None)
    account = upstream_account_create(
        fields={"name": "bench-openai", "platform": "openai", "type": "apikey", "concurrency": 0},
        credentials={"api_key": "sk-bench-upstream", "base_url": upstream_url},
        actor=None,
    )
    UpstreamAccount.objects.filter(pk=account.pk).update(
        quota_limit_usd=big, quota_daily_limit_usd=big, quota_weekly_limit_usd=big
    )
    GroupAccount.objects.create(group=group, account=account)
    key, secret = api_key_create(user=user, group=group, name="bench-openai")
    APIKey.objects.filter(pk=key.pk).update(
        quota_usd=big, rate_limit_5h_usd=big, rate_limit_1d_usd=big, rate_limit_7d_usd=big
    )
    return secret


def ledger_rows() -> int:
    from billing.models import UsageLog

    return UsageLog.objects.count()


def wait_for_ledger(expected: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while (rows := ledger_rows()) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


# --- phases ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    case: str
    concurrency: int
    workers: int
    target: str
    requests: int
    errors: int
    rps: float
    p50: float
    p90: float
    p99: float
    ttfb50: float
    cpu_per_request: float | None  # seconds; None for the fake upstream reached directly
    round_number: int = 1  # phases at the highest concurrency run in several interleaved rounds
    served: int = 0  # requests answered 200, warm-up included (what the CPU time was spent on)
    cpu_seconds: float | None = None  # the server's CPU over the warm-up and the measured window


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


@dataclass
class Bench:
    load: LoadGenerator
    upstream_url: str
    seconds: float
    secret: str
    recorded: int = 0  # requests Tollgate has served so far: each leaves one ledger row
    phases: list[Phase] = field(default_factory=list)

    def requests(self, stream: bool, url: str, target: str) -> bytes:
        host = urlsplit(url).netloc
        body = {**CHAT, "stream": True} if stream else CHAT
        if target == "direct":
            if stream:
                body = {**body, "stream_options": {"include_usage": True}}
            return request_bytes(host, "/v1/chat/completions", body, {"authorization": "Bearer sk-direct"})
        secret = self.secret if target in TOLLGATES else LITELLM_KEY
        return request_bytes(host, "/v1/chat/completions", body, {"authorization": f"Bearer {secret}"})

    def phase(
        self,
        case: str,
        stream: bool,
        concurrency: int,
        workers: int,
        target: str,
        server: Server | None,
        round_number: int = 1,
    ) -> Phase:
        url = server.url if server else self.upstream_url
        request = self.requests(stream, url, target)
        cpu_before = server.cpu() if server else 0.0
        result = self.load.run(url, request, min(2.0, self.seconds / 4), self.seconds, concurrency)
        served = result["served"]
        if target in TOLLGATES:
            self.recorded += served
            rows = wait_for_ledger(self.recorded)
            if rows < self.recorded:
                raise RuntimeError(f"Tollgate served {self.recorded} requests but recorded {rows}")
        cpu = (server.cpu() - cpu_before) if server else None
        latencies = result["latencies"]
        phase = Phase(
            case=case,
            concurrency=concurrency,
            workers=workers,
            target=target,
            requests=len(latencies),
            errors=result["errors"],
            rps=len(latencies) / self.seconds,
            p50=percentile(latencies, 0.5),
            p90=percentile(latencies, 0.9),
            p99=percentile(latencies, 0.99),
            ttfb50=percentile(result["ttfbs"], 0.5) if stream else float("nan"),
            # The CPU of the warm-up and the measured window over the requests of both.
            cpu_per_request=(cpu / served if served else None) if cpu is not None else None,
            round_number=round_number,
            served=served,
            cpu_seconds=cpu,
        )
        self.phases.append(phase)
        print(row_text(phase), flush=True)
        return phase

    def find(
        self, case: str, concurrency: int, workers: int, target: str, round_number: int = 1
    ) -> Phase | None:
        wanted = (case, concurrency, workers, target, round_number)
        for phase in self.phases:
            if (phase.case, phase.concurrency, phase.workers, phase.target, phase.round_number) == wanted:
                return phase
        return None

    def rounds(self, case: str, concurrency: int) -> list[int]:
        """The rounds measured of a one-worker phase (several at the lowest and highest concurrency)."""
        return sorted(
            {
                p.round_number
                for p in self.phases
                if (p.case, p.concurrency, p.workers) == (case, concurrency, 1)
            }
        )


def ms(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value * 1000:.2f}"


HEADER = (
    "| case | conc | workers | round | target | measured | req/s | p50 ms | p90 ms | p99 ms | TTFB p50 ms "
    "| served | CPU/served ms | errors |"
)


def row_text(phase: Phase) -> str:
    return (
        f"| {phase.case} | {phase.concurrency} | {phase.workers} | {phase.round_number} | {phase.target} | "
        f"{phase.requests} | "
        f"{phase.rps:,.0f} | {ms(phase.p50)} | {ms(phase.p90)} | {ms(phase.p99)} | {ms(phase.ttfb50)} | "
        f"{phase.served} | {ms(phase.cpu_per_request)} | {phase.errors} |"
    )


def verdict(ratio: float | None, goal: float, *, at_least: bool = False) -> str:
    if ratio is None or ratio != ratio:
        return "n/a"
    met = ratio >= goal if at_least else ratio <= goal
    return f"{ratio:.3f} ({'met' if met else 'NOT met'}; goal {'≥' if at_least else '≤'} {goal:.3g})"


def cpu_per_request(bench: Bench, case: str, target: str) -> float | None:
    """A target's CPU seconds per request served over the first round's phases and the two-worker
    ones: the further rounds at concurrency 64 would weigh that concurrency three times."""
    phases = [
        p
        for p in bench.phases
        if (p.case, p.target, p.round_number) == (case, target, 1) and p.cpu_seconds is not None
    ]
    served = sum(p.served for p in phases)
    return sum(p.cpu_seconds for p in phases) / served if served else None


def added_ratio(bench: Bench, case: str, concurrency: int, attribute: str, number: int) -> float | None:
    """Tollgate's added latency ÷ LiteLLM's (p50 or p99 through the proxy − the same direct), in
    one round of one-worker phases; None when a phase is missing."""
    direct = bench.find(case, concurrency, 1, "direct", number)
    ours = bench.find(case, concurrency, 1, "Tollgate", number)
    theirs = bench.find(case, concurrency, 1, "LiteLLM", number)
    if not (direct and ours and theirs):
        return None
    return (getattr(ours, attribute) - getattr(direct, attribute)) / (
        getattr(theirs, attribute) - getattr(direct, attribute)
    )


def latency_goal(bench: Bench, case: str, concurrency: int, attribute: str) -> str:
    """The goal line of an added-latency ratio: one round's, or the median of several with each."""
    ratios = [
        ratio
        for number in bench.rounds(case, concurrency)
        if (ratio := added_ratio(bench, case, concurrency, attribute, number)) is not None
    ]
    title = f"- {case}: added {attribute} at concurrency {concurrency}"
    if not ratios:
        return f"{title}: n/a"
    if len(ratios) == 1:
        return f"{title}: {verdict(ratios[0], GOALS[attribute])}"
    each = " / ".join(f"{ratio:.3f}" for ratio in ratios)
    met = sum(ratio <= GOALS[attribute] for ratio in ratios)
    return (
        f"{title}, median of {len(ratios)} rounds ({each}; met in {met} of {len(ratios)}, "
        f"worst {max(ratios):.3f}): {verdict(statistics.median(ratios), GOALS[attribute])}"
    )


def summary(
    bench: Bench, rss: dict[str, float], concurrencies: tuple[int, ...], two_workers: bool
) -> list[str]:
    lines = ["", "**Added latency** (p50 through the proxy − p50 direct; p99 likewise):", ""]
    lines.append(
        "| case | conc | round | Tollgate added p50 | LiteLLM added p50 | Tollgate added p99 | LiteLLM added p99 |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for case, _stream in CASES:
        for concurrency in concurrencies:
            for number in bench.rounds(case, concurrency):
                direct = bench.find(case, concurrency, 1, "direct", number)
                cells = []
                for attribute in ("p50", "p99"):
                    for target in ("Tollgate", "LiteLLM"):
                        phase = bench.find(case, concurrency, 1, target, number)
                        cells.append(
                            ms(getattr(phase, attribute) - getattr(direct, attribute))
                            if phase and direct
                            else "–"
                        )
                lines.append(f"| {case} | {concurrency} | {number} | {' | '.join(cells)} |")
    lines += ["", "**Goals** (Tollgate ÷ LiteLLM, same run):", ""]
    for case, _stream in CASES:
        mine = cpu_per_request(bench, case, "Tollgate")
        other = cpu_per_request(bench, case, "LiteLLM")
        if mine and other:
            lines.append(
                f"- {case}: CPU per request {mine * 1000:.2f} ms vs {other * 1000:.2f} ms: "
                f"{verdict(mine / other, GOALS['cpu'])}"
            )
        lines.append(latency_goal(bench, case, min(concurrencies), "p50"))
        lines.append(latency_goal(bench, case, max(concurrencies), "p99"))
        if two_workers:
            a = bench.find(case, max(concurrencies), 2, "Tollgate")
            b = bench.find(case, max(concurrencies), 2, "LiteLLM")
            if a and b and b.rps:
                lines.append(
                    f"- {case}: requests/s at concurrency {max(concurrencies)}, two workers each: "
                    f"{a.rps:,.0f} vs {b.rps:,.0f}: {verdict(a.rps / b.rps, GOALS['rps'], at_least=True)}"
                )
    for case, _stream in CASES:
        mine = cpu_per_request(bench, case, "Tollgate")
        then = cpu_per_request(bench, case, "baseline")
        if mine and then:
            lines.append(
                f"- {case}: CPU per request, this checkout {mine * 1000:.2f} ms vs baseline {then * 1000:.2f} ms "
                f"({(mine / then - 1) * 100:+.0f}%)"
            )
    if "baseline" in rss:
        lines.append(f"- peak RSS per worker, baseline: {rss['baseline']:.0f} MB")
    if "Tollgate" in rss and "LiteLLM" in rss:
        lines.append(
            f"- peak RSS per worker: {rss['Tollgate']:.0f} MB vs {rss['LiteLLM']:.0f} MB: "
            f"{verdict(rss['Tollgate'] / rss['LiteLLM'], GOALS['rss'])}"
        )
    elif "Tollgate" in rss:
        lines.append(f"- peak RSS per worker: Tollgate {rss['Tollgate']:.0f} MB (LiteLLM not run)")
    return lines


# --- the run -----------------------------------------------------------------------------------------


def run(
    *,
    database_url: str,
    redis_url: str,
    seconds: float,
    concurrencies: tuple[int, ...],
    two_workers: bool,
    litellm: bool,
    baseline: Path | None = None,
    rounds: int = 1,
) -> tuple[list[str], Bench]:
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    """Run every phase against a database that exists and is migrated (the current Django
    connection's, reached by the servers at `database_url`); the report's lines and the phases.
    With one worker the lowest and the highest concurrency run in `rounds` rounds: after the first
    round's full sequence, each further round runs those phases again (both cases, every target),
    and the latency goals are the medians of the rounds' ratios."""
    from bench.common import machine
    from tests.fake_upstream import running_fake_upstream

    lines = [f"bench/gateway: {machine()} · load average {os.getloadavg()[0]:.1f} at the start", ""]
    print(lines[0], flush=True)
    python = litellm_python() if litellm else None
    if not litellm:
        print("LiteLLM: not run (--no-litellm).")
    scratch = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    load = LoadGenerator()
    servers: list[Server] = []
    rss: dict[str, float] = {}
    try:
        with running_fake_upstream() as upstream:
            secret = tenant(upstream.url)
            bench = Bench(load=load, upstream_url=upstream.url, seconds=seconds, secret=secret)
            worker_counts = (1, 2) if two_workers else (1,)
            print(HEADER, flush=True)
            for workers in worker_counts:
                tollgate = start_tollgate(database_url, redis_url, workers, scratch)
                servers.append(tollgate)
                before = None
                if baseline is not None:
                    before = start_tollgate(
                        database_url, redis_url, workers, scratch, root=baseline, name="baseline"
                    )
                    servers.append(before)
                    bench.recorded += wait_until_answering(
                        before, bench.requests(False, before.url, "baseline"), 120
                    )
                other = start_litellm(python, upstream.url, workers, scratch) if python else None
                if other:
                    servers.append(other)
                bench.recorded += wait_until_answering(
                    tollgate, bench.requests(False, tollgate.url, "Tollgate"), 120
                )
                if other:
                    try:
                        wait_until_answering(other, bench.requests(False, other.url, "LiteLLM"), 600)
                    except RuntimeError as error:
                        print(f"LiteLLM skipped: {error}")
                        other.stop()
                        other, python = None, None
                wait_for_ledger(bench.recorded)  # the start-up probes' rows
                ends = tuple(sorted({min(concurrencies), max(concurrencies)}))
                for number in range(1, (rounds if workers == 1 else 1) + 1):
                    if workers > 1:
                        phase_concurrencies = (max(concurrencies),)
                    else:
                        phase_concurrencies = concurrencies if number == 1 else ends
                    for case, stream in CASES:
                        for concurrency in phase_concurrencies:
                            targets = [
                                ("direct", None),
                                ("Tollgate", tollgate),
                                ("baseline", before),
                                ("LiteLLM", other),
                            ]
                            # Each further round starts one target later, so whatever one target
                            # leaves behind (PostgreSQL's writes after Tollgate's) falls on each.
                            shift = (number - 1) % len(targets)
                            for target, server in targets[shift:] + targets[:shift]:
                                if server or target == "direct":
                                    bench.phase(case, stream, concurrency, workers, target, server, number)
                if workers == 1:
                    rss["Tollgate"] = tollgate.peak_rss_per_worker()
                    if other:
                        rss["LiteLLM"] = other.peak_rss_per_worker()
                if before:
                    rss["baseline"] = before.peak_rss_per_worker()
                for server in (tollgate, before, other):
                    if server:
                        server.stop()
            lines += [HEADER, "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [row_text(phase) for phase in bench.phases]
            lines += summary(bench, rss, concurrencies, two_workers)
    finally:
        for server in servers:
            server.stop()
        load.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return lines, bench


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="each phase's measured window (default 8); a warm-up of a quarter of it (at most 2 s) precedes it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 s measured windows, concurrency 1 and 16, one worker, one round",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip column (c)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds of the one-worker phases at the lowest and highest concurrency (default 3; 1 with --quick)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""), help="default: $REDIS_URL")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run Tollgate from this checkout (e.g. a worktree of main), interleaved: before/after",
    )
    options = parser.parse_args(argv)
    if options.rounds is not None and options.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = options.rounds or (1 if options.quick else 3)
    from bench.common import scratch_database, setup_django

    setup_django()
    from django.conf import settings

    with scratch_database() as name:
        db = settings.DATABASES["default"]
        database_url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{name}"
        lines, _bench = run(
            database_url=database_url,
            redis_url=options.redis_url,
            seconds=1.0 if options.quick else options.seconds,
            concurrencies=(1, 16) if options.quick else (1, 16, 64),
            two_workers=not options.quick,
            litellm=not options.no_litellm,
            baseline=options.baseline,
            rounds=rounds,
        )
    print("\n".join(["", *lines]))
    if options.markdown:
        options.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
