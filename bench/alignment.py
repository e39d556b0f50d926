"""Token-level alignment (BERTScore-style) as a signal for the answer-or-not decision: does it
separate tasks with no answer from answerable ones better than the evidence the floors use, and
would a rule on it help? Development sets only: the calibration and test splits of the agent corpus
and the development corpus of personal facts. Not used by the server (docs/retrieval-tiers.md,
"Token-level alignment": it did not add to the evidence on the test split).

Whole-text cosine and lexical coverage say how much a memory shares with a task; they cannot see
that one content word of the task is matched by nothing in the memory ("what medication is the
dog on for his heart" against a note about the dog's hip). Here every word of the task (a word is
the mean of its word pieces' last-layer vectors, `BertEncoder.hidden_states`) is matched greedily
to its most similar word of the memory. Per task, on the candidates `Retriever.candidates` finds,
fused with the shipped settings: the best candidate's evidence, its runner-up gap, and the
alignment of the task with its best 1-3 candidates: `weakest` (the lowest match over the task's
content words), `mean` (their IDF-weighted mean, IDF over the agent's memories) and `rare` (the
lowest over the RARE content words of highest IDF).

Prints the AUC of each (answerable high) over all tasks, over the gray zone (the best is a fact or
a preference with evidence in [weak_floor, sure_floor)) and over the tasks given a confident
memory; a logistic fit of evidence with each alignment signal, on the calibration split and the
personal corpus, scored on the test split (with a bootstrap standard error of the difference to
evidence alone); then the served figures of a rule that takes a fact's or preference's confident
verdict back when its alignment is below a floor (`hold_back`).

    python bench/alignment.py --workdir DIR [--show]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bench.common import DATA, Task, load_memories, load_tasks, retriever_of, split
from bench.tiers import KINDS, PERSONAL_MEMORIES, PERSONAL_TASKS, build, figures, serve_offline, server_ids

from alma_mcp.config import RetrievalSettings
from alma_mcp.ranking.candidates import SUBJECT_TYPES, Candidate, fuse, runner_up_gap
from alma_mcp.ranking.nearmiss import Words, words_of

def idf_table(texts: Sequence[str]) -> dict[str, float]:
    """Smoothed inverse document frequency of each lower-cased word over `texts`."""
    frequency: dict[str, int] = {}
    for text in texts:
        for word in {w.strip(".,;:!?()\"'").lower() for w in text.split()}:
            if word:
                frequency[word] = frequency.get(word, 0) + 1
    n = len(texts)
    return {w: math.log((n + 1) / (f + 1)) + 1.0 for w, f in frequency.items()}


def unseen_idf(idf: Mapping[str, float]) -> float:
    return max(idf.values(), default=1.0)


@dataclass
class Alignment:
    weakest: float
    """The lowest best-match cosine over the task's content words (1.0 when it has none)."""
    mean: float
    """The IDF-weighted mean of those best matches."""
    weakest_word: str = ""
    rare: float = 1.0
    """The lowest best match over the task's RARE content words of highest IDF."""


def align(task: Words, memory: Words, idf: Mapping[str, float] | None = None) -> Alignment:
    """How well each content word of `task` is matched by some word of `memory`."""
    content = task.content()
    if not content or not len(memory.words):
        return Alignment(1.0 if not content else 0.0, 1.0 if not content else 0.0)
    best = (task.vectors[content] @ memory.vectors.T).max(axis=1)
    default = unseen_idf(idf) if idf else 1.0
    weights = np.array([(idf.get(task.words[i], default) if idf else 1.0) for i in content])
    low = int(np.argmin(best))
    rarest = np.argsort(-weights, kind="stable")[:RARE]
    return Alignment(float(best[low]), float((best * weights).sum() / weights.sum()), task.words[content[low]], float(best[rarest].min()))


RARE = 2


