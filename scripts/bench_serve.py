"""Load-test ``llmrec serve`` on loopback: throughput, p50/p99 latency, errors.

Launch::

    python scripts/bench_serve.py --run runs/smollm2-lora --out bench/serve.json
    python scripts/bench_serve.py --run RUN --requests 1000 --concurrency 16 --endpoint recommend

Starts the server in a subprocess on 127.0.0.1 with a free port, waits for ``/health``, sends
``--requests`` POSTs from ``--concurrency`` async clients (httpx), prints a table, writes the
numbers as JSON (atomically), and stops the server. Request bodies cycle through the run's users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from llmrec.io import write_json

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_server(run: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "llmrec.cli", "serve", "--run", str(run), "--host", HOST, "--port", str(port),
               "--log-level", "warning", "--threads", str(threads)]
    return subprocess.Popen(command)


def wait_healthy(base: str, server: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it was healthy")
        try:
            response = httpx.get(f"{base}/health", timeout=2.0)
            if response.status_code == 200:
                return dict(response.json())
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/health did not answer within {timeout:.0f} s")


def bodies(endpoint: str, users: list[str], k: int, n: int) -> list[dict[str, Any]]:
    if endpoint == "explain":
        return [{"user_id": users[i % len(users)], "item_id": "1"} for i in range(n)]
    return [{"user_id": users[i % len(users)], "k": k} for i in range(n)]


async def load_test(base: str, endpoint: str, payloads: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            payload = queue.get_nowait()
            start = time.perf_counter()
            try:
                status = str((await http.post(f"{base}/{endpoint}", json=payload)).status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1000.0
    return {
        "requests": len(payloads), "concurrency": concurrency, "endpoint": endpoint, "wall_s": round(wall, 3),
        "throughput_rps": round(len(payloads) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2), "mean_ms": round(float(lat.mean()), 2),
        "errors": sum(count for status, count in statuses.items() if status != "200"), "statuses": statuses,
    }


def users_of(run: Path) -> list[str]:
    import pandas as pd

    from llmrec.run_loading import open_dataset, read_run_info

    dataset_root = open_dataset(read_run_info(run)).root
    frame = pd.read_parquet(dataset_root / "interactions.parquet", columns=["user_id"])
    return list(dict.fromkeys(frame["user_id"].astype(str).tolist()))


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llmrec serve: POST /{result['endpoint']} on {HOST}")
    for key in ("requests", "concurrency", "wall_s", "throughput_rps", "p50_ms", "p99_ms", "errors"):
        table.add_column(key, justify="right")
    table.add_row(*(str(result[k]) for k in ("requests", "concurrency", "wall_s", "throughput_rps", "p50_ms", "p99_ms", "errors")))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory to serve")
    parser.add_argument("--out", type=Path, default=Path("bench/serve.json"), help="JSON output (written atomically)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--endpoint", choices=["recommend", "explain", "tags"], default="recommend")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=0, help="server torch threads (0 = torch default; 1 for a busy CPU)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be >= 1")
    port = free_port()
    base = f"http://{HOST}:{port}"
    server = start_server(args.run, port, args.threads)
    # A SIGTERM (e.g. from `timeout`) must still stop the server: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        health = wait_healthy(base, server, args.startup_timeout)
        payloads = bodies(args.endpoint, users_of(args.run), args.k, args.requests)
        result = asyncio.run(load_test(base, args.endpoint, payloads, args.concurrency))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    result.update(run=args.run.name, model=health, k=args.k, server_threads=args.threads)
    print_table(result)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")}))


if __name__ == "__main__":
    main()
