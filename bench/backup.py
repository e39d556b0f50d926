"""Export, import and reindex rates for a store of N memories (default 10,000), on this machine.

    .venv/bin/python bench/backup.py [--n 10000] [--no-reindex]

Builds a store of N synthetic memories of all five types (embedded with the real model,
written straight to the store), then times:
  export                       (JSONL, no vectors)
  export --embeddings          (JSONL with base64 float32 vectors)
  import into an empty store   (every memory re-embedded with the real model)
  import --embeddings file     (vectors taken from the file: no embedding)
  import again                 (idempotent: everything already there, nothing written)
  reindex --force              (re-embed every memory with the real model, side collection + swap)
Progress goes to stderr; the table goes to stdout.
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
# As the alma-mcp command does for its process (the library leaves it to its host): numpy's BLAS
# on one thread, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from alma_mcp.config import parse_config  # noqa: E402
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.models import (  # noqa: E402
    AntiPattern,
    DomainKnowledge,
    Heuristic,
    MemoryBase,
    Outcome,
    UserPreference,
    new_id,
)
from alma_mcp.service import ALMA  # noqa: E402

PROJECT = "bench-backup"
AGENTS = ["helena", "victor", "researcher", "support"]
SUBJECTS = ["login form", "billing API", "search page", "checkout flow", "user profile", "report export",
            "date picker", "payment webhook", "admin dashboard", "password reset", "file upload", "audit trail"]
ACTIONS = ["validate", "test", "refactor", "document", "debug", "monitor", "migrate", "review"]
DETAILS = ["empty fields", "timeouts", "large inputs", "unicode names", "expired tokens", "slow networks",
           "concurrent edits", "missing permissions", "bad dates", "duplicate requests"]


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def synthetic(n: int, seed: int = 7) -> list[MemoryBase]:
    rng = random.Random(seed)
    memories: list[MemoryBase] = []
    for i in range(n):
        agent = AGENTS[i % len(AGENTS)]
        subject, action, detail = rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(DETAILS)
        kind = i % 10
        common = {"project": PROJECT, "agent": agent, "helpful": rng.randint(0, 3), "used": rng.randint(0, 5)}
        if kind < 4:
            memories.append(Outcome(id=new_id("outcome"), task=f"{action} the {subject} with {detail} (case {i})",
                                    outcome=rng.choice(["success", "failure", "partial"]),
                                    strategy_used=f"Strategy {i % 37}: {action} {detail} step by step",
                                    task_type="testing", duration_ms=rng.randint(100, 90000), **common))
        elif kind < 6:
            memories.append(Heuristic(id=new_id("heuristic"), condition=f"When asked to {action} the {subject} ({i})",
                                      strategy=f"Check {detail} first, then the happy path", task_type="testing",
                                      occurrence_count=5, success_count=4, confidence=0.7,
                                      supporting_outcomes=[new_id("outcome") for _ in range(3)], **common))
        elif kind < 7:
            memories.append(AntiPattern(id=new_id("anti_pattern"), pattern=f"Skipping {detail} when you {action} the {subject} ({i})",
                                        why_bad="It fails in production", better_alternative=f"Cover {detail} explicitly", **common))
        elif kind < 9:
            memories.append(DomainKnowledge(id=new_id("knowledge"), domain="product",
                                            fact=f"The {subject} handles {detail} by returning error code {1000 + i}", **common))
        else:
            memories.append(UserPreference(id=new_id("preference"), user_id=f"user{i % 50}", category="style",
                                           preference=f"When you {action} the {subject}, mention {detail} first ({i})", **common))
    return memories


def service(data_dir: Path, embedder: Any) -> ALMA:
    config = parse_config({"alma": {"project_id": PROJECT, "data_dir": str(data_dir), "allow_undeclared_agents": True,
                                    "lifecycle": {"sweep_every_writes": 0}}})
    return ALMA(config, embedder=embedder)


def timed(label: str, fn: Any) -> tuple[Any, float]:
    log(f"-- {label}")
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--no-reindex", action="store_true")
    args = parser.parse_args()

    embedder = SentenceTransformerEmbedder()
    embedder.wait(timeout=300)
    with tempfile.TemporaryDirectory(prefix="alma-bench-backup-") as tmp:
        root = Path(tmp)
        source = service(root / "source", embedder)
        memories = synthetic(args.n)

        def seed() -> None:
            for start in range(0, len(memories), 512):
                source.put(memories[start : start + 512])
                log(f"   seeded {min(start + 512, len(memories))}/{len(memories)}")

        _, seed_seconds = timed(f"seeding {args.n} memories (real model)", seed)
        rows: list[tuple[str, int, float, str]] = []

        plain, plain_path = None, root / "plain.jsonl"
        plain, seconds = timed("export", lambda: source.export(plain_path, progress=True))
        rows.append(("export (no vectors)", plain.count, seconds, f"{plain_path.stat().st_size / 1e6:.1f} MB"))

        vec_path = root / "vectors.jsonl"
        with_vectors, seconds = timed("export --embeddings", lambda: source.export(vec_path, with_embeddings=True, progress=True))
        rows.append(("export --embeddings", with_vectors.count, seconds, f"{vec_path.stat().st_size / 1e6:.1f} MB"))

        target = service(root / "target", embedder)
        report, seconds = timed("import (re-embed)", lambda: target.import_memories(plain_path, progress=True))
        assert report.added == args.n and not report.rejected, report
        rows.append(("import, re-embedding", report.added, seconds, f"re-embedded {report.re_embedded}"))

        target_vec = service(root / "target-vectors", embedder)
        report, seconds = timed("import (vectors from file)", lambda: target_vec.import_memories(vec_path, progress=True))
        assert report.added == args.n and report.re_embedded == 0, report
        rows.append(("import, vectors from file", report.added, seconds, "re-embedded 0"))

        report, seconds = timed("import again", lambda: target.import_memories(plain_path, progress=True))
        assert report.added == 0 and report.unchanged == args.n, report
        rows.append(("import again (no-op)", report.unchanged, seconds, "added 0"))

        if not args.no_reindex:
            result, seconds = timed("reindex --force", lambda: target.reindex(force=True, progress=True))
            assert result.re_embedded == args.n, result
            rows.append(("reindex --force (real model)", result.re_embedded, seconds, f"{len(result.collections)} collections"))

        print(f"Backup benchmark: {args.n} memories, model {embedder.name}, {os.cpu_count()} CPUs "
              f"(seeding took {seed_seconds:.1f} s)")
        print(f"{'operation':32} {'memories':>9} {'seconds':>9} {'memories/s':>11}  note")
        for label, count, seconds, note in rows:
            print(f"{label:32} {count:>9} {seconds:>9.2f} {count / seconds:>11.0f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