def hold_back(
    candidates: Sequence[Candidate], settings: RetrievalSettings, floor: float, alignment_of: Callable[[Candidate], float], below: float | None = None
) -> bool:
    """Take the task's confident verdict back (in place: no candidate clears by evidence) when its
    best candidate is a fact or a preference that cleared the floor in the gray zone (evidence below
    `sure_floor`, or `below` when given; no lexical door) and aligns with the task below `floor`. `alignment_of` is asked
    only then. True if the verdict was taken back."""
    if floor <= 0 or not candidates or any(c.lexical_ok for c in candidates) or not any(c.dense_ok for c in candidates):
        return False
    best = max(candidates, key=lambda c: c.evidence)
    if best.memory.type not in SUBJECT_TYPES or best.evidence >= (settings.sure_floor if below is None else below):
        return False
    if alignment_of(best) >= floor:
        return False
    for c in candidates:
        c.dense_ok = False
    return True


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(score of a random answerable task > that of a random no-answer task), ties half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def features(alma: Any, encoder: Any, tasks: Sequence[Task], memories: Sequence[Any]) -> list[dict[str, Any]]:
    base = alma.config.retrieval_for("any")
    wide = base.model_copy(update={"relevance_floor": 0.0, "lexical_floor": 0.0, "floor_margin": 0.0, "weak_floor": 0.0, "weak_span": 1.0})
    by_agent: dict[str, list[str]] = {}
    for m in memories:
        by_agent.setdefault(m.agent, []).append(m.text())
    idf = {agent: idf_table(texts) for agent, texts in by_agent.items()}
    rows = []
    spent = 0.0
    for t in tasks:
        candidates = retriever_of(alma).candidates(t.task, t.agent, t.user_id, KINDS, wide)
        confident = serve_offline(candidates, base).confident > 0
        fuse(candidates, base, "hybrid")
        ranked = sorted(candidates, key=lambda c: c.evidence, reverse=True)
        best = ranked[0]
        start = time.perf_counter()
        words = words_of(encoder, [t.task, *(c.memory.text() for c in ranked[:3])])
        spent += time.perf_counter() - start
        aligned = [align(words[0], w, idf.get(t.agent)) for w in words[1:]]
        rows.append(
            {
                "task": t,
                "answerable": int(t.kind != "no_answer"),
                "evidence": best.evidence,
                "gap": runner_up_gap(candidates, base),
                "subject": best.memory.type in SUBJECT_TYPES,
                "weakest@1": aligned[0].weakest,
                "mean@1": aligned[0].mean,
                "weakest@3": max(a.weakest for a in aligned),
                "mean@3": max(a.mean for a in aligned),
                "rare@1": aligned[0].rare,
                "rare@3": max(a.rare for a in aligned),
                "word": aligned[0].weakest_word,
                "confident": confident,
                "type": best.memory.type,
                "settings": base,
                "candidates": candidates,
            }
        )
    print(f"  (alignment of a task with its best 3: {1000 * spent / max(1, len(tasks)):.0f} ms a task)", file=sys.stderr)
    return rows


SIGNALS = ("evidence", "gap", "weakest@1", "mean@1", "weakest@3", "mean@3", "rare@1", "rare@3")


def gray(row: dict[str, Any]) -> bool:
    s = row["settings"]
    return bool(row["subject"]) and s.weak_floor <= row["evidence"] < s.sure_floor


