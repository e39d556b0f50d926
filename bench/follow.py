"""Following another process's writes: retrieval latency in a server while another process writes.

    python bench/follow.py [--size 100000] [--rounds 12] [--facts 1] [--pause SECONDS] [--workdir DIR]

Two processes on one embedded store, as when Claude Desktop and Claude Code share a data
directory. The store is filled with synthetic memories for one agent (bench/common.py's filler; a
`--workdir` already filled to `--size` is reused), then a real `alma-mcp` stdio server is spawned
on it and driven with JSON-RPC (bench/perf.py's client) until its start-up preload is done.
Another process (this file, `--writer`) then writes in rounds: `--facts` facts with
`add_knowledge`, one outcome with `learn` and one feedback signal, which touch the knowledge,
outcome, heuristic and anti-pattern collections. After each round the server answers an
`alma_retrieve` of a new task, which must see those writes: timed as "after a write". A second,
new task after it is timed as "steady", as are retrievals before any foreign write ("quiet").
`--pause` waits that long between the other process's write and the first retrieval, as a person
or an agent does; a server catches up by itself within about a second (FOLLOW_SECONDS).

Figures go to stdout as a table; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PROJECT, filler_sentences, load_tasks, log, make_filler, percentiles, put_in_batches  # noqa: E402
from perf import AGENT, StdioServer, alma_command  # noqa: E402

from alma_mcp.config import parse_config  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402


def settings(data_dir: Path) -> dict:
    return {"alma": {"project_id": PROJECT, "data_dir": str(data_dir), "allow_undeclared_agents": True}}


def writer(data_dir: Path) -> None:
    """The other process: one round of writes per line read from stdin ("N": N facts), then "ok"."""
    alma = ALMA(parse_config(settings(data_dir)))
    alma.embedder.embed(["warm up"])
    # Its own indexes, read before it writes: else its first writes read them in the background, beside the timed calls.
    alma.preload([AGENT])
    print("ready", flush=True)
    for n, line in enumerate(sys.stdin):
        facts = [
            alma.add_knowledge(AGENT, "ops", f"Round {n}, fact {i}: the staging replica {n}-{i} is rebuilt from the nightly snapshot.")
            for i in range(int(line))
        ]
        alma.learn(AGENT, f"Rebuild the staging replica {n} after the snapshot failed", "success",
                   "Restore the latest good snapshot, then replay the write-ahead log")
        alma.feedback(facts[0].id if facts else alma.memories("knowledge", AGENT)[0].id, "used")
        print("ok", flush=True)
    alma.close()


def fill(data_dir: Path, size: int) -> None:
    alma = ALMA(parse_config(settings(data_dir)))
    stored = sum(alma.count(kind, AGENT, include_archived=True) for kind in ("heuristic", "anti_pattern", "knowledge", "outcome"))
    if stored >= size:
        log(f"{stored} memories already stored in {data_dir}")
        alma.close()
        return
    situations, lessons = filler_sentences()
    started = time.perf_counter()
    memories, vectors = make_filler(AGENT, size - stored, alma.embedder.embed(situations), alma.embedder.embed(lessons), seed=size, start=stored)
    put_in_batches(alma, memories, vectors)
    log(f"{size} memories stored ({time.perf_counter() - started:.0f} s to add)")
    alma.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="memories of the one agent (all types)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--facts", type=int, default=1, help="facts the other process adds per round")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between the other process's write and the first retrieval")
    parser.add_argument("--workdir", help="keep (or reuse) the store here instead of a temporary folder")
    parser.add_argument("--writer", help=argparse.SUPPRESS)  # internal: run as the other process
    args = parser.parse_args()
    if args.writer:
        writer(Path(args.writer))
        return

    root = Path(args.workdir or tempfile.mkdtemp(prefix="alma-follow-"))
    data_dir = root / "data"
    fill(data_dir, args.size)
    config = root / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"alma:\n  project_id: {PROJECT}\n  data_dir: {data_dir}\n  allow_undeclared_agents: true\n", encoding="utf-8")
    tasks = iter([t.task for t in load_tasks()])

    server = StdioServer(alma_command(config))
    other = None
    try:
        server.initialize()
        while True:  # the model loaded and the indexes read: else the first quiet call waits for them
            health = server.call("alma_health", {})["structuredContent"]
            if health["embedding_model_ready"] and health["search_indexes"].startswith("preloaded"):
                break
            time.sleep(0.2)
        log(f"server preloaded, model loaded {time.perf_counter() - server.spawned:.1f} s after spawn")

        def retrieve() -> float:
            started = time.perf_counter()
            result = server.call("alma_retrieve", {"agent": AGENT, "task": next(tasks)})
            assert not result.get("isError"), result
            return (time.perf_counter() - started) * 1000

        quiet = [retrieve() for _ in range(20)]
        import subprocess

        other = subprocess.Popen(
            [sys.executable, __file__, "--writer", str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert other.stdout.readline().strip() == "ready"
        after, steady = [], []
        for n in range(args.rounds):
            other.stdin.write(f"{args.facts}\n")
            other.stdin.flush()
            assert other.stdout.readline().strip() == "ok"
            time.sleep(args.pause)
            after.append(retrieve())
            steady.append(retrieve())
            log(f"round {n + 1}: after a write {after[-1]:.0f} ms, steady {steady[-1]:.0f} ms")
        seen = server.call("alma_retrieve", {"agent": AGENT, "task": "Which staging replica is rebuilt from the nightly snapshot?",
                                             "memory_types": ["knowledge"]})["structuredContent"]
        found = any("staging replica" in json.dumps(m) for m in seen.get("knowledge", []))
    finally:
        if other is not None:
            other.stdin.close()
            other.wait(timeout=60)
        server.close()

    print(f"\nalma-mcp following another process's writes: {args.size:,} memories, one agent, embedded store, "
          f"{args.rounds} rounds of {args.facts} fact(s) + 1 learn + 1 feedback, {args.pause:g} s before the first retrieval\n")
    print("| alma_retrieve (stdio server) | calls | p50 ms | p95 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for label, samples in (("quiet (no other writer)", quiet), ("first after the other process wrote", after), ("steady (the next one)", steady)):
        p = percentiles(samples)
        print(f"| {label} | {len(samples)} | {p['p50']:.1f} | {p['p95']:.1f} | {max(samples):.1f} |")
    print(f"\nthe other process's last facts retrieved by the server: {'yes' if found else 'NO'}")


if __name__ == "__main__":
    main()
