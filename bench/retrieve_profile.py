"""Warm `alma_retrieve` latency, and where its time goes, on stores a benchmark run left behind.

    python bench/retrieve_profile.py --workdir DIR --agents helena,victor [--rounds 2] [--profile OUT.txt]

DIR is a `--workdir` of bench/retrieval.py (its `base` store). The lexical indexes of the agents'
collections are built first (timed), then, through a real MCP client (the SDK's in-process
`Client`, legacy handshake; all five types; the test-split tasks of those agents), per round:

- new task: the task text with a suffix never used before (query embedded, nothing cached);
- seen task, cache cleared: the plain task text after `clear_cache()` (its query vector cached);
- cached: the same again (the result cache answers).

It prints p50/p95 per kind and how many key vectors retrieval had to embed itself (0 when every
memory was stored with one). With `--profile`, one more round of direct `ALMA.retrieve` calls
runs under cProfile and the top functions by cumulative and own time go to that file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Task, bench_config, load_tasks, log, percentiles, split  # noqa: E402

from alma_mcp.embeddings import SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.models import MEMORY_TYPES  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402

KINDS = list(MEMORY_TYPES)


def arguments(task: Task, text: str) -> dict[str, Any]:
    out: dict[str, Any] = {"task": text, "agent": task.agent, "memory_types": KINDS}
    if task.user_id:
        out["user_id"] = task.user_id
    return out


async def through_mcp(alma: ALMA, tasks: list[Task], rounds: int, tag: str) -> dict[str, list[float]]:
    from mcp import Client

    from alma_mcp.server import create_server

    samples: dict[str, list[float]] = {"new task": [], "seen task, cache cleared": [], "cached": []}

    async with Client(create_server(alma=alma), mode="legacy") as client:

        async def timed(task: Task, text: str) -> float:
            started = time.perf_counter()
            result = await client.call_tool("alma_retrieve", arguments(task, text))
            assert not result.is_error, result
            return (time.perf_counter() - started) * 1000

        await timed(tasks[0], tasks[0].task)  # the connection, the model's first call
        for task in tasks:  # "seen": the plain texts' query vectors are in the embedder's LRU
            alma.embedder.embed_query(task.task)
        for round_number in range(rounds):
            for task in tasks:
                samples["new task"].append(await timed(task, f"{task.task} ({tag} {round_number})"))
            alma.retriever.clear_cache()
            for task in tasks:
                samples["seen task, cache cleared"].append(await timed(task, task.task))
            for task in tasks:
                samples["cached"].append(await timed(task, task.task))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--agents", default="helena,victor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args(argv)
    agents = args.agents.split(",")

    embedder = SentenceTransformerEmbedder()
    embedder.wait(timeout=300)
    alma = ALMA(bench_config(args.workdir / "base", {"include_outcomes": True}), embedder=embedder)
    _, test = split(load_tasks())
    tasks = [t for t in test if t.agent in agents]
    started = time.perf_counter()
    for kind in KINDS:
        for agent in agents:
            alma.retriever.lexical.get(kind, agent if kind != "preference" else None)
    log(f"lexical indexes of {', '.join(agents)} built in {time.perf_counter() - started:.1f} s; {len(tasks)} tasks")

    samples = asyncio.run(through_mcp(alma, tasks, args.rounds, "first"))
    print(f"{'call':<26} {'n':>4} {'p50':>7} {'p95':>7}   (ms, through a real MCP client)")
    for name, values in samples.items():
        row = percentiles(values)
        print(f"{name:<26} {len(values):>4} {row['p50']:>7.1f} {row['p95']:>7.1f}")
    print(f"key vectors retrieval had to embed itself: {alma.retriever.keys.embedded}")

    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for task in tasks:
            alma.retrieve(f"{task.task} (profiled)", task.agent, None, task.user_id, KINDS)
        profile.disable()
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        args.profile.write_text(out.getvalue())
        log(f"profile written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
