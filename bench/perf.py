"""Performance as a host feels it: start-up, memory, one-shot commands, latency, install size;
and a public MCP memory server measured the same way, in the same run, side by side.

    python bench/perf.py                        # the figures at 400 memories (--memories N), and the comparison
    python bench/perf.py --sizes 1000,10000     # also retrieve and learn latency by store size
    npm install --prefix bench/.compare @modelcontextprotocol/server-memory   # once, for the comparison

Every figure comes through a real stdio client: this script spawns the server as a host would
and speaks JSON-RPC to it.

- spawn to `initialize` answered; spawn to the first `alma_retrieve` answered (sent at once after
  the handshake, so it waits for whatever is still loading), with the index snapshots a server
  saves beside the store (indexes/snapshot.py: the normal case for a returning user) and, in a
  row of its own, without them (deleted before each start: a first start ever);
- resident memory of the server and its child processes after that first retrieve, and the peak
  (VmHWM) at the end of the run;
- a one-shot `alma-mcp search` from spawn to exit, with its peak memory (median of three), with
  and without the snapshots (the search saves them when it finds none);
- `alma_retrieve` p50 over distinct tasks of the benchmark corpus (no cache hits), and
  `alma_learn` and `alma_add_knowledge` p50 (and p95), on a store of --memories memories
  (bench/common.py's filler, real embeddings), after one untimed first learn; a write is answered
  once it is in the write journal, and reaches Chroma from a background thread (storage/journal.py);
- the size of the Python environment running this script (run it from a fresh virtual
  environment to measure a fresh install).

The comparison server is the official `@modelcontextprotocol/server-memory` (a knowledge graph in
a JSON-lines file, no embeddings; it installs from npm with no model to download), filled with
the same texts as entities: spawn to `initialize`, to the first `search_nodes`, memory, and
p50 of `search_nodes` (one word of each task: it matches substrings) and of `create_entities`
and `add_observations`. The ratios are alma-mcp's figure over its figure.

Figures go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy, as the alma-mcp command does for its process
from common import PROJECT, filler_sentences, load_tasks, log, make_filler, percentiles, put_in_batches  # noqa: E402

from alma_mcp.config import parse_config  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402

AGENT = "helena"
HERE = Path(__file__).resolve().parent
COMPARE = HERE / ".compare" / "node_modules" / "@modelcontextprotocol" / "server-memory" / "dist" / "index.js"
TARGETS = {  # the targets: (figure, limit, unit); {n} is the store size of the run
    "initialize_s": ("spawn → initialize answered", 0.8, "s"),
    "first_retrieve_s": ("spawn → first `alma_retrieve` answered (index snapshots saved: a returning user)", 1.5, "s"),
    "first_retrieve_cold_s": ("spawn → first `alma_retrieve` answered, no snapshot saved (a first start)", 1.5, "s"),
    "rss_mb": ("resident memory, server and children, after a first retrieve", 350, "MB"),
    "peak_mb": ("peak resident memory, server and children", 450, "MB"),
    "cli_s": ("one-shot CLI command (`alma-mcp search ...`), snapshots saved", 1.5, "s"),
    "cli_cold_s": ("one-shot CLI command (`alma-mcp search ...`), no snapshot saved", 1.5, "s"),
    "retrieve_p50_ms": ("`alma_retrieve` p50, {n} memories, warm", 10, "ms"),
    "learn_p50_ms": ("`alma_learn` p50, {n} memories (answered once in the write journal)", 20, "ms"),
    "add_p50_ms": ("`alma_add_knowledge` p50, {n} memories (answered once in the write journal)", 20, "ms"),
    "environment_mb": ("this Python environment (a fresh one: see above)", 500, "MB"),
}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user and system) used so far by `pid` and its descendants: on a shared machine
    the wall-clock figures grow with the load, this one much less."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo += _children(current)
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) in MB of `pid` and all its descendants, from /proc."""
    rss = peak = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{current}/status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        rss += int(fields["VmRSS"].split()[0])
        peak += int(fields["VmHWM"].split()[0])
        todo += _children(current)
    return rss / 1024, peak / 1024