def table(title: str, rows: Sequence[dict[str, Any]]) -> None:
    for name, chosen in (
        ("all tasks", rows),
        ("gray zone (fact/preference, weak_floor <= evidence < sure_floor)", [r for r in rows if gray(r)]),
        ("given a confident memory (shipped)", [r for r in rows if r["confident"]]),
        ("... best a fact or preference", [r for r in rows if r["confident"] and r["subject"]]),
    ):
        labels = [r["answerable"] for r in chosen]
        cells = "  ".join(f"{s} {auc([r[s] for r in chosen], labels):.3f}" for s in SIGNALS)
        print(f"{title}, {name} ({sum(labels)} answerable / {len(labels) - sum(labels)} none): {cells}")


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000) -> np.ndarray:
    """Weights (bias last) of a logistic regression on standardised columns, by gradient descent."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) / len(y) + l2 * np.r_[w[:-1], 0]
        w -= 0.5 * grad
    return w


def fits(train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]], label: str) -> None:
    y = np.array([r["answerable"] for r in train], float)
    labels = [r["answerable"] for r in test]
    for extra in (None, *SIGNALS[2:]):
        cols = ["evidence", *([extra] if extra else [])]
        x = np.array([[r[c] for c in cols] for r in train])
        mu, sd = x.mean(0), x.std(0) + 1e-9
        w = logistic((x - mu) / sd, y)
        xt = (np.array([[r[c] for c in cols] for r in test]) - mu) / sd
        scores = list(np.hstack([xt, np.ones((len(xt), 1))]) @ w)
        if extra is None:
            plain = scores
        rng = np.random.default_rng(0)
        diffs = []
        for _ in range(300):
            pick = rng.integers(0, len(labels), len(labels))
            diffs.append(auc([scores[i] for i in pick], [labels[i] for i in pick]) - auc([plain[i] for i in pick], [labels[i] for i in pick]))
        print(
            f"{label}: logistic({' + '.join(cols)}) AUC {auc(scores, labels):.3f} "
            f"(against evidence alone {auc(scores, labels) - auc(plain, labels):+.3f} +- {np.nanstd(diffs):.3f})  weights {np.round(w[:-1], 2).tolist()}"
        )


FLOORS = (0.0, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40)


def rule(title: str, rows: Sequence[dict[str, Any]], signal: str, below: float | None = None) -> None:
    """Served figures (paraphrased tasks) with the confident verdict of a fact or preference in the
    gray zone taken back when its alignment `signal` is below each floor (`hold_back`)."""
    tasks = [r["task"] for r in rows]
    zone = "gray zone" if below is None else f"evidence below {below}"
    print(f"{title}, {zone}, hold back below {signal}: floor  R@5  nDCG@10  hit@1  answerable confident  none: confident  none: tokens  verdicts taken back")
    for floor in FLOORS:
        served = {}
        taken = 0
        for r in rows:
            settings = r["settings"]
            held = []
            served[r["task"].id] = serve_offline(r["candidates"], settings, after_fuse=lambda cs, r=r: held.append(hold_back(cs, settings, floor, lambda best: r[signal], below)))
            taken += sum(held)
        f = figures(served, tasks, "paraphrase")
        answerable = [t for t in tasks if t.kind != "no_answer"]
        confident = sum(1 for t in answerable if served[t.id].confident) / len(answerable)
        print(
            f"  {floor:.2f}  {f['R@5']:.3f}  {f['nDCG@10']:.3f}  {f['hit@1']:.3f}  {confident:.1%}  "
            f"{f.get('none: confident', float('nan')):.1%}  {f.get('none: tokens', float('nan')):.1f}  {taken}"
        )


def development_sets(workdir: Path) -> tuple[Any, dict[str, list[dict[str, Any]]]]:
    """The development sets' feature rows (`features`), stored under `workdir`: the agent corpus's
    calibration split, the personal development corpus and the agent corpus's test split; and the
    service of the agent corpus (its settings are the shipped ones)."""
    from alma_mcp.embedding.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    embedder.wait(timeout=300)
    encoder = embedder.encoder
    if encoder is None:
        raise SystemExit("alignment needs the numpy encoder (alma_mcp/embedding/bert.py)")
    memories, tasks = server_ids(load_memories(), load_tasks())
    calibration, test = split(tasks)
    alma, _ = build(workdir / "dev", embedder, memories)
    p_memories, p_tasks = server_ids(load_memories(DATA / PERSONAL_MEMORIES), load_tasks(DATA / PERSONAL_TASKS))
    p_alma, _ = build(workdir / "personal", embedder, p_memories)
    return alma, {
        "calibration split": features(alma, encoder, calibration, memories),
        "personal corpus": features(p_alma, encoder, p_tasks, p_memories),
        "test split (confirmation)": features(alma, encoder, test, memories),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--show", action="store_true", help="list each no-answer task's weakest word")
    args = parser.parse_args()

    _, sets = development_sets(args.workdir)
    cal, per, tst = sets.values()
    print("AUC, answerable (high) against no-answer tasks:")
    table("agent corpus, calibration split", cal)
    table("personal development corpus", per)
    table("agent corpus, test split", tst)
    table("calibration + personal", [*cal, *per])
    print()
    fits([*cal, *per], tst, "fit on calibration + personal, scored on the test split")
    fits([*cal, *per], [r for r in tst if gray(r)], "... test split, gray zone")
    fits(cal, per, "fit on calibration, scored on personal")
    fits(cal, [r for r in per if gray(r)], "... personal, gray zone")
    print()
    for signal, below in (("rare@1", None), ("weakest@1", None), ("mean@1", None), ("rare@1", 2.0), ("weakest@1", 2.0)):
        rule("agent corpus, calibration split", cal, signal, below)
        rule("personal development corpus", per, signal, below)
        rule("agent corpus, test split (confirmation)", tst, signal, below)
    if args.show:
        print("\nfacts and preferences, relevance_floor <= evidence < sure_floor, no lexical door:")
        for r in sorted([*cal, *per, *tst], key=lambda r: r["rare@1"]):
            s = r["settings"]
            if r["subject"] and s.relevance_floor <= r["evidence"] < s.sure_floor:
                print(f"  {'ANS ' if r['answerable'] else 'NONE'} conf {int(r['confident'])} ev {r['evidence']:.2f} gap {r['gap']:.2f} rare {r['rare@1']:.2f} weakest {r['weakest@1']:.2f}  {r['task'].task[:70]}")
        for r in [*cal, *per, *tst]:
            if r["confident"] and (r["subject"] or not r["answerable"]):
                t = r["task"]
                print(f"{'ANS ' if r['answerable'] else 'NONE'} {r['type'][:5]} ev {r['evidence']:.2f} gap {r['gap']:.2f} weakest {r['weakest@1']:.2f} ({r['word']}) mean {r['mean@1']:.2f}  {t.task}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
