"""What the harness costs on top of the service, and what it buys.

A scripted agent (no LLM) works through a seeded stream of tasks from four task families
(written here, four paraphrases each; each family has three candidate strategies, one of
which works 90% of the time, the others 10%). Before each task the harness retrieves and
injects memory; the agent follows the best injected heuristic whose strategy is one of its
candidates, else avoids candidates named by injected anti-patterns and guesses among the
rest. After the task the harness records the outcome with `alma.learn`.

Figures printed:
1. latency per run, harness vs the same calls made by hand on a second fresh store
   (`alma.retrieve` + `to_prompt` before, `alma.learn` after), interleaved run by run: the
   difference is the harness's own work (prompt building, scope checks);
2. success rate by block of runs, against a memoryless agent guessing on the same draws;
3. `arun` throughput with 1 and 8 concurrent runs (one ALMA, one write lock).

Run:  .venv/bin/python bench/harness.py            (120 sequential runs + 2 x 64 async, ~1-2 min)
      .venv/bin/python bench/harness.py --runs 60  (quicker)
Real model (its query cache off), real embedded Chroma, in temp folders. Progress goes to
stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import anyio  # noqa: E402
import numpy as np  # noqa: E402

from alma_mcp import ALMA, Agent, Briefing, Context, ExecutionResult, Harness, MemorySchema, Setting, Tool  # noqa: E402
from alma_mcp.config import parse_config  # noqa: E402
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.models import strategy_key  # noqa: E402

FAMILIES: dict[str, dict[str, Any]] = {
    "forms": {
        "tasks": [
            "Test the login form validation",
            "Test the login form validation in Firefox",
            "Test the login form validation after the redesign",
            "Test the login form validation on mobile",
        ],
        "works": "Submit each field with invalid values and check its validation message",
        "others": ["Fill the form with valid data and check the success page", "Take screenshots of the form and compare"],
    },
    "reset_email": {
        "tasks": [
            "Customer says the password reset email never arrived",
            "Customer never received the password reset email",
            "Customer did not get the password reset email",
            "Customer says the password reset email never arrived after two tries",
        ],
        "works": "Check the account's email address for typos with the customer, then resend",
        "others": ["Resend the password reset email", "Ask the customer to check the spam folder"],
    },
    "pagination": {
        "tasks": [
            "Add pagination to the orders list endpoint",
            "Add pagination to the orders API list endpoint",
            "Add cursor pagination to the orders list endpoint",
            "Paginate the orders list endpoint",
        ],
        "works": "Use an opaque cursor on the primary key and return next_cursor",
        "others": ["Use page and offset query parameters", "Return everything and let the client page"],
    },
    "paper_summary": {
        "tasks": [
            "Summarize recent papers on retrieval-augmented generation",
            "Summarize the latest research on retrieval-augmented generation",
            "Write a summary of recent retrieval-augmented generation papers",
            "Summarize new papers about retrieval augmented generation",
        ],
        "works": "Read the papers' evaluation sections first and compare results on shared benchmarks",
        "others": ["Summarize each abstract in turn", "Search a blog post that summarizes them"],
    },
}
P_WORKS, P_OTHER = 0.9, 0.1


def candidates(family: str) -> list[str]:
    spec = FAMILIES[family]
    return [*spec["others"], spec["works"]]


def config(folder: Path) -> Any:
    return parse_config({"alma": {"project_id": "bench", "data_dir": str(folder), "allow_undeclared_agents": True}})


def make_harness(alma: ALMA) -> Harness:
    agent = Agent(
        name="worker",
        role="Generalist",
        description="Tests, answers tickets, builds endpoints and reads papers.",
        memory_schema=MemorySchema(domain="general", learnable_categories=["work"], min_occurrences=3),
    )
    setting = Setting(name="Bench", description="A scripted world.", tools=[Tool("act", "Do the task.")])
    return Harness(setting, agent, alma)


def choose(memories: Any, family: str, rng: random.Random) -> str:
    options = candidates(family)
    keys = {strategy_key(s): s for s in options}
    for item in memories.heuristics:
        followed = keys.get(getattr(item.memory, "strategy_key", None) or strategy_key(item.memory.strategy))
        if followed:
            return followed
    avoided = {getattr(item.memory, "strategy_key", None) for item in memories.anti_patterns}
    left = [s for s in options if strategy_key(s) not in avoided] or options
    return rng.choice(left)


def world(family: str, strategy: str, draw: float) -> ExecutionResult:
    works = strategy == FAMILIES[family]["works"]
    if draw < (P_WORKS if works else P_OTHER):
        return ExecutionResult("success", strategy)
    return ExecutionResult("failure", strategy, error=f"{strategy[:40]}... did not solve it")


def stream(runs: int, seed: int) -> list[tuple[str, str, float, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(runs):
        family = rng.choice(list(FAMILIES))
        out.append((family, rng.choice(FAMILIES[family]["tasks"]), rng.random(), rng.random()))
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def sequential(embedder: Any, runs: int, seed: int) -> None:
    """Harness and by-hand calls on two fresh stores, interleaved run by run (alternating which
    goes first), so both see the same machine load and the same query-cache hits."""
    tasks = stream(runs, seed)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        alma = ALMA(config(Path(a)), embedder=embedder)
        harness = make_harness(alma)
        raw = ALMA(config(Path(b)), embedder=embedder)
        make_harness(raw)  # declares the same agent settings; the calls on `raw` bypass the harness
        harness_rng, raw_rng = random.Random(seed + 1), random.Random(seed + 1)
        pre, post, wins, raw_pre, raw_post = [], [], [], [], []
        briefings: list[Briefing] = []

        def with_harness(family: str, task: str, draw: float) -> None:
            t0 = time.perf_counter()
            briefing = harness.pre_run(Context(task=task))
            t1 = time.perf_counter()
            execution = world(family, choose(briefing.memories, family, harness_rng), draw)
            t2 = time.perf_counter()
            harness.post_run(briefing, execution)
            t3 = time.perf_counter()
            pre.append((t1 - t0) * 1000)
            post.append((t3 - t2) * 1000)
            wins.append(execution.success)
            briefings.append(briefing)

        def by_hand(family: str, task: str, draw: float) -> None:
            t0 = time.perf_counter()
            memories = raw.retrieve(task=task, agent="worker")
            memories.to_prompt()
            t1 = time.perf_counter()
            execution = world(family, choose(memories, family, raw_rng), draw)
            t2 = time.perf_counter()
            raw.learn(
                agent="worker",
                task=task,
                outcome=execution.outcome,
                strategy_used=execution.strategy,
                task_type="work",
                error_message=execution.error,
            )
            t3 = time.perf_counter()
            raw_pre.append((t1 - t0) * 1000)
            raw_post.append((t3 - t2) * 1000)

        for i, (family, task, draw, _) in enumerate(tasks):
            order = (with_harness, by_hand) if i % 2 == 0 else (by_hand, with_harness)
            for step in order:
                step(family, task, draw)
            if (i + 1) % 20 == 0:
                print(f"sequential: {i + 1}/{runs} runs", file=sys.stderr, flush=True)
        # The harness's own work, timed alone: scope checks and prompt building (no I/O, no model).
        own = []
        for briefing in briefings:
            t0 = time.perf_counter()
            harness.check_category(harness.category_for(briefing.context))
            harness.build_prompt(briefing.context, briefing.memories)
            own.append((time.perf_counter() - t0) * 1000)
        alma.close()
        raw.close()

    print(f"## 1. Latency per run ({runs} sequential runs, ms)\n")
    print("| step | harness p50 | harness p95 | by hand p50 | by hand p95 |")
    print("|---|---|---|---|---|")
    for label, h, r in (("pre-run (retrieve + prompt)", pre, raw_pre), ("post-run (learn)", post, raw_post)):
        print(f"| {label} | {pct(h, 50):.1f} | {pct(h, 95):.1f} | {pct(r, 50):.1f} | {pct(r, 95):.1f} |")
    print(f"| the harness's own work (checks + prompt), timed alone | {pct(own, 50):.3f} | {pct(own, 95):.3f} | - | - |")

    baseline_rng = random.Random(seed + 2)
    guesses = [world(f, baseline_rng.choice(candidates(f)), d).success for f, _, d, _ in tasks]
    block = 20
    print(f"\n## 2. Success rate by block of {block} runs\n")
    print("| runs | with the harness | memoryless guessing |")
    print("|---|---|---|")
    for start in range(0, runs, block):
        end = min(runs, start + block)
        print(f"| {start + 1}-{end} | {np.mean(wins[start:end]):.0%} | {np.mean(guesses[start:end]):.0%} |")


async def concurrent(embedder: Any, runs: int, seed: int) -> None:
    print(f"\n## 3. arun throughput ({runs} runs on one ALMA)\n")
    print("| concurrent runs | wall time (s) | runs/s |")
    print("|---|---|---|")
    for width in (1, 8):
        tasks = stream(runs, seed + width)
        with tempfile.TemporaryDirectory() as folder:
            alma = ALMA(config(Path(folder)), embedder=embedder)
            harness = make_harness(alma)
            limiter = anyio.CapacityLimiter(width)
            rng = random.Random(seed)

            async def one(family: str, task: str, draw: float) -> None:
                async with limiter:
                    async def agent(briefing: Briefing) -> ExecutionResult:
                        return world(family, choose(briefing.memories, family, rng), draw)

                    await harness.arun(Context(task=task), agent)

            started = time.perf_counter()
            async with anyio.create_task_group() as group:
                for family, task, draw, _ in tasks:
                    group.start_soon(one, family, task, draw)
            wall = time.perf_counter() - started
            alma.close()
        print(f"| {width} | {wall:.2f} | {runs / wall:.1f} |")
        print(f"arun: width {width} done", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--async-runs", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    # Query cache off: every retrieval pays for its embedding, so the two sides of the latency
    # table are compared on equal terms whichever of them met a task text first.
    embedder = SentenceTransformerEmbedder(cache_size=0)
    embedder.wait(timeout=120)
    print(f"# Harness benchmark (seed {args.seed}, {os.cpu_count()} CPUs)\n")
    sequential(embedder, args.runs, args.seed)
    anyio.run(concurrent, embedder, args.async_runs, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