class StdioServer:
    """A spawned stdio MCP server and a minimal synchronous JSON-RPC client for it."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        base = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", TOKENIZERS_PARALLELISM="false")
        self.spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=base | (env or {}), cwd=cwd
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

    def initialize(self) -> float:
        """Seconds from spawn to `initialize` answered."""
        init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench-perf", "version": "1"}}
        self.request("initialize", init)
        seconds = time.perf_counter() - self.spawned
        self.proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        self.proc.stdin.flush()
        return seconds

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.request("tools/call", {"name": tool, "arguments": arguments})
        if result.get("isError"):
            raise RuntimeError(f"{tool}: {result['content'][0]['text']}")
        return result

    def timed(self, tool: str, arguments: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.call(tool, arguments)
        return (time.perf_counter() - started) * 1000

    def memory_mb(self) -> tuple[float, float]:
        return tree_memory_mb(self.proc.pid)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(path: Path, data: Path, extra: str = "") -> Path:
    """A config file at `path` for the benchmark's project, its store in `data`, any agent
    allowed; `extra`: more lines of the `alma:` section."""
    path.parent.mkdir(parents=True)
    path.write_text(f"alma:\n  project_id: {PROJECT}\n  data_dir: {data}\n  allow_undeclared_agents: true\n{extra}", encoding="utf-8")
    return path


def alma_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "alma_mcp", "--config", str(config), "--log-level", "WARNING"]


def strategy(i: int) -> str:
    return f"Strategy number {i % 7}: check the logs, then fix the smallest failing piece"


def forget_snapshots(config: Path) -> None:
    """Delete the index snapshots saved beside the store (`data/snapshots`, see main)."""
    shutil.rmtree(config.parent.parent / "data" / "snapshots", ignore_errors=True)


def first_retrieve_cold(config: Path, task: str) -> float:
    """Spawn → first `alma_retrieve` answered with no index snapshot saved (as on a first start)."""
    forget_snapshots(config)
    server = StdioServer(alma_command(config))
    try:
        server.initialize()
        server.call("alma_retrieve", {"agent": AGENT, "task": task})
        return time.perf_counter() - server.spawned
    finally:
        server.close()  # saves the snapshots again


def measure_alma(config: Path, tasks: list[str], samples: int, writes: int) -> dict[str, float]:
    figures = {"first_retrieve_cold_s": first_retrieve_cold(config, tasks[0])}
    server = StdioServer(alma_command(config))
    try:
        figures["initialize_s"] = server.initialize()
        server.call("alma_retrieve", {"agent": AGENT, "task": tasks[0]})
        figures["first_retrieve_s"] = time.perf_counter() - server.spawned
        figures["first_retrieve_cpu_s"] = tree_cpu_s(server.proc.pid)
        figures["rss_mb"] = server.memory_mb()[0]
        while not server.call("alma_health", {})["structuredContent"]["search_indexes"].startswith("preloaded"):
            time.sleep(0.05)  # warm means the start-up preload has finished
        retrieve = [server.timed("alma_retrieve", {"agent": AGENT, "task": t}) for t in tasks[1 : 1 + samples]]
        learn_args = [
            {"agent": AGENT, "task": tasks[i % len(tasks)], "outcome": "success" if i % 3 else "failure", "strategy_used": strategy(i)}
            for i in range(writes + 1)
        ]
        server.timed("alma_learn", learn_args[0])  # the first write runs the decay sweep: reported by --sizes
        learn = [server.timed("alma_learn", a) for a in learn_args[1:]]
        add = [
            server.timed("alma_add_knowledge", {"agent": AGENT, "domain": "ops", "fact": f"Fact {i}: {tasks[-1 - i % len(tasks)]}"})
            for i in range(writes)
        ]
        figures["peak_mb"] = server.memory_mb()[1]
    finally:
        server.close()
    return figures | p50s(retrieve, learn, add)


def p50s(search: list[float], learn: list[float], add: list[float]) -> dict[str, float]:
    """The latency figures of the table: a search and the two writes, p50 in ms."""
    return {
        "retrieve_p50_ms": percentiles(search)["p50"],
        "learn_p50_ms": percentiles(learn)["p50"],
        "add_p50_ms": percentiles(add)["p50"],
        "retrieve_p95_ms": percentiles(search)["p95"],
        "learn_p95_ms": percentiles(learn)["p95"],
        "add_p95_ms": percentiles(add)["p95"],
    }


def measure_cli(config: Path, task: str, runs: int = 3, snapshots: bool = True) -> tuple[float, float]:
    """Median seconds from spawn to exit of a one-shot `alma-mcp search`, and its peak memory in MB;
    without `snapshots`, the index snapshots are deleted before each run (which saves them again).

    The peak is the child's VmHWM, read from /proc while it runs: the rusage of a child is no
    use here, as Linux carries the forking process's own peak over into the child's."""
    seconds, peaks = [], []
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", TOKENIZERS_PARALLELISM="false")
    for _ in range(runs):
        if not snapshots:
            forget_snapshots(config)
        started = time.perf_counter()
        proc = subprocess.Popen(
            [*alma_command(config), "search", task, "--agent", AGENT], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        peak = 0.0
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, float(status.split("VmHWM:")[1].split()[0]) / 1024)
            except (OSError, IndexError, ValueError):
                pass
            time.sleep(0.01)
        seconds.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"alma-mcp search exited with {proc.returncode}")
        peaks.append(peak)
    return statistics.median(seconds), statistics.median(peaks)


def environment_mb() -> float:
    """Bytes on disk (allocated blocks, as du counts) of the environment running this script."""
    total = 0
    for folder, _, files in os.walk(sys.prefix):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total / 1024 / 1024


def largest_packages(count: int = 8) -> list[tuple[str, float]]:
    """The biggest entries of this environment's site-packages, in MB (what makes its size)."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    sizes = []
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file() and not p.is_symlink()]
        sizes.append((entry.name, sum(f.lstat().st_blocks * 512 for f in files) / 1024 / 1024))
    return sorted(sizes, key=lambda item: -item[1])[:count]


