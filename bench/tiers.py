"""What a task is given: alma-mcp's served memories (both tiers) beside a plain vector store.

The plain vector store is what a user gets from the simplest memory server: one Chroma
collection (cosine HNSW index), every memory stored as its text with the same model's vector
(the vectors alma stores), and the `PLAIN_K` nearest memories the agent may read returned for
every task, with no floor. Alma is measured through `Retriever.retrieve`, the code path the
server runs, with the settings given (the shipped defaults unless a row says otherwise).

Figures per task set, over the answerable tasks: served Recall@5 and nDCG@10 counting
everything injected (confident memories by score, then weak mentions), hit@1 (the first memory
served is a right one), and the share given nothing; over the no-answer tasks: the share given a
confident memory, the share given anything, and the mean prompt size in estimated tokens
(`prompt.estimate_tokens`; an empty prompt costs 0). For the plain store a task's "prompt" is
the text of its k memories, one per line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from bench.common import Task, ndcg_at, recall_at, retriever_of

from alma_mcp.config import RetrievalSettings
from alma_mcp.models import MemoryBase
from alma_mcp.prompt.render import estimate_tokens, read_by_model, render_prompt
from alma_mcp.ranking.candidates import Candidate, choose, final_score, fuse, mention

PLAIN_K = 5
KINDS = ["heuristic", "anti_pattern", "knowledge", "preference", "outcome"]


class PlainStore:
    """One Chroma collection, every memory as text, top-k by cosine, no floor."""

    def __init__(self, folder: Path) -> None:
        import chromadb
        from chromadb.config import Settings

        self.client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
        self.collection = self.client.get_or_create_collection("plain", embedding_function=None, metadata={"hnsw:space": "cosine"})
        self.texts: dict[str, str] = {}

    def add(self, memories: Sequence[MemoryBase], vectors: np.ndarray, batch: int = 5000) -> None:
        for start in range(0, len(memories), batch):
            chunk = memories[start : start + batch]
            texts = [m.text() for m in chunk]
            self.collection.add(
                ids=[m.id for m in chunk],
                embeddings=vectors[start : start + batch].tolist(),
                documents=texts,
                metadatas=[{"reader": _reader(m)} for m in chunk],
            )
            self.texts.update((m.id, t) for m, t in zip(chunk, texts))

    def search(self, vector: np.ndarray, agent: str, user_id: str | None, k: int = PLAIN_K) -> list[str]:
        readers = [agent] + ([f"user:{user_id}"] if user_id else [])
        where: dict[str, Any] = {"reader": {"$in": readers}}
        found = self.collection.query(query_embeddings=[vector.tolist()], n_results=k, where=where)
        return list(found["ids"][0])


def _reader(memory: MemoryBase) -> str:
    """Who may read a memory in the plain store: a preference's user, else its agent."""
    if memory.type == "preference":  # type: ignore[attr-defined]
        return f"user:{memory.user_id}"  # type: ignore[attr-defined]
    return memory.agent


@dataclass
class Served:
    """What one task was given."""

    ids: list[str]
    confident: int
    tokens: int
    read: tuple[int, int] = (0, 0)
    """What a model reads through `alma_retrieve`, in estimated tokens: the tool's text (the prompt,
    or one line when nothing applies), and the JSON of its structured result (what a client that
    hands the model the structured content gives it)."""


def serve_alma(
    alma: Any, task: Task, settings: RetrievalSettings, kinds: Sequence[str] | None = KINDS, read: bool = False
) -> Served:
    """What alma serves `task`; with `read`, what a model reads of it too (`Served.read`)."""
    result = alma.retrieve(task.task, task.agent, None, task.user_id, kinds, settings=settings)
    served = Served([m.memory.id for m in result.ranked()], len(result.confident()), estimate_tokens(result.prompt) if result.prompt else 0)
    if read:
        structured = json.dumps(result.model_dump(mode="json", by_alias=True), separators=(",", ":"), ensure_ascii=False)
        served.read = (estimate_tokens(read_by_model(result.prompt)), estimate_tokens(structured))
    return served


