"""The gateway's Prometheus metrics, served at GET /metrics (docs/gateway.md#metrics, README "Metrics").

What a request adds is a few in-memory increments after its response (`Observation`, `finish`):
the labelled children are looked up once per label set and kept, so the hot path costs a dict
lookup and an increment per metric.

**Several worker processes.** `uvicorn --workers N` runs N processes and a scrape reaches one of
them. With `PROMETHEUS_MULTIPROC_DIR` set in the environment (an empty directory the workers can
write), prometheus_client keeps every value in a memory-mapped file per process there, and a
scrape adds up the files of every worker (`MultiProcessCollector`). Without it each process counts
for itself (fine for one process). `start` runs when a worker starts and tidies the directory:
the files of processes that are gone (`cleanup_dead_processes`).

**Gauges of shared state.** Holds, concurrency slots and pending records live in the database or
Redis, shared by every worker: the code that owns them registers a callback with
`register_gauge_source`, and a scrape calls it (on a database thread, so it may use the ORM). The
value is reported as read, not added up across workers.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger("gateway.metrics")

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Read by prometheus_client when it is imported; the same variable tells us which mode it chose.
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
RUN_MARKER = ".tollgate-run"

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "tollgate_requests",
    "Gateway requests answered, by endpoint, HTTP status and model.",
    ["endpoint", "status", "model"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "tollgate_request_duration_seconds",
    "From a request's arrival to the last byte of its answer (a stream's whole length).",
    ["endpoint", "status", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
REFUSALS = Counter(
    "tollgate_refusals",
    "Answers the gateway made itself with an error code (docs/gateway.md#checks), by code.",
    ["code"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "tollgate_upstream_errors",
    "Upstream calls that failed, by account id, kind (connect, timeout, status, broken, cut) and status.",
    ["account", "kind", "status"],
    registry=REGISTRY,
)
FAILOVERS = Counter(
    "tollgate_failovers",
    "Requests moved on to another account after this account failed, by the account that failed.",
    ["account"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "tollgate_tokens",
    "Tokens recorded, by requested model and kind (input, output, cache_read, cache_write).",
    ["model", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "tollgate_cost_usd",
    "What recorded requests were charged (actual cost, USD), by requested model. The ledger's "
    "Decimal amounts are the truth; this float is for graphs.",
    ["model"],
    registry=REGISTRY,
)
ACCOUNT_COST = Counter(
    "tollgate_account_cost_usd",
    "What recorded requests cost on their upstream accounts (USD), by requested model.",
    ["model"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "tollgate_requests_in_flight",
    "Gateway requests being handled now (every worker's, added up).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)

LOOP_LAG = Histogram(
    "tollgate_event_loop_lag_seconds",
    "How late the event loop ran a tick due every GATEWAY_LOOP_WATCH_INTERVAL_MS "
    "(docs/gateway.md#event-loop-lag-and-stalls): the time it was busy elsewhere.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

OTHER_ENDPOINT = "other"
OTHER_MODEL = "other"


# --- Per request --------------------------------------------------------------------------------


class Observation:
    """One request as the metrics see it: filled while it runs, counted by `finish`."""

    __slots__ = ("endpoint", "status", "model")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.status = 0
        self.model = ""


CLIENT_LEFT = 499  # the status label of a request whose client left before any answer

current: ContextVar[Observation | None] = ContextVar("metrics_observation", default=None)
_children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
_models: set[str] = set()


def observing(observation: Observation) -> Token:
    return current.set(observation)


def note_model(model: str) -> None:
    """The request was admitted for `model`: its counts carry that model label from now on.
    (Refusals before admission carry none: a client could invent any number of model names.)"""
    observation = current.get()
    if observation is not None:
        observation.model = model_label(model)


def model_label(model: str) -> str:
    """`model`, or "other" once this process has labelled METRICS_MAX_MODELS distinct models."""
    if model in _models:
        return model
    if len(_models) >= settings.METRICS_MAX_MODELS:
        return OTHER_MODEL
    _models.add(model)
    return model


def finish(observation: Observation, seconds: float) -> None:
    """Count a request whose answer is over."""
    key = (observation.endpoint, observation.status or CLIENT_LEFT, observation.model)
    children = _children.get(key)
    if children is None:
        labels = (key[0], str(key[1]), key[2])
        children = _children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
    children[0].inc()
    children[1].observe(seconds)


def refused(code: str) -> None:
    REFUSALS.labels(code).inc()


def upstream_failed(account_id: int, kind: str, status: int | str) -> None:
    UPSTREAM_ERRORS.labels(str(account_id), kind, str(status)).inc()


def failed_over(account_id: int) -> None:
    FAILOVERS.labels(str(account_id)).inc()


def recorded(*, model: str, usage: Any, actual_cost: float, account_cost: float) -> None:
    """Tokens and cost of a request the ledger took (not a duplicate)."""
    model = model_label(model)
    for kind, count in (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write", usage.cache_creation_5m_tokens + usage.cache_creation_1h_tokens),
    ):
        if count:
            TOKENS.labels(model, kind).inc(count)
    if actual_cost:
        COST.labels(model).inc(actual_cost)
    if account_cost:
        ACCOUNT_COST.labels(model).inc(account_cost)


# --- Gauges of shared state ---------------------------------------------------------------------

GaugeValue = float | int | Iterable[tuple[tuple[str, ...], float]]
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class GaugeSources:
    """The registered callbacks, read at each scrape."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, tuple[str, ...], Callable[[], GaugeValue]]] = {}

    def collect(self):
        for name, (documentation, labels, callback) in list(self.sources.items()):
            try:
                value = callback()
            except Exception:
                logger.exception("metrics: the gauge source %s failed", name)
                continue
            family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels else None)
            if labels:
                for label_values, sample in value:
                    family.add_metric([str(part) for part in label_values], float(sample))
            else:
                family.add_metric([], float(value))
            yield family


