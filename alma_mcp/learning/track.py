"""An agent's track record on tasks like this one: its own past attempts, tallied by strategy.

Lessons (heuristics, anti-patterns) form once an agent has done a kind of task several times and
the outcomes agree. Before that, and whenever the kinds of task are not labelled, the best
evidence an agent has is what it tried on similar tasks and how that went. Shown one attempt at a
time, that evidence is noisy: the five nearest attempts may be on another kind of task, a lucky
success of a poor strategy reads as much as a real one, and one strategy may be named five times
while the one that works is named once.

So retrieval also tallies the agent's own outcomes on similar tasks, strategy by strategy,
weighing each attempt by how similar its task is to this one (a soft ramp on the similarity of
the two tasks' wording), and states the result once per strategy: the one to use (the best
success rate, once it has worked), the ones to avoid (they have failed, and their rate is no
better than that of a strategy not yet tried, or, when they failed closer to this task than they
ever worked, mixed and mostly failing: at most 0.45), and the others as tried. The success rates
are smoothed towards a prior, so one lucky success is not a rule and one failure is not a verdict against a strategy that has also worked.

Everything here is pure: the numbers in, the record out. Retrieval finds the neighbours;
prompt/render.py renders the record inside a data fence.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, Field

from ..models import OUTCOME_WEIGHTS, Outcome, strategy_key

RAMP_LOW = 0.20
"""Tasks whose wording is less similar than this to the task at hand count for nothing. Two people
describing one kind of task often write wordings only 0.2-0.35 similar (all-MiniLM-L6-v2; in the
field benchmark's development set a tenth of the pairs of one kind are below 0.22-0.35, by agent),
so from here up an attempt counts a fraction: at 0.30 those attempts were left out, and a task
met in an unusual wording got no record while the agent had done its kind before."""
RAMP_HIGH = 0.50
"""From this similarity up, an attempt counts in full."""
PRIOR_SUCCESS = 0.5
PRIOR_FAILURE = 1.0
"""The smoothing: a strategy is credited with this many successes and failures before any
attempt (a mean of one in three: most strategies an agent tries on a task do not work)."""
USE_AT_LEAST = 0.5
"""A strategy is the one to use when its smoothed success rate is at least this."""
AVOID_AT_MOST = 0.45
"""A strategy that has failed on a task more similar to this one than any it worked on is avoided
up to this smoothed success rate: a record that is mixed and mostly failing (1 of 3, 2 of 5) with
its successes further away is the neighbouring-situation case. The commonest such strategy,
traced on the development workload, had worked in a neighbouring situation (often an outcome the
user recorded) and failed on this kind of task; left as "tried", the agent kept trying it while a
candidate was untried. Chosen on the development workload (offline replay and the server;
docs/learning-benchmark.md, "A mixed record is a poor bet" and "Where the failures are"), against
a bar of 0.40 for every strategy."""
AVOID_AT_MOST_OTHERWISE = PRIOR_SUCCESS / (PRIOR_SUCCESS + PRIOR_FAILURE)
"""A strategy whose closest attempt worked (or tied with a failure) is avoided only when its rate is
no better than a strategy not yet tried (the prior's 1 in 3): a strategy that works 70% of the
time and starts 2 of 5 on this very kind of task is not struck out by its bad start."""
MIN_WEIGHT = 0.05
"""Attempts weighing less than this are left out (and not counted as seen)."""

Verdict = Literal["use", "avoid", "tried"]


class StrategyRecord(BaseModel):
    strategy: str = Field(description="The strategy, as worded in its most similar attempt.")
    verdict: Verdict = Field(
        "tried",
        description="use: the best success rate on similar tasks, and it has worked; avoid: it has failed, and its "
        "rate is at most 1 in 3 (an untried strategy's), or 0.45 when it failed on a more similar task than any "
        "it worked on; tried: neither.",
    )
    successes: int = Field(0, description="Similar attempts with this strategy that succeeded.")
    attempts: int = Field(0, description="Similar attempts with this strategy.")
    rate: float = Field(0.0, description="Success rate, each attempt weighed by its task's similarity, smoothed towards 1 in 3.")
    weighted_successes: float = Field(0.0, exclude=True)
    weighted_attempts: float = Field(0.0, exclude=True)
    best_similarity: float = Field(0.0, description="Similarity of its most similar attempt's task to this task.")
    closest_success: float = Field(-1.0, exclude=True, description="Similarity of its most similar successful attempt.")
    closest_failure: float = Field(-1.0, exclude=True, description="Similarity of its most similar failed attempt.")
    ids: list[str] = Field(default_factory=list, description="The outcomes tallied, most similar first.")

    def smoothed(self) -> float:
        return (self.weighted_successes + PRIOR_SUCCESS) / (self.weighted_attempts + PRIOR_SUCCESS + PRIOR_FAILURE)


class TrackRecord(BaseModel):
    """The agent's own attempts at similar tasks, tallied by strategy."""

    strategies: list[StrategyRecord] = Field(
        default_factory=list, description="Use first, then tried, then avoid; each group by success rate (empty: no record)."
    )
    attempts: int = Field(0, description="Outcomes tallied.")

    @property
    def ids(self) -> set[str]:
        return {i for s in self.strategies for i in s.ids}


def weight(similarity: float) -> float:
    if similarity <= RAMP_LOW:
        return 0.0
    if similarity >= RAMP_HIGH:
        return 1.0
    return (similarity - RAMP_LOW) / (RAMP_HIGH - RAMP_LOW)


def avoid_bar(record: StrategyRecord) -> float:
    """The highest smoothed rate at which `record`, having failed, is avoided."""
    if record.closest_failure > record.closest_success:
        return AVOID_AT_MOST
    return AVOID_AT_MOST_OTHERWISE


def tally(neighbours: Sequence[tuple[Outcome, float]]) -> TrackRecord | None:
    """The track record over `neighbours` (an outcome and the similarity of its task to this
    one); None when no attempt is similar enough to count, or when no strategy is either to use or
    to avoid."""
    records: dict[str, StrategyRecord] = {}
    attempts = 0
    for outcome, similarity in sorted(neighbours, key=lambda n: -n[1]):
        w = weight(similarity)
        if w < MIN_WEIGHT:
            continue
        key = strategy_key(outcome.strategy_used)
        record = records.setdefault(key, StrategyRecord(strategy=outcome.strategy_used, best_similarity=round(similarity, 4)))
        c = OUTCOME_WEIGHTS[outcome.outcome]
        record.attempts += 1
        record.successes += int(c == 1.0)
        record.weighted_attempts += w
        record.weighted_successes += w * c
        record.ids.append(outcome.id)
        if c == 1.0:
            record.closest_success = max(record.closest_success, similarity)
        else:
            record.closest_failure = max(record.closest_failure, similarity)
        attempts += 1
    if not records:
        return None
    for record in records.values():
        record.rate = round(record.smoothed(), 4)
    ranked = sorted(records.values(), key=lambda r: (-r.rate, -r.best_similarity))
    best = ranked[0]
    if best.successes > 0 and best.rate >= USE_AT_LEAST:
        best.verdict = "use"
    for record in ranked:
        if record.verdict != "use" and record.successes < record.attempts and record.smoothed() <= avoid_bar(record) + 1e-9:
            record.verdict = "avoid"
    if all(record.verdict == "tried" for record in ranked):
        return None  # it would say nothing either way, and a task with no answer would pay for it
    order = {"use": 0, "tried": 1, "avoid": 2}
    return TrackRecord(strategies=sorted(ranked, key=lambda r: (order[r.verdict], -r.rate)), attempts=attempts)
