"""Load test: many concurrent MCP clients against a real `alma-mcp serve --http` process.

    python bench/load.py [--clients 20] [--calls 3000] [--learn-share 0.3]

Starts the server on a free loopback port with a fresh data directory and a bearer token,
waits for the embedding model, then runs `--clients` Streamable HTTP sessions at once, each
making its share of `--calls` mixed `alma_retrieve` / `alma_learn` calls (tasks from the
retrieval benchmark corpus). Afterwards the server is restarted (a fresh process) and every
acknowledged learn is looked up by id: a missing one is a lost write.

Prints throughput, latency percentiles per tool, errors and lost writes. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

DATA = Path(__file__).resolve().parent / "data"
AGENTS = ["helena", "victor", "orion", "mira"]
STRATEGIES = [
    "Reproduce the failure with a minimal test first, then fix and keep the test",
    "Stub the external service with a recorded response and assert on the request body",
    "Wait for the network to be idle before asserting on the rendered page",
    "Add a database index on the filtered column and compare the query plan before and after",
    "Retry the flaky step with exponential backoff and log each attempt",
]


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(config: Path, token: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", ALMA_MCP_TOKEN=token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), "--log-level", "WARNING", "serve", "--http", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit("the server exited while starting")
        try:
            httpx2.get(url, timeout=1)
            return proc, url
        except httpx2.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start within 120 s") from None
            time.sleep(0.1)


def client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(300))
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def wait_ready(url: str, token: str) -> None:
    async with client(url, token) as session:
        with anyio.fail_after(180):
            while True:
                health = await session.call_tool("alma_health", {})
                if health.structured_content and health.structured_content["embedding_model_ready"]:
                    return
                await anyio.sleep(0.2)


async def run_load(url: str, token: str, clients: int, calls: int, learn_share: float, tasks: list[str]) -> dict:
    latencies: dict[str, list[float]] = {"alma_retrieve": [], "alma_learn": []}
    errors: list[str] = []
    acknowledged: list[str] = []
    per_client = [calls // clients + (1 if n < calls % clients else 0) for n in range(clients)]

    async def one_client(n: int) -> None:
        rng = random.Random(n)
        agent = AGENTS[n % len(AGENTS)]
        try:
            async with client(url, token) as session:
                for _ in range(per_client[n]):
                    task = rng.choice(tasks)
                    if rng.random() < learn_share:
                        name = "alma_learn"
                        args = {
                            "agent": agent,
                            "task": task,
                            "outcome": rng.choice(["success", "success", "failure"]),
                            "strategy_used": rng.choice(STRATEGIES),
                            "task_type": "load",
                        }
                    else:
                        name, args = "alma_retrieve", {"agent": agent, "task": task}
                    started = time.perf_counter()
                    try:
                        result = await session.call_tool(name, args)
                    except Exception as exc:  # a transport failure counts as an error, and the run goes on
                        errors.append(f"{name}: {type(exc).__name__}: {exc}")
                        continue
                    latencies[name].append(time.perf_counter() - started)
                    if result.is_error:
                        errors.append(f"{name}: {result.content[0].text if result.content else '?'}")
                    elif name == "alma_learn":
                        acknowledged.append(result.structured_content["outcome_id"])
        except Exception as exc:
            errors.append(f"session {n}: {type(exc).__name__}: {exc}")

    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for n in range(clients):
            group.start_soon(one_client, n)
    wall = time.perf_counter() - started
    return {"latencies": latencies, "errors": errors, "acknowledged": acknowledged, "wall": wall}


async def count_lost(url: str, token: str, ids: list[str]) -> int:
    lost = 0
    async with client(url, token) as session:
        for memory_id in ids:
            found = False
            for agent in AGENTS:  # an outcome is read as the agent that recorded it
                try:
                    uri = f"alma://memories/{memory_id}?agent={agent}"
                    detail = json.loads((await session.read_resource(uri)).contents[0].text)
                except Exception:
                    continue
                found = detail["memory"]["id"] == memory_id
                break
            lost += not found
    return lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--calls", type=int, default=3000, help="total calls over all clients")
    parser.add_argument("--learn-share", type=float, default=0.3, help="share of calls that are alma_learn")
    args = parser.parse_args()

    tasks = [json.loads(line)["task"] for line in (DATA / "retrieval_tasks.jsonl").read_text().splitlines() if line.strip()]
    root = Path(tempfile.mkdtemp(prefix="alma-load-"))
    config = root / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("alma:\n  project_id: load\n  allow_undeclared_agents: true\n", encoding="utf-8")
    token = secrets.token_urlsafe(24)

    proc, url = start_server(config, token)
    try:
        log(f"server pid {proc.pid} at {url}; waiting for the embedding model")
        anyio.run(wait_ready, url, token)
        log(f"running {args.calls} calls from {args.clients} concurrent clients")
        result = anyio.run(run_load, url, token, args.clients, args.calls, args.learn_share, tasks)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log("restarting the server to verify every acknowledged learn")
    proc, url = start_server(config, token)
    try:
        lost = anyio.run(count_lost, url, token, result["acknowledged"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    lat = result["latencies"]
    done = sum(len(v) for v in lat.values())
    print(f"\nalma-mcp load test: {args.clients} concurrent HTTP clients, {args.calls} calls "
          f"({int(args.learn_share * 100)}% alma_learn), one `alma-mcp serve --http` process\n")
    print(f"| {'tool':<14} | {'calls':>6} | {'p50 ms':>7} | {'p95 ms':>7} | {'p99 ms':>7} | {'mean ms':>7} |")
    print(f"|{'-' * 16}|{'-' * 8}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, values in [*lat.items(), ("all", [v for vs in lat.values() for v in vs])]:
        ms = [v * 1000 for v in values]
        print(
            f"| {name:<14} | {len(ms):>6} | {percentile(ms, 50):>7.1f} | {percentile(ms, 95):>7.1f} | "
            f"{percentile(ms, 99):>7.1f} | {statistics.fmean(ms) if ms else float('nan'):>7.1f} |"
        )
    print()
    print(f"wall time          {result['wall']:.1f} s")
    print(f"throughput         {done / result['wall']:.1f} calls/s")
    print(f"errors             {len(result['errors'])}")
    print(f"acknowledged learns {len(result['acknowledged'])}")
    print(f"lost writes        {lost}  (acknowledged learns not found after a server restart)")
    for line in result["errors"][:10]:
        print("  error:", line[:200])
    if result["errors"] or lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