SOURCES = GaugeSources()


def register_gauge_source(
    name: str, callback: Callable[[], GaugeValue], *, documentation: str = "", labels: Iterable[str] = ()
) -> None:
    """Report `tollgate_<name>` at every scrape, as `callback()` returns it.

    Without labels the callback returns a number; with `labels` an iterable of
    `(label_values, value)` pairs. It runs on a gateway database thread (the ORM is allowed) in
    whichever worker answers the scrape, so it should read the shared truth (database, Redis),
    not one process's memory. Registering a name again replaces its callback.
    """
    full = name if name.startswith("tollgate_") else f"tollgate_{name}"
    if not _NAME.match(full):
        raise ValueError(f"{full!r} is not a Prometheus metric name")
    SOURCES.sources[full] = (documentation or full.replace("_", " "), tuple(labels), callback)


def unregister_gauge_source(name: str) -> None:
    SOURCES.sources.pop(name if name.startswith("tollgate_") else f"tollgate_{name}", None)


# --- The scrape ---------------------------------------------------------------------------------


def render() -> bytes:
    """The exposition text: every worker's values with PROMETHEUS_MULTIPROC_DIR, else this process's."""
    if MULTIPROCESS_DIR:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)
        registry.register(SOURCES)
        return generate_latest(registry)
    return generate_latest(_single_process_registry())


@cache
def _single_process_registry() -> CollectorRegistry:
    # One process: its own CPU and memory figures too (in multiprocess mode they would be one
    # worker's, so they are left out there).
    ProcessCollector(registry=REGISTRY)
    REGISTRY.register(SOURCES)
    return REGISTRY


LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@cache
def _networks(listed: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in listed)


def _in(client_ip: str, networks: tuple[Any, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address.version == network.version and address in network for network in networks)


def refusal(*, authorization: bytes | None, client_ip: str) -> tuple[int, str] | None:
    """Why a scrape is refused (status, reason), or None when it may read the metrics.

    Each protection that is set must pass: `METRICS_ALLOWED_IPS` (403 from elsewhere) and
    `METRICS_TOKEN` (401 without `Authorization: Bearer <token>`). With neither, production
    refuses every scrape (403) and the embedded default answers loopback only.
    """
    token = settings.METRICS_TOKEN
    allowed = tuple(settings.METRICS_ALLOWED_IPS)
    if not token and not allowed:
        if settings.PRODUCTION:
            return 403, "Metrics are off: set METRICS_TOKEN or METRICS_ALLOWED_IPS."
        if not _in(client_ip, LOOPBACK):
            return 403, "Metrics answer loopback only until METRICS_TOKEN or METRICS_ALLOWED_IPS is set."
        return None
    if allowed and not _in(client_ip, _networks(allowed)):
        return 403, "This address may not read the metrics."
    if token:
        scheme, _, presented = (authorization or b"").decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return 401, "Send the metrics token as `Authorization: Bearer <token>`."
    return None


# --- Worker start-up ----------------------------------------------------------------------------


def start() -> None:
    """Run once per worker process at start-up: tidy the multiprocess directory."""
    if not MULTIPROCESS_DIR:
        if multiprocessing.parent_process() is not None:
            logger.warning(
                "metrics: this worker counts only its own requests; set PROMETHEUS_MULTIPROC_DIR "
                "to share them between workers (README: Metrics)"
            )
        return
    parent = multiprocessing.parent_process()
    owner = parent.pid if parent is not None else os.getpid()
    cleanup_dead_processes(Path(MULTIPROCESS_DIR), run=_process_identity(owner))


def cleanup_dead_processes(directory: Path, *, run: str) -> list[int]:
    """Remove what processes that are gone left in `directory`; the pids tidied.

    `run` names the server run this worker belongs to (its supervisor, or itself when it runs
    alone). Within one run a worker that died and was replaced keeps its counters and histograms
    (their totals must not drop) and loses its live gauges (`mark_process_dead`: its requests are
    no longer in flight). A new run removes every file of a process that is gone.
    """
    marker = directory / RUN_MARKER
    try:
        same_run = marker.read_text().strip() == run
    except FileNotFoundError:
        same_run = False
    dead = sorted({pid for pid in _pids_with_files(directory) if not _alive(pid)})
    for pid in dead:
        if same_run:
            prometheus_multiprocess.mark_process_dead(pid, path=str(directory))
        else:
            for file in directory.glob(f"*_{pid}.db"):
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
    if not same_run:
        temporary = directory / f"{RUN_MARKER}.{os.getpid()}"
        temporary.write_text(run)
        temporary.replace(marker)
    return dead


def _pids_with_files(directory: Path) -> set[int]:
    pids = set()
    for file in directory.glob("*.db"):
        tail = file.stem.rpartition("_")[2]
        if tail.isdigit():
            pids.add(int(tail))
    return pids


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_identity(pid: int) -> str:
    """The pid and, where /proc has it, the process's start time: a reused pid is another run."""
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = ""
    return f"{pid} {started}"
