"""Shared parts of the benchmarks: the corpus, synthetic filler, services, metrics, timing.

Nothing here measures anything by itself; bench/retrieval.py is the script that prints figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the alma-mcp command does for its process (the library leaves it to its host): numpy's BLAS
# on one thread, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from alma_mcp.config import AlmaConfig, parse_config  # noqa: E402
from alma_mcp.models import AnyMemory, parse_memory  # noqa: E402

if TYPE_CHECKING:
    from alma_mcp.ranking.retriever import Retriever
    from alma_mcp.service import ALMA

DATA = Path(__file__).resolve().parent / "data"
MEMORIES_FILE = DATA / "retrieval_memories.jsonl"
TASKS_FILE = DATA / "retrieval_tasks.jsonl"
PROJECT = "bench"


def log(*parts: Any) -> None:
    """Progress goes to stderr; stdout carries only the figures."""
    print(*parts, file=sys.stderr, flush=True)


# -- the hand-written corpus -----------------------------------------------------------------
@dataclass
class Task:
    id: str
    agent: str
    user_id: str | None
    task: str
    relevant: dict[str, int]
    kind: str


def load_memories(path: Path = MEMORIES_FILE) -> list[AnyMemory]:
    memories: list[AnyMemory] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        data = json.loads(line)
        data.setdefault("project", PROJECT)
        try:
            memories.append(parse_memory(data))
        except Exception as exc:  # a corpus defect is reported, not hidden
            raise SystemExit(f"{path.name} line {number}: not a valid memory: {exc}") from None
    return memories


def load_tasks(path: Path = TASKS_FILE) -> list[Task]:
    tasks = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            tasks.append(Task(data["id"], data["agent"], data.get("user_id"), data["task"], data.get("relevant") or {}, data["kind"]))
    return tasks


def corpus_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (MEMORIES_FILE, TASKS_FILE):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def split(tasks: Sequence[Task], share: float = 0.4, salt: str = "alma-calibration") -> tuple[list[Task], list[Task]]:
    """(calibration, test): a fixed pseudo-random share of each kind goes to calibration.

    Thresholds and fusion settings are chosen on the calibration tasks only; the figures that
    are compared with the targets come from the test tasks, which nothing was tuned on.
    """
    calibration: list[Task] = []
    test: list[Task] = []
    for task in tasks:
        bucket = int(hashlib.sha256(f"{salt}:{task.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (calibration if bucket < share else test).append(task)
    return calibration, test


# -- synthetic filler ------------------------------------------------------------------------
# Plausible engineering-team memories about topics the hand-written tasks do not ask about:
# they compete for every ranker's attention without being a right answer.
_SUBJECTS = """the nightly invoice export|the warehouse barcode scanner app|the HR onboarding checklist|the print
server queue|the legacy FTP drop for suppliers|the kiosk firmware updater|the payroll CSV importer|the fleet
telematics feed|the cafeteria menu service|the badge reader integration|the conference room booking bot|the
translation memory sync|the analytics event schema|the video transcoding queue|the mobile push certificate|the
LDAP group sync|the map tile cache|the tax rate table loader|the customer loyalty points job|the returns label
printer|the SMS gateway fallback|the scanned contract archive|the audio transcription batch|the shipping rate
estimator|the newsletter unsubscribe handler|the spreadsheet macro for forecasts|the office Wi-Fi captive
portal|the IoT thermostat bridge|the label template designer|the dashboard PDF renderer|the backup tape rotation
|the currency conversion cache|the product image resizer|the partner SFTP reconciliation|the call-centre IVR
menu|the asset inventory spreadsheet|the chatbot small-talk intents|the vendor onboarding form|the bulk coupon
generator|the time-sheet reminder job""".replace("\n", " ").split("|")
_ACTIONS = """pin the dependency to the last known good version|run it twice with a fresh cache to rule out
staleness|compare the row counts before and after the change|page the owning team before touching the
schedule|capture a packet trace on the gateway|write the runbook step down before executing it|roll the change
out to one site first|keep the old path behind a flag for a week|check the vendor status page first|diff the
generated files against last month's|re-run the job with verbose logging and keep the log|ask finance to
confirm the totals|batch the updates in chunks of five hundred|freeze the configuration during the
quarter-end close|rotate the credentials and update the vault entry|archive the previous output before
overwriting it|validate the encoding of every uploaded file|reconcile the counts with the upstream report|
schedule the run outside office hours|add an alert on the queue depth""".replace("\n", " ").split("|")
_REASONS = """because the vendor changed the file layout without notice|since the office network drops long
connections|because two sites share the same identifiers|as the old firmware ignores the retry header|because the
totals drifted by a few cents last time|since the printer driver rewrites page sizes|because the nightly window is
short|as the partner only accepts files before six|because the sync silently skips renamed records|since the
device clocks drift by minutes|because half the rows had a stray byte-order mark|as the spreadsheet rounds
differently from the database""".replace("\n", " ").split("|")
_TYPES = [("outcome", 0.35), ("heuristic", 0.30), ("knowledge", 0.25), ("anti_pattern", 0.10)]


def _clean(parts: list[str]) -> list[str]:
    return [" ".join(p.split()) for p in parts if p.strip()]


SUBJECTS, ACTIONS, REASONS = _clean(_SUBJECTS), _clean(_ACTIONS), _clean(_REASONS)


def filler_sentences() -> tuple[list[str], list[str]]:
    """The two halves every filler memory is made of: a situation and a lesson."""
    situations = [f"Working on {s}" for s in SUBJECTS] + [f"When {s} misbehaves after a change" for s in SUBJECTS]
    lessons = [f"{a} {r}" for a in ACTIONS for r in REASONS]
    return situations, lessons


def make_filler(
    agent: str, count: int, situation_vectors: np.ndarray, lesson_vectors: np.ndarray, seed: int, start: int = 0
) -> tuple[list[AnyMemory], np.ndarray]:
    """`count` filler memories for `agent` with vectors.

    Each memory is a (situation, lesson) pair; its vector is the normalised sum of the two
    halves' real embeddings (embedding 100,000 distinct texts would take minutes; the sum of
    mean-pooled sentence vectors is close to the vector of the joined text). A serial number
    keeps every text distinct for the lexical index.
    """
    situations, lessons = filler_sentences()
    rng = random.Random(seed)
    memories: list[AnyMemory] = []
    vectors = np.empty((count, situation_vectors.shape[1]), dtype=np.float32)
    kinds = [k for k, _ in _TYPES]
    weights = [w for _, w in _TYPES]
    for i in range(count):
        s, li = rng.randrange(len(situations)), rng.randrange(len(lessons))
        kind = rng.choices(kinds, weights)[0]
        situation, lesson = situations[s], lessons[li]
        serial = f"ticket {agent[:3].upper()}-{start + i}"
        base: dict[str, Any] = {
            "id": f"{kind}-{hashlib.md5(f'{agent}:{start + i}'.encode()).hexdigest()}",
            "project": PROJECT,
            "agent": agent,
            "type": kind,
            "confidence": round(rng.uniform(0.4, 0.95), 2),
        }
        if kind == "heuristic":
            n = rng.randint(3, 20)
            base |= {"condition": f"{situation} ({serial})", "strategy": lesson[0].upper() + lesson[1:], "occurrence_count": n, "success_count": rng.randint(n // 2, n)}
        elif kind == "anti_pattern":
            base |= {"pattern": f"{situation}: skipping the step to {lesson.split(' because')[0].split(' since')[0].split(' as ')[0]} ({serial})", "why_bad": lesson, "occurrence_count": rng.randint(2, 6)}
        elif kind == "knowledge":
            base |= {"domain": "operations", "fact": f"{situation}: {lesson} ({serial})"}
        else:
            base |= {"task": f"{situation} ({serial})", "strategy_used": lesson, "outcome": rng.choice(["success", "success", "failure", "partial"])}
        memories.append(parse_memory(base))
        vector = situation_vectors[s] + lesson_vectors[li]
        vectors[i] = vector / np.linalg.norm(vector)
    return memories, vectors


# -- services --------------------------------------------------------------------------------
def bench_config(data_dir: Path, retrieval: dict[str, Any] | None = None, vector_search: str = "auto") -> AlmaConfig:
    # The decay sweep and merge-on-write belong to the life-cycle benchmark; off here so the
    # figures are retrieval's own.
    alma: dict[str, Any] = {
        "project_id": PROJECT,
        "data_dir": str(data_dir),
        "allow_undeclared_agents": True,
        "lifecycle": {"sweep_every_writes": 0, "merge_on_write": False},
        "vector_search": vector_search,
    }
    if retrieval:
        alma["retrieval"] = retrieval
    return parse_config({"alma": alma})


_RETRIEVERS: "weakref.WeakKeyDictionary[ALMA, Retriever]" = weakref.WeakKeyDictionary()


def ranked_service(config: AlmaConfig, embedder: Any = None) -> ALMA:
    """An ALMA service built on a Retriever made here, for the benchmarks that read ranking's
    internals (candidates before the floors, the floor calibration, the search indexes): they
    read them from that component (`retriever_of`), since the service exposes none of its parts."""
    from alma_mcp.embedding.embedder import create_embedder
    from alma_mcp.ranking.retriever import Retriever
    from alma_mcp.service import ALMA
    from alma_mcp.storage.store import MemoryStore

    if embedder is None:  # the config's, as ALMA makes it
        model = config.alma.embedding
        embedder = create_embedder(model.model, model.device, onnx=model.onnx, backend=model.backend)
    retriever = Retriever(MemoryStore.embedded(config.data_dir / "chroma", config.project, embedder), embedder, config)
    alma = ALMA(config, embedder=embedder, retriever=retriever)
    _RETRIEVERS[alma] = retriever
    return alma


def retriever_of(alma: ALMA) -> Retriever:
    """The Retriever `ranked_service` built `alma` on."""
    return _RETRIEVERS[alma]


def put_in_batches(
    alma: ALMA, memories: Sequence[AnyMemory], vectors: np.ndarray, batch: int = 5000, key_vectors: np.ndarray | None = None
) -> None:
    """Store memories as they are (`ALMA.put`) with their vectors; their key fields are embedded
    unless `key_vectors` are given."""
    for start in range(0, len(memories), batch):
        keys = None if key_vectors is None else key_vectors[start : start + batch]
        alma.put(memories[start : start + batch], vectors[start : start + batch], key_vectors=keys)


# -- metrics ---------------------------------------------------------------------------------
def recall_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    """Relevant memories in the top k over min(k, number relevant): 1.0 means the top k is as
    good as it can be (plain recall@1 could never reach 1 for a task with two right answers)."""
    if not relevant:
        return 0.0
    found = sum(1 for doc in ranked[:k] if doc in relevant)
    return found / min(k, len(relevant))


def mrr_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    for position, doc in enumerate(ranked[:k], 1):
        if doc in relevant:
            return 1.0 / position
    return 0.0


def ndcg_at(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    """Graded: gain 2^grade - 1, so a grade-2 memory is worth three grade-1 ones."""
    dcg = sum((2 ** relevant.get(doc, 0) - 1) / math.log2(position + 1) for position, doc in enumerate(ranked[:k], 1))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum((2**grade - 1) / math.log2(position + 1) for position, grade in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def percentiles(samples_ms: Iterable[float]) -> dict[str, float]:
    values = np.asarray(list(samples_ms), dtype=np.float64)
    if not len(values):
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *_: Any) -> None:
        self.ms = (time.perf_counter() - self.start) * 1000.0
