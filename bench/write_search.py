"""The write path's nearest-neighbour searches at scale: Chroma's index against the exact scan.

    python bench/write_search.py [--sizes 20000,100000] [--queries 40]

Learning places a new outcome among the nearest outcomes of the same strategy (a pool of
`learning.GROUP_POOL`), and merge on write looks for a near-duplicate among the five nearest
memories. Both used to ask Chroma's approximate (HNSW) index; they now scan the retriever's
in-memory copy of the collection when it is current (`SearchIndexes.nearest`).

For each size, one agent gets that many outcomes, all with one strategy, and as many facts. Their
vectors are either bench/common.py's filler (real all-MiniLM-L6-v2 embeddings of sentence halves,
summed) or `clustered`: near-duplicates of 30 random centres (as tests/test_dense.py builds them),
the look-alikes an agent's outcomes of a few kinds of task are. Then, for `--queries` tasks:

- pool: the true 10 nearest outcomes (a brute-force scan), and how many of them the pool of 500
  leaves out, through Chroma's index (the old path) and through `nearest` (the new one);
- merge: a stored fact repeated with a little noise (similarity about 0.95, above the 0.92 merge
  threshold): is a memory that similar among the five each path returns?

Ties (the filler repeats some sentence pairs) count as found. Figures to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PROJECT, bench_config, filler_sentences, log, put_in_batches, ranked_service, retriever_of  # noqa: E402

from alma_mcp.learning.learner import GROUP_POOL  # noqa: E402
from alma_mcp.models import DomainKnowledge, Outcome, strategy_key  # noqa: E402

AGENT = "helena"
STRATEGY = "Retry the call with exponential backoff"


def vectors_of(count: int, situations: np.ndarray, lessons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = situations[rng.integers(len(situations), size=count)] + lessons[rng.integers(len(lessons), size=count)]
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clustered(count: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near-duplicates of a few centres (similarity about 0.9 to theirs), as tests/test_dense.py
    builds them: an agent's memories of a few kinds of task, where Chroma's index was seen to miss."""
    dim = centres.shape[1]
    rows = centres[rng.integers(len(centres), size=count)] + 0.5 * rng.normal(size=(count, dim)) / np.sqrt(dim)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def missed(found: list[float], true: np.ndarray) -> int:
    """How many of the true best similarities (descending) the found ones fall short of."""
    found = sorted(found, reverse=True)[: len(true)] + [-np.inf] * max(0, len(true) - len(found))
    return int(sum(f < t - 1e-5 for f, t in zip(found, true)))


def measure(size: int, queries: int, seed: int, data: str) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    alma = ranked_service(bench_config(Path(tempfile.mkdtemp(prefix="alma-write-search-"))))
    store, indexes = retriever_of(alma).store, retriever_of(alma).indexes  # the components compared
    alma.embedder.wait(timeout=300)
    situations, lessons = filler_sentences()
    situation_vectors, lesson_vectors = alma.embedder.embed(situations), alma.embedder.embed(lessons)
    if data == "filler":
        outcome_vectors = vectors_of(size, situation_vectors, lesson_vectors, rng)
        fact_vectors = vectors_of(size, situation_vectors, lesson_vectors, rng)
        tasks = vectors_of(queries, situation_vectors, lesson_vectors, rng)
        tasks = tasks + 0.5 * rng.normal(size=tasks.shape).astype(np.float32) / np.sqrt(tasks.shape[1])
        repeated = rng.choice(size, size=queries, replace=False)
    else:  # clustered: 30 centres; the repeated facts stand apart from the filler, as in the test
        centres = rng.normal(size=(30, situation_vectors.shape[1]))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        outcome_vectors = clustered(size, centres, rng)
        planted = rng.normal(size=(queries, centres.shape[1])) + 1.2 * centres[rng.integers(30, size=queries)]
        planted /= np.linalg.norm(planted, axis=1, keepdims=True)
        fact_vectors = np.vstack([planted.astype(np.float32), clustered(size - queries, centres, rng)])
        tasks = clustered(queries, centres, rng)
        repeated = np.arange(queries)
    outcomes = [
        Outcome(id=f"outcome-{i:08d}", project=PROJECT, agent=AGENT, task=f"filler task {i}", strategy_used=STRATEGY,
                outcome="success" if i % 3 else "failure")
        for i in range(size)
    ]
    facts = [DomainKnowledge(id=f"knowledge-{i:08d}", project=PROJECT, agent=AGENT, domain="operations", fact=f"filler fact {i}")
             for i in range(size)]
    start = time.perf_counter()
    for memories, vectors in ((outcomes, outcome_vectors), (facts, fact_vectors)):
        put_in_batches(alma, memories, vectors, key_vectors=vectors)  # the searches measured use the text's
    log(f"{size:,} outcomes and {size:,} facts stored ({time.perf_counter() - start:.0f} s)")
    for kind in ("outcome", "knowledge"):
        indexes.get(kind, AGENT)  # as the service does before a write
    key = strategy_key(STRATEGY)
    tasks /= np.linalg.norm(tasks, axis=1, keepdims=True)
    figures = {"pool_chroma": 0, "pool_exact": 0, "merge_chroma": 0, "merge_exact": 0}
    for task in tasks:
        true = np.sort(outcome_vectors @ task)[::-1][:10]
        chroma = store.query("outcome", AGENT, task, GROUP_POOL, where={"strategy_key": key})
        exact = indexes.nearest("outcome", AGENT, task, GROUP_POOL, owner=key, restrict=True)
        figures["pool_chroma"] += missed([h.similarity for h in chroma], true)
        figures["pool_exact"] += missed([h.similarity for h in exact], true)
    for i in repeated:
        noise = rng.normal(size=fact_vectors.shape[1]).astype(np.float32)
        repeat = fact_vectors[i] + 0.33 * noise / np.linalg.norm(noise)
        repeat /= np.linalg.norm(repeat)
        best = float(fact_vectors[i] @ repeat)
        chroma = store.query("knowledge", AGENT, repeat, 5)
        exact = indexes.nearest("knowledge", AGENT, repeat, 5)
        figures["merge_chroma"] += int(max((h.similarity for h in chroma), default=0.0) < best - 1e-5)
        figures["merge_exact"] += int(max((h.similarity for h in exact), default=0.0) < best - 1e-5)
    alma.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="filler,clustered", help="filler (bench/common.py's), clustered (30 centres), or both")
    args = parser.parse_args()
    q = args.queries
    print(f"| vectors | outcomes (and facts) per agent | pool of {GROUP_POOL}, true 10 nearest left out: Chroma | exact | "
          f"merge, repeated fact's original not among the 5: Chroma | exact |")
    print("|---|---:|---:|---:|---:|---:|")
    for data in args.data.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            f = measure(size, q, args.seed, data)
            print(f"| {data} | {size:,} | {f['pool_chroma']} of {10 * q} | {f['pool_exact']} of {10 * q} | "
                  f"{f['merge_chroma']} of {q} | {f['merge_exact']} of {q} |", flush=True)


if __name__ == "__main__":
    main()