def keyword(task: str) -> str:
    """The longest word of a task: server-memory's search matches one substring."""
    return max((w.strip(".,;:!?()'\"") for w in task.split()), key=len).lower()


def measure_memory_server(index_js: Path, texts: list[str], tasks: list[str], samples: int, writes: int, workdir: Path) -> dict[str, float]:
    graph = workdir / "memory.jsonl"
    graph.write_text(
        "\n".join(json.dumps({"type": "entity", "name": f"memory-{i}", "entityType": "lesson", "observations": [t]}) for i, t in enumerate(texts)),
        encoding="utf-8",
    )
    server = StdioServer(["node", str(index_js)], env={"MEMORY_FILE_PATH": str(graph)}, cwd=workdir)
    try:
        figures: dict[str, float] = {"initialize_s": server.initialize()}
        server.call("search_nodes", {"query": keyword(tasks[0])})
        figures["first_retrieve_s"] = time.perf_counter() - server.spawned
        figures["rss_mb"] = server.memory_mb()[0]
        search = [server.timed("search_nodes", {"query": keyword(t)}) for t in tasks[1 : 1 + samples]]
        create = [
            server.timed("create_entities", {"entities": [{"name": f"new-{i}", "entityType": "outcome", "observations": [strategy(i)]}]})
            for i in range(writes)
        ]
        observe = [
            server.timed("add_observations", {"observations": [{"entityName": f"new-{i}", "contents": [f"Fact {i}: {tasks[-1 - i]}"]}]})
            for i in range(writes)
        ]
        figures["peak_mb"] = server.memory_mb()[1]
    finally:
        server.close()
    return figures | p50s(search, create, observe)


# -- by store size ---------------------------------------------------------------------------
def measure(config: Path, tasks: list[str], retrieves: int, learns: int) -> dict[str, Any]:
    server = StdioServer(alma_command(config))
    try:
        initialized = server.initialize()
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


TEXT_FIELDS = ("condition", "strategy", "pattern", "why_bad", "fact", "task", "strategy_used")


def fill(data: Path, count: int) -> list[str]:
    """Store `count` filler memories for AGENT in `data`; returns their texts."""
    alma = ALMA(parse_config({"alma": {"project_id": PROJECT, "data_dir": str(data), "allow_undeclared_agents": True}}))
    try:
        situations, lessons = filler_sentences()
        situation_vectors, lesson_vectors = alma.embedder.embed(situations), alma.embedder.embed(lessons)
        memories, vectors = make_filler(AGENT, count, situation_vectors, lesson_vectors, seed=count)
        put_in_batches(alma, memories, vectors)
    finally:
        alma.close()
    return [" ".join(str(v) for k, v in m.model_dump().items() if k in TEXT_FIELDS and v) for m in memories]