def serve_plain(plain: PlainStore, embedder: Any, task: Task) -> Served:
    ids = plain.search(embedder.embed_query(task.task), task.agent, task.user_id)
    text = "\n".join(plain.texts[i] for i in ids)
    return Served(ids, len(ids), estimate_tokens(text) if text else 0)


def serve_offline(
    candidates: Sequence[Candidate],
    settings: RetrievalSettings,
    kinds: Sequence[str] = KINDS,
    after_fuse: Callable[[Sequence[Candidate]], Any] | None = None,
) -> Served:
    """What `Retriever.retrieve` would serve from these candidates (for a quick grid on the
    calibration split): the same fuse, final_score, choose, mention and render_prompt;
    `after_fuse` may change the floor verdicts before the choice."""
    from datetime import datetime, timezone

    fuse(candidates, settings, "hybrid")
    if after_fuse is not None:
        after_fuse(candidates)
    now = datetime.now(timezone.utc)
    for c in candidates:
        c.score = final_score(c, settings, now)
    chosen = choose(candidates, kinds, settings.top_k, settings)
    confident = sorted((c for picked in chosen.values() for c in picked), key=lambda c: c.score, reverse=True)
    weak = mention(candidates, chosen, settings)
    by_type: dict[str, list[Any]] = {}
    for c in confident:
        by_type.setdefault(c.memory.type, []).append(c.scored())  # type: ignore[attr-defined]
    for c in weak:
        by_type.setdefault(c.memory.type, []).append(c.scored("weak"))  # type: ignore[attr-defined]
    prompt = render_prompt(by_type, settings.token_budget)
    return Served([c.memory.id for c in [*confident, *weak]], len(confident), estimate_tokens(prompt) if prompt else 0)


def figures(served: dict[str, Served], tasks: Sequence[Task], kind: str | None = "paraphrase") -> dict[str, float]:
    """The report's figures; `kind` picks the answerable tasks (None: every answerable task)."""
    answerable = [t for t in tasks if t.kind != "no_answer" and (kind is None or t.kind == kind)]
    empty = [t for t in tasks if t.kind == "no_answer"]
    row: dict[str, float] = {"n": len(answerable), "n_none": len(empty)}
    if answerable:
        row["R@5"] = sum(recall_at(served[t.id].ids, t.relevant, 5) for t in answerable) / len(answerable)
        row["nDCG@10"] = sum(ndcg_at(served[t.id].ids, t.relevant, 10) for t in answerable) / len(answerable)
        row["hit@1"] = sum(1 for t in answerable if served[t.id].ids[:1] and served[t.id].ids[0] in t.relevant) / len(answerable)
        row["given nothing"] = sum(1 for t in answerable if not served[t.id].ids) / len(answerable)
    if empty:
        row["none: confident"] = sum(1 for t in empty if served[t.id].confident) / len(empty)
        row["none: anything"] = sum(1 for t in empty if served[t.id].ids) / len(empty)
        row["none: tokens"] = sum(served[t.id].tokens for t in empty) / len(empty)
    return row


COLUMNS = ("R@5", "nDCG@10", "hit@1", "given nothing", "none: confident", "none: anything", "none: tokens")


