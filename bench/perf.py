"""Performance: cold start, retrieve and learn latency by store size, server memory.

    python bench/perf.py [--sizes 1000,10000,100000] [--retrieves 100] [--learns 40] [--preload on|off|off,on]

For each size, the store is filled (cumulatively) with synthetic memories for one agent
(bench/common.py's filler: real embeddings of sentence halves, distinct texts), then a real
`alma-mcp` stdio server is spawned on it, as a host would, and driven with JSON-RPC:

- cold start: spawn to `initialize` answered, to the first `alma_retrieve` answered (sent at
  once: it waits for the embedding model and for its collections' search indexes), and to
  `alma_health` reporting every collection's index read (the start-up preload, in the
  background); the timed calls below start after it;
- `alma_retrieve` p50/p95 over distinct tasks from the benchmark corpus (no cache hits);
- `alma_learn` p50/p95 (after one untimed first learn, reported apart: it runs the decay sweep);
- the server's resident memory (RSS now, and its peak) read from /proc.

Figures go to stdout as a table; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PROJECT, filler_sentences, load_tasks, log, make_filler, percentiles, put_in_batches  # noqa: E402

from alma_mcp.config import parse_config  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402

AGENT = "helena"


class StdioServer:
    """A spawned `alma-mcp` stdio server and a minimal synchronous JSON-RPC client for it."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", TOKENIZERS_PARALLELISM="false")
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alma_mcp", "--config", str(config), "--log-level", "WARNING"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._next = 0

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        message = {"jsonrpc": "2.0", "id": self._next, "method": method, "params": params}
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the server closed its stdout")
            reply = json.loads(line)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def notify(self, method: str) -> None:
        self.proc.stdin.write((json.dumps({"jsonrpc": "2.0", "method": method}) + "\n").encode())
        self.proc.stdin.flush()

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        if result.get("isError"):
            raise RuntimeError(f"{tool}: {result['content'][0]['text']}")
        return result

    def memory_mb(self) -> tuple[float, float]:
        """(resident now, peak resident) in MB, from /proc."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(config: Path, tasks: list[str], retrieves: int, learns: int) -> dict[str, Any]:
    server = StdioServer(config)
    try:
        server.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench-perf", "version": "1"}},
        )
        initialized = time.perf_counter() - server.spawned
        server.notify("notifications/initialized")
        server.call("alma_retrieve", {"agent": AGENT, "task": tasks[0]})
        first_retrieve = time.perf_counter() - server.spawned
        preloaded = None
        while True:  # the search indexes are read in the background from the start (preload_indexes)
            status = server.call("alma_health", {})["structuredContent"]["search_indexes"]
            if status.startswith("preloaded"):
                preloaded = time.perf_counter() - server.spawned
                break
            if status == "read when first searched":  # preload_indexes: false
                break
            assert status.startswith("preloading"), status
            time.sleep(0.1)

        retrieve_ms = []
        for task in tasks[1 : 1 + retrieves]:
            started = time.perf_counter()
            server.call("alma_retrieve", {"agent": AGENT, "task": task})
            retrieve_ms.append((time.perf_counter() - started) * 1000)

        def learn(i: int) -> float:
            started = time.perf_counter()
            server.call(
                "alma_learn",
                {"agent": AGENT, "task": tasks[i % len(tasks)], "outcome": "success" if i % 3 else "failure",
                 "strategy_used": f"Strategy number {i % 7}: check the logs, then fix the smallest failing piece"},
            )
            return (time.perf_counter() - started) * 1000

        first_learn = learn(0)
        learn_ms = [learn(i) for i in range(1, 1 + learns)]
        rss, peak = server.memory_mb()
    finally:
        server.close()
    return {
        "initialize_s": initialized,
        "first_retrieve_s": first_retrieve,
        "preloaded_s": preloaded,
        "retrieve": percentiles(retrieve_ms),
        "first_learn_ms": first_learn,
        "learn": percentiles(learn_ms),
        "rss_mb": rss,
        "peak_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--retrieves", type=int, default=100)
    parser.add_argument("--learns", type=int, default=40)
    parser.add_argument(
        "--preload", default="on", help="preload_indexes for the server: on, off, or off,on (each size measured both ways, in that order)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    arms = args.preload.split(",")
    assert set(arms) <= {"on", "off"}, "--preload takes on, off or both, comma-separated"

    root = Path(tempfile.mkdtemp(prefix="alma-perf-"))
    configs = {}
    for arm in arms:  # one config per arm, on the same store
        configs[arm] = root / arm / ".alma" / "config.yaml"
        configs[arm].parent.mkdir(parents=True)
        configs[arm].write_text(
            f"alma:\n  project_id: {PROJECT}\n  data_dir: {root / 'data'}\n  allow_undeclared_agents: true\n"
            f"  preload_indexes: {'true' if arm == 'on' else 'false'}\n",
            encoding="utf-8",
        )
    alma = ALMA(parse_config({"alma": {"project_id": PROJECT, "data_dir": str(root / "data"), "allow_undeclared_agents": True}}))
    situations, lessons = filler_sentences()
    situation_vectors, lesson_vectors = alma.embedder.embed(situations), alma.embedder.embed(lessons)
    tasks = [t.task for t in load_tasks()]

    rows = []
    stored = 0
    for size in sizes:
        started = time.perf_counter()
        memories, vectors = make_filler(AGENT, size - stored, situation_vectors, lesson_vectors, seed=size, start=stored)
        put_in_batches(alma.store, memories, vectors)
        stored = size
        log(f"{size} memories stored ({time.perf_counter() - started:.0f} s to add); measuring")
        for arm in arms:
            log(f"{size}: preload {arm}")
            rows.append((size, arm, measure(configs[arm], tasks, args.retrieves, args.learns)))

    print("\nalma-mcp performance: one `alma-mcp` stdio server, JSON-RPC from this process, real embedding model (CPU)\n")
    print("| memories | preload | spawn→initialize | spawn→first retrieve | spawn→indexes preloaded | retrieve p50 / p95 ms | learn p50 / p95 ms | first learn ms | RSS MB (peak) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, arm, m in rows:
        preloaded = "–" if m["preloaded_s"] is None else f"{m['preloaded_s']:.2f} s"
        print(
            f"| {size:,} | {arm} | {m['initialize_s']:.2f} s | {m['first_retrieve_s']:.2f} s | {preloaded} | "
            f"{m['retrieve']['p50']:.1f} / {m['retrieve']['p95']:.1f} | {m['learn']['p50']:.1f} / {m['learn']['p95']:.1f} | "
            f"{m['first_learn_ms']:.0f} | {m['rss_mb']:.0f} ({m['peak_mb']:.0f}) |"
        )


if __name__ == "__main__":
    main()
