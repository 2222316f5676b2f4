"""What the fake upstream costs per request: CPU time, throughput and memory, JSON and streaming.

    .venv/bin/python -m bench.fake_upstream [--requests 4000]

Starts the fake upstream in its own process (as benchmarks and tests run it) and drives it from
this one with a minimal keep-alive HTTP/1.1 client on asyncio, so that the client costs little
next to the server on a 2-core machine. The server's CPU time comes from /proc/<pid>/stat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fake_upstream import running_fake_upstream  # noqa: E402

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello to the toll gate."}]}
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": CHAT["messages"]}
CASES = [
    ("chat JSON", "/v1/chat/completions", CHAT, {"authorization": "Bearer sk-bench"}),
    (
        "chat stream + usage",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        {"authorization": "Bearer sk-bench"},
    ),
    (
        "messages stream",
        "/v1/messages",
        {**MESSAGE, "stream": True},
        {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
    ),
    (
        # 24 chunks 5 ms apart: the pacing (a disconnect watch and a timer per chunk) costs CPU too.
        "messages stream slow=5",
        "/v1/messages",
        {**MESSAGE, "stream": True},
        {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01", "x-fake-scenario": "slow=5"},
    ),
]


def request_bytes(host: str, path: str, body: dict, headers: dict[str, str]) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", "content-type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"content-length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(lowered.split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def drive(url: str, request: bytes, total: int, concurrency: int) -> list[float]:
    address = urlsplit(url)
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            writer.write(request)
            await read_response(reader)
            latencies.append(time.perf_counter() - started)
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per case at concurrency 64")
    options = parser.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'case':<22}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server CPU/req':>16}")
    with running_fake_upstream() as upstream:
        pid = upstream.process.pid
        host = urlsplit(upstream.url).netloc
        for name, path, body, headers in CASES:
            request = request_bytes(host, path, body, headers)
            paced = "x-fake-scenario" in headers
            runs = (
                ((1, 40), (64, options.requests // 4))
                if paced
                else ((1, options.requests // 4), (64, options.requests))
            )
            for concurrency, total in runs:
                asyncio.run(drive(upstream.url, request, 200, min(concurrency, 8)))  # warm up
                cpu_before, started = cpu_seconds(pid), time.perf_counter()
                latencies = sorted(asyncio.run(drive(upstream.url, request, total, concurrency)))
                elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
                print(
                    f"{name:<22}{concurrency:>5}{total / elapsed:>9.0f}"
                    f"{statistics.median(latencies) * 1000:>9.2f}{latencies[int(len(latencies) * 0.99)] * 1000:>9.2f}"
                    f"{cpu / total * 1000:>13.3f} ms"
                )
        served = upstream.health()["served"]
        print(f"server RSS after {served} requests (all kept in its log): {rss_mb(pid):.0f} MB")


if __name__ == "__main__":
    main()