def cell(value: float, unit: str) -> str:
    return f"{value:.2f} s" if unit == "s" else f"{value:.1f} {unit}" if unit == "ms" else f"{value:.0f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=400, help="store size for the latency figures")
    parser.add_argument("--samples", type=int, default=100, help="timed retrieves (distinct tasks)")
    parser.add_argument("--writes", type=int, default=40, help="timed learns, and as many timed add_knowledge")
    parser.add_argument("--starts", type=int, default=3, help="server starts; start-up figures are their median")
    parser.add_argument("--compare", type=Path, default=COMPARE, help="server-memory's dist/index.js (skipped if absent)")
    parser.add_argument("--sizes", default="", help="also: retrieve and learn latency at these store sizes (e.g. 1000,10000)")
    parser.add_argument("--preload", default="on", help="with --sizes: preload_indexes on, off, or off,on")
    args = parser.parse_args()

    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="alma-perf-"))
    config = write_config(root / ".alma" / "config.yaml", root / "data")
    log(f"storing {args.memories} memories")
    texts = fill(root / "data", args.memories)
    tasks = [t.task for t in load_tasks()]

    runs = []
    for start in range(args.starts):
        log(f"alma-mcp: start {start + 1} of {args.starts}")
        runs.append(measure_alma(config, tasks, args.samples, args.writes))
    alma = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    log("alma-mcp search (one-shot, three runs without index snapshots, three with)")
    alma["cli_cold_s"], cli_cold_peak = measure_cli(config, tasks[0], snapshots=False)
    alma["cli_s"], cli_peak = measure_cli(config, tasks[0])
    alma["environment_mb"] = environment_mb()
    try:
        import torch  # noqa: F401

        has_torch = "torch installed"
    except ImportError:
        has_torch = "no torch"

    load_after = os.getloadavg()
    print(f"\nalma-mcp at {args.memories} memories, through a real stdio client; start-up figures the median of {args.starts} starts")
    print(f"load average (1 min) {load_before[0]:.2f} before the run, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs")
    print(f"CPU time of the server until its first retrieve was answered: {alma['first_retrieve_cpu_s']:.2f} s (user + system)\n")
    print("| figure | alma-mcp | target | met |")
    print("|---|---:|---:|---|")
    for key, (label, limit, unit) in TARGETS.items():
        value = alma[key]
        extra = f" (peak {cli_peak:.0f} MB)" if key == "cli_s" else f" (peak {cli_cold_peak:.0f} MB)" if key == "cli_cold_s" else f" ({has_torch}: {sys.prefix})" if key == "environment_mb" else ""
        print(f"| {label.format(n=args.memories)} | {cell(value, unit)}{extra} | ≤ {cell(limit, unit)} | {'yes' if value <= limit else 'NO'} |")

    print(
        f"\np95: `alma_retrieve` {alma['retrieve_p95_ms']:.1f} ms, `alma_learn` {alma['learn_p95_ms']:.1f} ms, "
        f"`alma_add_knowledge` {alma['add_p95_ms']:.1f} ms (a call that meets the write journal's background "
        "apply to Chroma waits for it: Chroma holds the GIL)"
    )
    print("\nlargest in this environment: " + ", ".join(f"{name} {size:.0f} MB" for name, size in largest_packages()))

    if args.compare.is_file():
        other = []
        for start in range(args.starts):
            log(f"server-memory: start {start + 1} of {args.starts}")
            workdir = root / f"compare-{start}"
            workdir.mkdir()
            other.append(measure_memory_server(args.compare, texts, tasks, args.samples, args.writes, workdir))
        them = {key: statistics.median(run[key] for run in other) for key in other[0]}
        print(f"\nBeside @modelcontextprotocol/server-memory ({args.compare}), same {args.memories} texts, same client, same run;")
        print("ratio = alma-mcp / server-memory (below 1: alma-mcp is lower)\n")
        print("| figure | alma-mcp | server-memory | ratio |")
        print("|---|---:|---:|---:|")
        rows = [
            ("spawn → initialize", "initialize_s", "s"),
            ("spawn → first search answered (`alma_retrieve` / `search_nodes`)", "first_retrieve_s", "s"),
            ("resident memory after the first search", "rss_mb", "MB"),
            ("peak resident memory", "peak_mb", "MB"),
            ("search p50 (`alma_retrieve` / `search_nodes`)", "retrieve_p50_ms", "ms"),
            ("write p50 (`alma_learn` / `create_entities`)", "learn_p50_ms", "ms"),
            ("write p50 (`alma_add_knowledge` / `add_observations`)", "add_p50_ms", "ms"),
        ]
        for label, key, unit in rows:
            print(f"| {label} | {cell(alma[key], unit)} | {cell(them[key], unit)} | {alma[key] / them[key]:.2f} |")
    else:
        print(f"\n(no comparison: {args.compare} is missing; npm install --prefix bench/.compare @modelcontextprotocol/server-memory)")

    if args.sizes:
        by_size(args)


def by_size(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    arms = args.preload.split(",")
    assert set(arms) <= {"on", "off"}, "--preload takes on, off or both, comma-separated"

    root = Path(tempfile.mkdtemp(prefix="alma-perf-"))
    configs = {}
    for arm in arms:  # one config per arm, on the same store
        preload = "true" if arm == "on" else "false"
        configs[arm] = write_config(root / arm / ".alma" / "config.yaml", root / "data", f"  preload_indexes: {preload}\n")
    alma = ALMA(parse_config({"alma": {"project_id": PROJECT, "data_dir": str(root / "data"), "allow_undeclared_agents": True}}))
    situations, lessons = filler_sentences()
    situation_vectors, lesson_vectors = alma.embedder.embed(situations), alma.embedder.embed(lessons)
    tasks = [t.task for t in load_tasks()]

    rows = []
    stored = 0
    for size in sizes:
        started = time.perf_counter()
        memories, vectors = make_filler(AGENT, size - stored, situation_vectors, lesson_vectors, seed=size, start=stored)
        put_in_batches(alma, memories, vectors)
        stored = size
        log(f"{size} memories stored ({time.perf_counter() - started:.0f} s to add); measuring")
        for arm in arms:
            log(f"{size}: preload {arm}")
            rows.append((size, arm, measure(configs[arm], tasks, args.samples, args.writes)))

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