def print_rows(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(
        f"{'server / settings':<44} {'n':>4} {'R@5':>6} {'nDCG@10':>8} {'hit@1':>6} {'ans. given nothing':>19} "
        f"{'n none':>6} {'none: confident':>15} {'none: anything':>14} {'none: tokens':>12}"
    )
    for name, row in rows:
        cells = [f"{row[c]:.3f}" if c in row and c in ("R@5", "nDCG@10", "hit@1") else "" for c in COLUMNS[:3]]
        share = lambda c: f"{row[c]:.1%}" if c in row else "-"  # noqa: E731
        print(
            f"{name:<44} {int(row['n']):>4} {cells[0]:>6} {cells[1]:>8} {cells[2]:>6} {share('given nothing'):>19} "
            f"{int(row['n_none']):>6} {share('none: confident'):>15} {share('none: anything'):>14} "
            f"{row.get('none: tokens', float('nan')):>12.1f}"
        )
    sys.stdout.flush()


# -- the run ---------------------------------------------------------------------------------
HELDOUT_MEMORIES = "heldout_personal_memories.jsonl"
HELDOUT_TASKS = "heldout_personal_tasks.jsonl"
PERSONAL_MEMORIES = "dev_personal_memories.jsonl"
PERSONAL_TASKS = "dev_personal_tasks.jsonl"
"""The development corpus of a second kind (facts about two households): tuned on, whole."""

READ_BY_MODEL = "alma, shipped, server's default types"
"""The variant whose tool result is measured as a model reads it (the server's own call)."""
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("alma, shipped settings", {}),
    ("alma, shipped, server's default types", {"kinds": None}),
    ("alma, all-or-nothing (weak_top_k 0)", {"weak_top_k": 0}),
    ("alma, cheaper: weak_floor 0.32", {"weak_floor": 0.32}),
    ("alma, fuller: weak_floor 0.30, weak_span 0.15, no few", {"weak_floor": 0.30, "weak_span": 0.15, "weak_few_below": 0.30}),
    ("alma, absolute floor (standout 0, floor 0.42)", {"standout": 0.0, "relevance_floor": 0.42}),
    ("alma, crowding off (crowding_weight 0)", {"crowding_weight": 0.0}),
    ("alma, no near-miss test (align_floor 0)", {"align_floor": 0.0}),
]
"""The shipped settings and alternatives around them. All but one read all five types,
outcomes like any memory (the corpus labels outcomes); the server's default types read outcomes
as weak matches only under `include_outcomes: weak` (true by default, so the same here)."""


def server_ids(memories: Sequence[Any], tasks: Sequence[Task]) -> tuple[list[Any], list[Task]]:
    """The corpus under ids of the server's own form (the type and 32 hex digits, from a hash of the
    corpus id), and its tasks' labels with them: the prompt names a memory by the start of those
    digits (prompt/handles.py), so its token cost is the server's, not that of the corpus's short
    ids (`m-helena-h-001`)."""
    import hashlib

    renamed = {m.id: f"{m.type}-{hashlib.md5(m.id.encode()).hexdigest()}" for m in memories}
    out = []
    for m in memories:
        update: dict[str, Any] = {"id": renamed[m.id]}
        if getattr(m, "supporting_outcomes", None):
            update["supporting_outcomes"] = [renamed.get(i, i) for i in m.supporting_outcomes]
        out.append(m.model_copy(update=update))
    relabelled = [
        Task(t.id, t.agent, t.user_id, t.task, {renamed.get(i, i): g for i, g in t.relevant.items()}, t.kind) for t in tasks
    ]
    return out, relabelled


def variant(base: RetrievalSettings, change: dict[str, Any]) -> RetrievalSettings:
    return base.model_copy(update={k: v for k, v in change.items() if k != "kinds"})


def build(folder: Path, embedder: Any, memories: Sequence[MemoryBase]) -> tuple[Any, PlainStore]:
    """Both stores with these memories; stores a previous run left in `folder` are reused as they
    are (with any filler it added), so a second report needs no refill."""
    from bench.common import bench_config, put_in_batches, ranked_service

    alma = ranked_service(bench_config(folder / "alma"), embedder)
    plain = PlainStore(folder / "plain")
    if plain.collection.count() >= len(memories):
        if not plain.collection.get(ids=[memories[0].id])["ids"]:
            raise SystemExit(f"{folder} holds the corpus under other ids (a run of before): give a new --workdir")
        texts = plain.collection.get(include=["documents"])
        plain.texts = dict(zip(texts["ids"], texts["documents"]))
        return alma, plain
    vectors = embedder.embed([m.text() for m in memories])
    put_in_batches(alma, memories, vectors)
    plain.add(memories, vectors)
    return alma, plain


