"""Warm `alma_retrieve` latency, and where its time goes, on stores a benchmark run left behind.

    python bench/retrieve_profile.py --workdir DIR --agents helena,victor [--rounds 2] [--profile OUT.txt]
        [--retrieval '{"relevance_floor": 0.54}'] [--vector-search chroma]

DIR is a `--workdir` of bench/retrieval.py (its `base` store). The search indexes of the agents'
collections are built first (timed), then `alma_retrieve` is timed through a real MCP client by
bench/retrieval.py's `mcp_latency` (the SDK's in-process `Client`, legacy handshake; all five
types; the test-split tasks of those agents): new task (a text never seen: embedded, nothing
cached), seen task with the result cache cleared (its query vector cached), cached, default types,
and a write (`alma_add_knowledge`, removed afterwards) with the retrieval it invalidated.

It prints p50/p95 per call and how many key vectors retrieval had to embed itself (0 when every
memory was stored with one). With `--profile`, one more round of direct `ALMA.retrieve` calls
runs under cProfile and the top functions by cumulative and own time go to that file.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_config, load_tasks, log, ranked_service, retriever_of, split  # noqa: E402
from bench.retrieval import mcp_latency  # noqa: E402

from alma_mcp.embedding.embedder import SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.models import MEMORY_TYPES  # noqa: E402

KINDS = list(MEMORY_TYPES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--agents", default="helena,victor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--no-onnx", action="store_true", help="embed small inputs with torch, as before embedding.onnx (to compare)"
    )
    parser.add_argument(
        "--retrieval",
        type=json.loads,
        default={},
        help="retrieval settings as JSON (default: the config defaults), e.g. the floor bench/retrieval.py "
        "recalibrated for this store's size: the fewer memories pass, the less each answer costs to send",
    )
    parser.add_argument(
        "--vector-search",
        choices=["auto", "memory", "chroma"],
        default="auto",
        help="where the nearest memories are found (the config's vector_search; default: auto)",
    )
    args = parser.parse_args(argv)
    agents = args.agents.split(",")

    embedder = SentenceTransformerEmbedder(onnx=not args.no_onnx)
    embedder.wait(timeout=300)
    log(f"small inputs embedded by {embedder.wait_small(timeout=600)}")
    config = bench_config(args.workdir / "base", {"include_outcomes": True, **args.retrieval}, args.vector_search)
    alma = ranked_service(config, embedder)
    _, test = split(load_tasks())
    tasks = [t for t in test if t.agent in agents]
    started = time.perf_counter()
    alma.preload(agents)
    log(f"search indexes of {', '.join(agents)} built in {time.perf_counter() - started:.1f} s; {len(tasks)} tasks")

    table = asyncio.run(mcp_latency(alma, tasks, args.rounds))
    print(f"{'call':<30} {'n':>4} {'p50':>7} {'p95':>7}   (ms, through a real MCP client)")
    for name, row in table.items():
        print(f"{name:<30} {int(row['n']):>4} {row['p50']:>7.1f} {row['p95']:>7.1f}")
    print(f"key vectors retrieval had to embed itself: {retriever_of(alma).keys.embedded}")

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
