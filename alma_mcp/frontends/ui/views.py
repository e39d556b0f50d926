"""What the review page shows, computed from the service: plain functions returning JSON-ready
dicts, so they are tested without a browser. Nothing here writes."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ...learning.learner import wilson_lower_bound
from ...models import MEMORY_TYPES, OUTCOME_WEIGHTS, AnyMemory, Outcome

if TYPE_CHECKING:
    from ...service import ALMA

LESSONS = ("heuristic", "anti_pattern")


def summary(memory: AnyMemory) -> dict[str, Any]:
    """One row of a listing."""
    return {
        "id": memory.id,
        "type": memory.type,
        "agent": memory.agent,
        "title": memory.title(),
        "confidence": getattr(memory, "confidence", None),
        "helpful": memory.helpful,
        "harmful": memory.harmful,
        "task_type": getattr(memory, "task_type", None),
        "archived": memory.archived,
        "archived_reason": memory.archived_reason,
        "updated_at": memory.updated_at.isoformat(),
    }


def overview(alma: "ALMA") -> dict[str, Any]:
    """The agents and how many active memories of each type they hold."""
    stats = alma.stats()
    return {
        "project": stats["project"],
        "storage": stats["storage"],
        "agents": [a["name"] for a in alma.agents()],
        "counts": stats["agents"],
        "preferences": stats["preferences"],
        "types": list(MEMORY_TYPES),
    }


def memory_page(alma: "ALMA", memory_id: str) -> dict[str, Any]:
    """One memory, the outcomes it was learned from, its audit history and its confidence over time."""
    detail = alma.get(memory_id)
    memory = detail.memory
    history = alma.audit_log(limit=1000, memory_id=memory.id)
    return {
        "memory": memory.model_dump(mode="json"),
        "title": memory.title(),
        "provenance": [
            summary(o) | {"outcome": o.outcome, "created_at": o.created_at.isoformat()}
            for o in detail.provenance
            if isinstance(o, Outcome)
        ],
        "audit": [e.model_dump(mode="json", exclude={"snapshot"}) for e in history],
        "confidence": confidence_series(memory, detail.provenance, history),
        "editable": _editable(memory),
    }


def _editable(memory: AnyMemory) -> list[str]:
    from ...service import EDITABLE

    return list(EDITABLE.get(memory.type, ()))


def confidence_series(memory: AnyMemory, outcomes: list[Any], history: list[Any]) -> list[dict[str, Any]]:
    """Points (time, value, what) of a memory's confidence: for a learned lesson, the lower Wilson
    bound of its success rate as each outcome came in (what learning's evidence said then);
    the before/after values the audit log kept for feedback; and the value now."""
    points: list[dict[str, Any]] = []
    wins = 0.0
    for n, outcome in enumerate(sorted(outcomes, key=lambda o: o.created_at), 1):
        wins += OUTCOME_WEIGHTS[outcome.outcome]
        rate = wins if memory.type == "heuristic" else n - wins
        points.append({"at": outcome.created_at.isoformat(), "value": round(wilson_lower_bound(rate, n), 4),
                       "source": f"evidence after {n} outcome{'s' if n > 1 else ''}"})
    for entry in sorted(history, key=lambda e: e.at):
        details = entry.details if isinstance(entry.details, dict) else {}
        before, after = details.get("confidence_before"), details.get("confidence_after")
        if isinstance(before, (int, float)):  # the value the change started from (after a taught memory's start, say)
            points.append({"at": entry.at.isoformat(), "value": before, "source": f"before {entry.action}"})
        if isinstance(after, (int, float)):
            points.append({"at": entry.at.isoformat(), "value": after, "source": f"{entry.action}: {entry.reason}"})
    if hasattr(memory, "confidence"):
        points.append({"at": memory.updated_at.isoformat(), "value": memory.confidence, "source": "now"})
    return sorted(points, key=lambda p: p["at"])


def learning(alma: "ALMA", agent: str) -> dict[str, Any]:
    """Per day: lessons formed (created), retired (archived, merged or purged) and restored, from
    the audit log; and the success rate of the agent's recorded outcomes by task type."""
    days: dict[str, dict[str, int]] = defaultdict(lambda: {"formed": 0, "retired": 0, "restored": 0})
    lessons: list[AnyMemory] = []
    for kind in LESSONS:
        lessons += [m for m in alma.list_memories(agent, kind, limit=100000, include_archived=True) if m.agent == agent]
    for lesson in lessons:
        days[lesson.created_at.date().isoformat()]["formed"] += 1
    for entry in alma.audit_log(limit=10000, agent=agent):
        if entry.memory_type in LESSONS and entry.action in ("archive", "merge", "purge"):
            days[entry.at.date().isoformat()]["retired"] += 1
        elif entry.memory_type in LESSONS and entry.action == "restore":
            days[entry.at.date().isoformat()]["restored"] += 1
    outcomes = [
        m
        for m in alma.list_memories(agent, "outcome", limit=100000, include_archived=True)
        if isinstance(m, Outcome) and m.agent == agent
    ]
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"success": 0, "partial": 0, "failure": 0})
    for outcome in outcomes:
        by_type[outcome.task_type or "(none)"][outcome.outcome] += 1
    rates = []
    for task_type, counts in sorted(by_type.items()):
        total = sum(counts.values())
        rates.append({"task_type": task_type, "total": total, **counts,
                      "success_rate": round((counts["success"] + 0.5 * counts["partial"]) / total, 3)})
    return {
        "agent": agent,
        "active": {k: sum(1 for m in lessons if m.type == k and not m.archived) for k in LESSONS},
        "archived": {k: sum(1 for m in lessons if m.type == k and m.archived) for k in LESSONS},
        "days": [{"day": d, **c} for d, c in sorted(days.items())],
        "outcomes": len(outcomes),
        "by_task_type": rates,
    }


def search(alma: "ALMA", task: str, agent: str, user_id: str | None, task_type: str | None, top_k: int | None) -> dict[str, Any]:
    """What alma_retrieve would inject for this task (the prompt, verbatim) and why."""
    result = alma.retrieve(task, agent, top_k, user_id, task_type=task_type)
    why = alma.explain(task, agent, top_k, user_id, task_type=task_type, n=20)
    return {
        "prompt": result.prompt,
        "injected": [{"id": s.memory.id, "type": s.memory.type, "score": round(s.score, 4)} for s in result.all()],
        "explanation": why.model_dump(mode="json"),
    }