def filled(alma: Any, agent: str) -> int:
    return sum(alma.count(kind, agent) for kind in KINDS if kind != "preference")


def report(title: str, alma: Any, plain: PlainStore, embedder: Any, tasks: Sequence[Task], kinds: Sequence[str] | None = KINDS) -> None:
    base = alma.config.retrieval_for("any")
    served = {"plain vector store (Chroma, top 5, no floor)": {t.id: serve_plain(plain, embedder, t) for t in tasks}}
    for name, change in VARIANTS:
        settings = variant(base, change)
        served[name] = {t.id: serve_alma(alma, t, settings, change.get("kinds", kinds), name == READ_BY_MODEL) for t in tasks}
    for kind, label in (("paraphrase", "paraphrased tasks"), (None, "all answerable tasks")):
        if kind and not any(t.kind == kind for t in tasks):
            continue
        print_rows(f"{title}: {label}", [(name, figures(by_task, tasks, kind)) for name, by_task in served.items()])
    default = served[READ_BY_MODEL]
    for label, group in (("answerable", [t for t in tasks if t.kind != "no_answer"]), ("no answer", [t for t in tasks if t.kind == "no_answer"])):
        if group:
            text, structured = (sum(default[t.id].read[i] for t in group) / len(group) for i in (0, 1))
            print(f"{READ_BY_MODEL}, what a model reads through alma_retrieve, {label} ({len(group)} tasks): its text {text:.1f} tokens, its structured result's JSON {structured:.1f}")


def replay(title: str, alma: Any, rated: Sequence[Task], measured: Sequence[Task]) -> None:
    """The agents' own feedback, simulated from the labels: every memory served for a `rated`
    task is rated `helpful` (grade 2), `used` (grade 1) or `ignored` (not relevant), which moves
    the agent's floors (alma_mcp/ranking/calibration.py); then the `measured` tasks, which were never
    rated, are served with the floors so moved, beside the same tasks with no feedback. Only the
    floors learn here: the per-memory feedback part of the score is left out, so a memory that
    was rated does not simply rise on its own rating."""
    from alma_mcp.ranking.calibration import FloorCalibration

    retriever = retriever_of(alma)
    retriever.calibration = FloorCalibration(None)
    shipped = alma.config.alma.retrieval
    alma.config.alma.retrieval = shipped.model_copy(update={"calibrate_from_feedback": True})  # off by default
    before = {t.id: serve_alma(alma, t, retriever.settings_for(t.agent)) for t in measured}
    for t in rated:
        result = retriever.retrieve(t.task, t.agent, None, t.user_id, KINDS)
        for item in result.all():
            grade = t.relevant.get(item.memory.id, 0)
            retriever.rate(t.agent, item.memory.id, "helpful" if grade >= 2 else "used" if grade else "ignored")
    shifts = ", ".join(
        f"{agent} {retriever.calibration.shift(agent, alma.config.retrieval_for(agent).relevance_floor):+.3f} "
        f"({retriever.calibration.ratings(agent)} ratings)"
        for agent in sorted({t.agent for t in rated})
    )
    after = {t.id: serve_alma(alma, t, retriever.settings_for(t.agent)) for t in measured}
    print_rows(
        f"{title}: floors moved by simulated feedback on {len(rated)} other tasks ({shifts}); {len(measured)} tasks measured",
        [("alma, no feedback", figures(before, measured, None)), ("alma, after feedback", figures(after, measured, None))],
    )
    retriever.calibration = FloorCalibration(None)
    alma.config.alma.retrieval = shipped


def grid(alma: Any, tasks: Sequence[Task], base: RetrievalSettings, title: str) -> list[tuple[dict[str, float], RetrievalSettings]]:
    """Floors, the standout test and weak-tier settings on a set of development tasks: every
    point's figures (served from the same candidates as the server would, `serve_offline`).
    Crowding keeps the shipped setting (its own grid chose it at 10,000 memories per agent)."""
    import itertools

    wide = base.model_copy(update={"relevance_floor": 0.0, "lexical_floor": 0.0, "floor_margin": 0.0, "weak_floor": 0.0, "weak_span": 1.0})
    candidates = {t.id: retriever_of(alma).candidates(t.task, t.agent, t.user_id, KINDS, wide) for t in tasks}
    points = []
    for floor, standout, weak_floor, weak_span, weak_top_k in itertools.product(
        (0.42, 0.46, 0.50), (0.0, 0.1, 0.15, 0.18, 0.2), (0.30, 0.32, 0.34), (0.1, 0.15), (3, 5)
    ):
        settings = base.model_copy(
            update={
                "relevance_floor": floor,
                "standout": standout,
                "weak_floor": weak_floor,
                "weak_span": weak_span,
                "weak_top_k": weak_top_k,
            }
        )
        served = {tid: serve_offline(c, settings) for tid, c in candidates.items()}
        points.append((figures(served, tasks, "paraphrase"), settings))
    log_points(title, points)
    return points


def log_points(title: str, points: list[tuple[dict[str, float], RetrievalSettings]], others: list[list[tuple[dict[str, float], RetrievalSettings]]] = ()) -> None:
    """The best R@5 + nDCG@10 at each no-answer token cost, among the points that give a
    confident memory to at most 10% of the no-answer tasks (on `others` too, point by point)."""
    print(f"\n{title}: best served R@5 + nDCG@10 at each no-answer token cost (also within it on the other sets)")
    print(f"{'tokens <=':>9} {'floor':>6} {'standout':>8} {'weak_floor':>10} {'span':>5} {'weak_k':>6} {'R@5':>6} {'nDCG@10':>8} {'hit@1':>6} {'none: conf':>10} {'none: any':>9} {'none: tok':>9}")
    for cap in (20, 30, 40, 50, 60, 80):
        fits = [
            (i, row, s)
            for i, (row, s) in enumerate(points)
            if all(r.get("none: tokens", 0.0) <= cap and r.get("none: confident", 0.0) <= 0.10 for r in [row, *(o[i][0] for o in others)])
        ]
        if not fits:
            continue
        _, row, s = max(fits, key=lambda p: (round(p[1]["R@5"] + p[1]["nDCG@10"], 6), -p[1].get("none: tokens", 0.0)))
        print(
            f"{cap:>9} {s.relevance_floor:>6.2f} {s.standout:>8.2f} {s.weak_floor:>10.2f} {s.weak_span:>5.2f} {s.weak_top_k:>6} "
            f"{row['R@5']:>6.3f} {row['nDCG@10']:>8.3f} {row['hit@1']:>6.3f} {row.get('none: confident', 0):>10.1%} "
            f"{row.get('none: anything', 0):>9.1%} {row.get('none: tokens', 0):>9.1f}"
        )
    sys.stdout.flush()


def fill(
    alma: Any, plain: PlainStore, embedder: Any, memories: Sequence[MemoryBase], agents: Sequence[str] | None = None, level: int = 10_000
) -> None:
    """Filler (bench/common.make_filler) to `level` memories per agent, in both stores."""
    from bench.common import filler_sentences, log, make_filler, put_in_batches

    situations, lessons = filler_sentences()
    situation_vectors, lesson_vectors = embedder.embed(situations), embedder.embed(lessons)
    everyone = sorted({m.agent for m in memories if m.type != "preference"})
    for number, agent in enumerate(everyone):
        if agents and agent not in agents:
            continue
        have = filled(alma, agent)
        if have >= level:
            continue
        filler, vectors = make_filler(agent, level - have, situation_vectors, lesson_vectors, seed=number + level, start=have)
        # The filler's key vectors are its text vectors (its key is most of its text): embedding
        # 60,000 keys for real takes longer than the rest of the run on a busy machine.
        put_in_batches(alma, filler, vectors, key_vectors=vectors)
        plain.add(filler, vectors)
        log(f"  {agent}: {level:,} memories")


def run(args: Any) -> int:
    import tempfile

    from bench.common import DATA, load_memories, load_tasks, split

    from alma_mcp.embedding.embedder import SentenceTransformerEmbedder

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="alma-tiers-"))
    embedder = SentenceTransformerEmbedder(args.model)
    embedder.wait(timeout=300)
    memories, tasks = server_ids(load_memories(), load_tasks())
    calibration, test = split(tasks)
    alma, plain = build(workdir / "dev", embedder, memories)
    scale_agents = args.scale_agents.split(",") if args.scale_agents else None
    base = alma.config.retrieval_for("any")
    print(
        f"Shipped settings: relevance_floor={base.relevance_floor} floor_margin={base.floor_margin} "
        f"lexical_floor={base.lexical_floor} weak_floor={base.weak_floor} weak_span={base.weak_span} "
        f"weak_top_k={base.weak_top_k} crowding_weight={base.crowding_weight} crowding_floor={base.crowding_floor} "
        f"standout={base.standout} sure_floor={base.sure_floor} weak_few_below={base.weak_few_below} top_k={base.top_k}"
    )
    p_memories, p_tasks = server_ids(load_memories(DATA / PERSONAL_MEMORIES), load_tasks(DATA / PERSONAL_TASKS))
    p_alma, p_plain = build(workdir / "personal", embedder, p_memories)
    if args.calibrate_tiers:
        # The points are chosen on the calibration split of the development corpus, on the whole
        # development corpus of personal facts and, with --scale, on the calibration split at
        # 10,000 memories per agent: one setting for all.
        points = grid(alma, calibration, base, f"Calibration split ({len(calibration)} tasks)")
        personal = grid(p_alma, p_tasks, base, f"Development corpus of personal facts ({len(p_tasks)} tasks)")
        log_points("Both development corpora: the calibration split, points that also hold on personal facts", points, [personal])
        if args.scale:
            fill(alma, plain, embedder, memories, scale_agents)
            level = [t for t in calibration if not scale_agents or t.agent in scale_agents]
            scaled = grid(alma, level, base, f"Calibration split at 10,000 memories per agent ({len(level)} tasks)")
            log_points("All three: the calibration split, points that also hold on personal facts and at 10,000", points, [personal, scaled])
        return 0
    heldout = DATA / HELDOUT_MEMORIES
    if args.only_scale or args.dev_only:
        heldout = Path("/nonexistent")
    if not args.only_scale and not args.feedback_only:
        report(f"Development corpus ({len(memories)} memories), test split ({len(test)} tasks)", alma, plain, embedder, test)
        report(f"Development corpus of personal facts ({len(p_memories)} memories, {len(p_tasks)} tasks, tuned on)", p_alma, p_plain, embedder, p_tasks)
    if heldout.exists():
        h_memories, h_tasks = server_ids(load_memories(heldout), load_tasks(DATA / HELDOUT_TASKS))
        h_alma, h_plain = build(workdir / "heldout", embedder, h_memories)
        if not args.feedback_only:
            report(f"Held-out corpus ({len(h_memories)} memories, {len(h_tasks)} tasks, never tuned on)", h_alma, h_plain, embedder, h_tasks)
    if not args.only_scale:
        replay("Development corpus", alma, calibration, test)
    if heldout.exists():
        first, second = split(h_tasks, 0.5, salt="alma-feedback")
        replay("Held-out corpus", h_alma, first, second)
    if args.no_scale or args.feedback_only or args.dev_only:
        return 0
    fill(alma, plain, embedder, memories, scale_agents)
    level_tasks = [t for t in test if not scale_agents or t.agent in scale_agents]
    who = ", ".join(scale_agents) if scale_agents else "every agent"
    report(f"10,000 memories per agent ({who}), same settings, test split ({len(level_tasks)} tasks)", alma, plain, embedder, level_tasks)
    return 0
