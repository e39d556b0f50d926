"""Learning curve: does an agent using alma-mcp get better run after run?

A simulated agent meets a stream of tasks drawn from a dozen task families
(bench/data/learning_families.json, written by hand for this benchmark). Each family has
four candidate strategies: one works 85% of the time, the others 5-25%, so guessing succeeds
about 32% of the time. Some strategies (retry with backoff, restart, more logging, a longer
timeout) are candidates in several families and work in at most one of them, so a lesson
must be tied to the kind of task, not just the strategy. Every task is one of eight
paraphrases of its family, never the family's name.

The arms meet the same stream (same tasks, same random draws for success). The two memory
arms follow one policy and differ only in what the server gives them: alma = raw + lessons.
- none: no memory; the agent guesses among the candidates.
- raw: the outcome log only. Every outcome is recorded with `alma_learn`, but the server's
  learning is switched off through its configuration (no lesson can reach its thresholds),
  so memory holds raw outcomes and nothing else. Before a task the agent retrieves the five
  most relevant outcomes (`alma_retrieve`, memory_types=["outcome"]) and reads them as a
  sensible agent would: repeat the candidate strategy with the most successes shown (ties: the
  more relevant), else avoid the candidates shown failing and guess among the rest.
- alma: the default configuration. Before a task the agent calls `alma_retrieve` with
  memory_types=["heuristic", "anti_pattern", "outcome"] (the same five outcomes as raw, plus
  the lessons). It follows the best-ranked heuristic whose strategy is a candidate (unless an
  anti-pattern on that strategy is closer to the task); else it reads the outcomes exactly as
  the raw arm does, with the candidates named by the anti-patterns shown struck out first.
  Both memory arms record the outcome with `alma_learn` (failures with an error message).

- oracle (a reference, no server): the same policy and the same rules as alma's learner
  (thresholds, recency weighting, Wilson confidence, retirement) applied with perfect grouping
  (the true family), reading the family's five latest outcomes as its log. It is the ceiling
  of this policy and these rules on this stream; the gap between alma and oracle is what
  imperfect grouping and retrieval of paraphrased tasks cost.
- ceiling (a reference, no memory needed): an agent that knows each family's working strategy
  from the first episode. Its final block is the most any agent can score on these draws: with
  20 episodes a block and a working strategy that succeeds 85% of the time, it varies with the
  seed set (0.815 on seeds 0-9, 0.87 on 200-209, 0.852 over seeds 0-199).

Both memory arms talk to a real MCP server through the SDK's Client (in process), each on a
fresh embedded Chroma store with the real embedding model.

Two measures of success. The realised rate counts the draws: it is what happened, and a block
of 20 draws moves it by about 0.08 whatever the agent chose (the ceiling arm shows how much).
The expected rate scores each episode by the success probability of the strategy chosen: the
same quantity in expectation (a policy's success rate is the mean of what its choices are
worth), without the luck of the draws, so its standard error over 10 seeds is about 0.01
instead of 0.03 and two versions of the server can be told apart on the same seeds
(`--compare`). For the final block it also says why each choice that was not the working
strategy was made (an anti-pattern struck it out, a log success of another strategy was
copied, another strategy's heuristic was followed, or a guess).

Run:  .venv/bin/python bench/learning.py            (10 seeds x 200 episodes, 2-5 min)
      .venv/bin/python bench/learning.py --first-seed 200 --seeds 30   (held-out seeds 200-229)
      Arms can run in parallel: --arms raw --save a.json, --arms alma --save b.json, then --load a.json b.json.
      .venv/bin/python bench/learning.py --compare base.json new.json   (paired differences of two runs)
      .venv/bin/python bench/learning.py --calibrate  (similarity of paraphrases)
The table goes to stdout, the curve to bench/out/learning_curve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import anyio  # noqa: E402
import numpy as np  # noqa: E402
from mcp import Client  # noqa: E402

from alma_mcp.config import AgentSettings, LearningSettings, parse_config  # noqa: E402
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.learning.learner import Evidence, anti_pattern_state, heuristic_state, weigh  # noqa: E402
from alma_mcp.models import Outcome, new_id, strategy_key  # noqa: E402
from alma_mcp.frontends.server import create_server  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "learning_families.json"
OUT = HERE / "out"
AGENT = "solver"
ARMS = ("none", "raw", "alma", "oracle", "ceiling")


@dataclass(frozen=True)
class Family:
    name: str
    task_type: str
    paraphrases: list[str]
    strategies: dict[str, float]


@dataclass(frozen=True)
class Episode:
    family: Family
    task: str
    draw: float
    """One uniform draw: the chosen strategy succeeds when draw < its success probability."""

    @property
    def working(self) -> str:
        """The family's working strategy (the one most likely to succeed)."""
        return max(self.family.strategies, key=self.family.strategies.__getitem__)


@dataclass(frozen=True)
class Decision:
    """What the agent chose, the rule it followed, and the strategies anti-patterns struck out."""

    strategy: str
    why: str
    barred: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Choice:
    """One episode as scored: its success, and what the choice was worth before the draw."""

    success: bool
    expected: float
    """The chosen strategy's success probability: the same mean as `success` over many episodes,
    without the luck of the draw (the variance that makes blocks of 20 noisy)."""
    miss: str | None
    """Why the working strategy was not chosen (None when it was)."""


def score(episode: Episode, decision: Decision) -> Choice:
    probability = episode.family.strategies[decision.strategy]
    return Choice(episode.draw < probability, probability, miss_reason(episode, decision))


def miss_reason(episode: Episode, decision: Decision) -> str | None:
    """Why an agent following the policy did not choose the working strategy."""
    if decision.strategy == episode.working:
        return None
    if decision.why == "heuristic":
        return "followed another strategy's heuristic"
    if strategy_key(episode.working) in decision.barred:
        everything = {strategy_key(c) for c in episode.family.strategies} <= decision.barred
        return "working strategy struck out" + (" (every candidate struck out)" if everything else "")
    if decision.why == "copy success":
        return "copied another strategy's success from the log"
    return "guessed"


def load_families(path: Path = DATA) -> list[Family]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Family(f["name"], f["task_type"], f["paraphrases"], f["strategies"]) for f in data["families"]]


def make_stream(families: list[Family], episodes: int, seed: int) -> list[Episode]:
    rng = random.Random(seed)
    return [
        Episode(family, rng.choice(family.paraphrases), rng.random())
        for family in (rng.choice(families) for _ in range(episodes))
    ]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the agent's policies --------------------------------------------------------------
# One policy, two readers: the raw arm reads the outcome log only; the alma arm reads the
# same log (alma returns it too) plus the lessons learned from it. alma = raw + lessons.
def choose_from_log(
    outcomes: list[dict[str, Any]], candidates: list[str], rng: random.Random, barred: frozenset[str] = frozenset()
) -> Decision:
    """What a sensible reader of the outcomes shown does: repeat the candidate with the most
    successes among them (ties: the more relevant), else avoid the candidates shown failing and
    guess among the rest. `barred` strategy keys (named by anti-patterns) are never chosen."""
    by_key = {strategy_key(c): c for c in candidates}
    wins: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    failed: set[str] = set()
    for rank, item in enumerate(outcomes):
        key = strategy_key(item["memory"]["strategy_used"])
        if key not in by_key or key in barred:
            continue
        first_seen.setdefault(key, rank)
        if item["memory"]["outcome"] == "success":
            wins[key] = wins.get(key, 0) + 1
        else:
            failed.add(key)
    if wins:
        best = max(wins, key=lambda k: (wins[k], -first_seen[k]))
        return Decision(by_key[best], "copy success", barred)
    open_ = [c for c in candidates if strategy_key(c) not in barred] or candidates
    allowed = [c for c in open_ if strategy_key(c) not in failed] or open_
    return Decision(rng.choice(allowed), "guess, avoiding" if len(allowed) < len(candidates) else "guess", barred)


def choose_raw(memory: dict[str, Any], candidates: list[str], rng: random.Random) -> Decision:
    return choose_from_log(memory["outcomes"], candidates, rng)


def choose_alma(memory: dict[str, Any], candidates: list[str], rng: random.Random) -> Decision:
    by_key = {strategy_key(c): c for c in candidates}
    # Advice can conflict when a strategy works on one kind of task and fails on another:
    # trust whichever lesson is closer to this task.
    warned: dict[str, float] = {}
    for item in memory["anti_patterns"]:
        key = item["memory"].get("strategy_key")
        warned[key] = max(warned.get(key, 0.0), item["similarity"])
    for item in memory["heuristics"]:
        key = item["memory"].get("strategy_key") or strategy_key(item["memory"]["strategy"])
        if key in by_key and item["similarity"] >= warned.get(key, 0.0):
            return Decision(by_key[key], "heuristic", frozenset(warned))
    # No heuristic yet: the raw arm's reading of the outcome log, minus the warned strategies.
    return choose_from_log(memory["outcomes"], candidates, rng, frozenset(warned))


# -- one arm on one stream -------------------------------------------------------------
async def run_arm(
    arm: str,
    stream: list[Episode],
    seed: int,
    embedder: SentenceTransformerEmbedder,
    min_occurrences: int,
    min_alternatives: int | None = None,
    bound: float | None = None,
    typed_retrieval: bool = False,
) -> list[Choice]:
    rng = random.Random(seed * 1000 + 7)  # same guesses for the same situation in every arm
    results: list[Choice] = []
    if arm == "none":
        return [score(e, Decision(rng.choice(list(e.family.strategies)), "guess")) for e in stream]

    if arm == "oracle":
        return run_oracle(stream, rng, min_occurrences, min_alternatives, bound)

    if arm == "ceiling":
        return [score(e, Decision(e.working, "knows")) for e in stream]

    agent: dict[str, Any] = {"min_occurrences_for_heuristic": min_occurrences}
    learning: dict[str, Any] = {"min_alternative_outcomes": min_alternatives}
    if bound is not None:
        learning["max_success_bound_for_anti_pattern"] = bound
    if arm == "raw":  # outcomes are stored, but no lesson can ever reach its thresholds
        agent = {"min_occurrences_for_heuristic": 1_000_000}
        learning = {"min_failures_for_anti_pattern": 1_000_000}
    with tempfile.TemporaryDirectory(prefix=f"alma-bench-{arm}-", ignore_cleanup_errors=True) as tmp:
        config = parse_config(
            {"alma": {"project_id": "bench", "data_dir": tmp, "learning": learning, "agents": {AGENT: agent}}}
        )
        service = ALMA(config, embedder=embedder)
        server = create_server(alma=service)
        try:
            async with Client(server, mode="legacy") as client:
                for i, episode in enumerate(stream):
                    candidates = list(episode.family.strategies)
                    args: dict[str, Any] = {"task": episode.task, "agent": AGENT}
                    # Both arms see the five most relevant raw outcomes; alma also its lessons.
                    args["memory_types"] = ["outcome"] if arm == "raw" else ["heuristic", "anti_pattern", "outcome"]
                    if typed_retrieval:  # the task type the agent files its outcome under, known before the task
                        args["task_type"] = episode.family.task_type
                    got = await client.call_tool("alma_retrieve", args)
                    if got.is_error:
                        raise RuntimeError(f"alma_retrieve failed: {got.content[0].text}")
                    memory = got.structured_content
                    choose = choose_raw if arm == "raw" else choose_alma
                    decision = choose(memory, candidates, rng)
                    results.append(score(episode, decision))
                    strategy, success = decision.strategy, results[-1].success
                    record = {
                        "agent": AGENT,
                        "task": episode.task,
                        "outcome": "success" if success else "failure",
                        "strategy_used": strategy,
                        "task_type": episode.family.task_type,
                    }
                    if not success:
                        record["error_message"] = f"the problem was still there after: {strategy.lower()}"
                    learned = await client.call_tool("alma_learn", record)
                    if learned.is_error:
                        raise RuntimeError(f"alma_learn failed: {learned.content[0].text}")
                    if (i + 1) % 50 == 0:
                        _log(f"  {arm} seed {seed}: {i + 1}/{len(stream)} episodes, success so far {np.mean([c.success for c in results]):.2f}")
        finally:
            service.close()
    return results


def run_oracle(
    stream: list[Episode],
    rng: random.Random,
    min_occurrences: int,
    min_alternatives: int | None = None,
    bound: float | None = None,
) -> list[Choice]:
    """alma's rules on perfectly grouped outcomes: (family, strategy) is the lesson, and the
    family's outcomes of the other strategies are its alternatives. The rules themselves are the
    server's own functions (alma_mcp.learning.learner), so this arm cannot drift from them."""
    settings = LearningSettings(min_alternative_outcomes=min_alternatives)
    if bound is not None:
        settings = settings.model_copy(update={"max_success_bound_for_anti_pattern": bound})
    history: dict[tuple[str, str], list[Outcome]] = {}
    heuristic: dict[tuple[str, str], bool] = {}
    anti: dict[tuple[str, str], bool] = {}
    log: dict[str, list[Outcome]] = {}
    results: list[Choice] = []

    def alternatives(name: str, strategy: str, candidates: list[str]) -> Evidence | None:
        others = [o for c in candidates if c != strategy for o in history.get((name, c), [])]
        return weigh(others, settings.evidence_half_life) if others else None

    for episode in stream:
        name, candidates = episode.family.name, list(episode.family.strategies)
        trusted = [c for c in candidates if heuristic.get((name, c))]
        if trusted:
            decision = Decision(trusted[0], "heuristic")
        else:  # the family's five latest outcomes, read as the agents read theirs
            shown = [{"memory": {"strategy_used": o.strategy_used, "outcome": o.outcome}} for o in log.get(name, [])[-5:][::-1]]
            barred = frozenset(strategy_key(c) for c in candidates if anti.get((name, c)))
            decision = choose_from_log(shown, candidates, rng, barred)
        results.append(score(episode, decision))
        strategy, success = decision.strategy, results[-1].success
        key = (name, strategy)
        outcome = Outcome(id=new_id("outcome"), project="p", agent="a", task=episode.task,
                          outcome="success" if success else "failure", strategy_used=strategy)
        history.setdefault(key, []).append(outcome)
        log.setdefault(name, []).append(outcome)
        ev = weigh(history[key], settings.evidence_half_life)
        # A lesson exists (active or retired) once it has been active; until then its state is
        # None, as on the server, where there is no lesson to come back.
        state = heuristic_state(heuristic.get(key), ev, ev.confidence, settings, min_occurrences)
        if state or key in heuristic:
            heuristic[key] = state
        state = anti_pattern_state(anti.get(key), ev, alternatives(name, strategy, candidates), ev.fail_confidence, settings)
        if state or key in anti:
            anti[key] = state
        if heuristic.get(key) and anti.get(key):  # one lesson never says both: the majority decides
            heuristic[key], anti[key] = ev.rate >= 0.5, ev.rate < 0.5
        # This outcome is evidence about the alternatives to every other strategy of the family.
        for other in candidates:
            if other != strategy and anti.get((name, other)):
                other_ev = weigh(history[(name, other)], settings.evidence_half_life)
                anti[(name, other)] = anti_pattern_state(
                    True, other_ev, alternatives(name, other, candidates), other_ev.fail_confidence, settings
                )
    return results


def blocks(values: list[float], size: int) -> list[float]:
    return [float(np.mean(values[i : i + size])) for i in range(0, len(values), size)]


@dataclass
class Runs:
    """Per arm, one entry per seed: realised success per block, expected success per block (the
    mean success probability of the strategies chosen), and why the final block's choices that
    were not the working strategy were made."""

    realised: dict[str, list[list[float]]] = field(default_factory=dict)
    expected: dict[str, list[list[float]]] = field(default_factory=dict)
    misses: dict[str, list[dict[str, int]]] = field(default_factory=dict)

    def add(self, arm: str, choices: list[Choice], block: int) -> None:
        self.realised.setdefault(arm, []).append(blocks([float(c.success) for c in choices], block))
        self.expected.setdefault(arm, []).append(blocks([c.expected for c in choices], block))
        final = choices[-block:]
        self.misses.setdefault(arm, []).append(dict(Counter(c.miss for c in final if c.miss)))

    def merge(self, other: Runs) -> None:
        self.realised.update(other.realised)
        self.expected.update(other.expected)
        self.misses.update(other.misses)

    def to_json(self) -> dict[str, Any]:
        return {"per_arm": self.realised, "expected_per_arm": self.expected, "final_misses": self.misses}

    @classmethod
    def from_json(cls, run: dict[str, Any]) -> Runs:
        """Files saved before the expected figures have the realised ones only."""
        return cls(run["per_arm"], run.get("expected_per_arm", {}), run.get("final_misses", {}))


def second_half(blocks: list[float]) -> float:
    """Mean of a run's later half of blocks (episodes 101-200 of 200)."""
    return float(np.mean(blocks[len(blocks) // 2 :]))


def mean_and_error(values: list[float]) -> str:
    """Mean over seeds +- its standard error."""
    error = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} +- {error:.3f}"


def print_expected(runs: Runs, arms: list[str], block: int, episodes: int) -> None:
    """The same means without the luck of the draws: each episode scored by the success
    probability of the strategy chosen. A block of 20 draws moves the realised rate by about
    0.08 either way whatever the agent does (the ceiling arm shows it); what the agent chose is
    what memory can change, and this measures that alone."""
    arms = [arm for arm in arms if arm in runs.expected]
    half = len(next(iter(runs.expected.values()))[0]) // 2  # blocks before the second half
    print("expected success (each choice scored by its strategy's success probability), mean +- standard error over seeds:")
    print("  final block:         " + "; ".join(f"{arm} {mean_and_error([b[-1] for b in runs.expected[arm]])}" for arm in arms))
    print(f"  episodes {half * block + 1}-{episodes}: " + "; ".join(
        f"{arm} {mean_and_error([second_half(b) for b in runs.expected[arm]])}" for arm in arms))
    for arm in arms:
        total: Counter[str] = Counter()
        for seed_misses in runs.misses.get(arm, []):
            total.update(seed_misses)
        if total and arm != "none":
            choices = block * len(runs.misses[arm])
            print(f"  final block, {arm}: {sum(total.values())} of {choices} choices not the working strategy: "
                  + "; ".join(f"{why} {n}" for why, n in total.most_common()))


TARGET = 0.80
"""The issue's target for alma's final block (episodes 181-200)."""


def print_target(runs: Runs) -> None:
    """alma's final block against the target, with what these seeds' draws allow: the ceiling arm
    chooses right every time, so its realised rate is these draws' luck (its expected rate is
    0.850 on any seeds). A 10-seed realised mean carries about 0.026 of that luck; bench/README.md
    has the figures over 150 seeds."""
    if "alma" not in runs.realised:
        return
    realised = float(np.mean([b[-1] for b in runs.realised["alma"]]))
    line = f"target: alma's final block >= {TARGET:.2f}: realised {realised:.3f}"
    if "alma" in runs.expected:
        line += f", expected {mean_and_error([b[-1] for b in runs.expected['alma']])}"
    if "ceiling" in runs.realised:
        luck = float(np.mean([b[-1] for b in runs.realised["ceiling"]]))
        line += f" (on these draws an agent that always chooses right realises {luck:.3f}, expected 0.850)"
    print(line)


def compare(base_path: str, new_path: str) -> None:
    """Paired differences, new minus base, of two saved runs on the same seeds."""
    base, new = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (base_path, new_path))
    if base["seeds"] != new["seeds"]:
        raise SystemExit("--compare needs two runs on the same seeds")
    a, b = Runs.from_json(base), Runs.from_json(new)
    print(f"paired difference, {new_path} minus {base_path}, mean +- standard error over seeds {base['seeds']}:")
    for arm in [arm for arm in ARMS if arm in a.realised and arm in b.realised]:
        figures = [("final block, realised", a.realised, b.realised, lambda x: x[-1])]
        if arm in a.expected and arm in b.expected:
            figures += [
                ("final block, expected", a.expected, b.expected, lambda x: x[-1]),
                ("second half, expected", a.expected, b.expected, second_half),
            ]
        parts = [
            f"{label} {mean_and_error([pick(y) - pick(x) for x, y in zip(before[arm], after[arm])])}"
            for label, before, after, pick in figures
        ]
        print(f"  {arm}: " + "; ".join(parts))


def calibrate(embedder: SentenceTransformerEmbedder, families: list[Family]) -> None:
    """How similar paraphrases of one family are, pairwise and to the mean of a few others."""
    texts = [p for f in families for p in f.paraphrases]
    labels = np.array([i for i, f in enumerate(families) for _ in f.paraphrases])
    vectors = embedder.embed(texts)
    sims = vectors @ vectors.T
    upper = np.triu_indices(len(texts), 1)
    same = sims[upper][labels[upper[0]] == labels[upper[1]]]
    other = sims[upper][labels[upper[0]] != labels[upper[1]]]
    print("pairwise cosine similarity of task wordings (all-MiniLM-L6-v2)")
    print(f"  same family:      p10 {np.percentile(same, 10):.3f}  median {np.median(same):.3f}")
    print(f"  different family: median {np.median(other):.3f}  p99 {np.percentile(other, 99):.3f}  max {other.max():.3f}")
    rng = np.random.default_rng(0)
    print("threshold | pairs of one family grouped | mean-of-3 grouped | other-family pairs wrongly grouped")
    for threshold in (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.70):
        hits = trials = 0
        for _ in range(2000):
            i = int(rng.integers(len(texts)))
            pool = [j for j in np.flatnonzero(labels == labels[i]) if j != i]
            centre = vectors[rng.choice(pool, 3, replace=False)].mean(axis=0)
            hits += float(vectors[i] @ (centre / np.linalg.norm(centre))) >= threshold
            trials += 1
        print(
            f"  {threshold:.2f}    | {np.mean(same >= threshold):.3f}                       | "
            f"{hits / trials:.3f}             | {np.mean(other >= threshold):.4f}"
        )


def plot(runs: Runs, arms: list[str], block: int, path: Path, episodes: int, seeds: list[int]) -> None:
    """The realised curve, and beside it the expected one (no luck of the draws) where it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("success rate in block (realised)", runs.realised)]
    if all(arm in runs.expected for arm in arms):
        panels.append(("expected success in block (no luck of the draws)", runs.expected))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.2), squeeze=False)
    labels = {
        "none": "no memory (guess)",
        "raw": "raw outcome log",
        "alma": "alma learning",
        "oracle": "same policy and rules, perfect grouping (reference)",
        "ceiling": "knows the working strategy from the start (reference)",
    }
    references = {"oracle": {"color": "grey"}, "ceiling": {"color": "black", "linewidth": 0.8}}
    for ax, (ylabel, per_arm) in zip(axes[0], panels):
        for arm in arms:
            ys = list(np.mean(np.array(per_arm[arm]), axis=0))
            x = [block * (i + 1) for i in range(len(ys))]
            style = {"linestyle": "--", "marker": None, **references[arm]} if arm in references else {"marker": "o"}
            ax.plot(x, ys, label=labels[arm], **style)
        ax.set_xlabel(f"episode (blocks of {block})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1)
        ax.axhline(TARGET, color="grey", linestyle=":", linewidth=1)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Learning curve, {episodes} episodes, mean of seeds {seeds[0]}-{seeds[-1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_runs(paths: list[str], args: argparse.Namespace) -> tuple[list[int], Runs]:
    """Arms run separately (`--save`, e.g. in parallel) on the same seeds, put back together."""
    seeds: list[int] | None = None
    runs = Runs()
    for path in paths:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
        if seeds is not None and run["seeds"] != seeds:
            raise SystemExit(f"{path}: seeds {run['seeds']} differ from {seeds}")
        mine = (args.episodes, args.block, args.min_occurrences, args.min_alternatives, args.bound, args.typed_retrieval)
        theirs = (run["episodes"], run["block"], run["min_occurrences"], run.get("min_alternatives"), run.get("bound"), run.get("typed_retrieval", False))
        if theirs != mine:
            raise SystemExit(
                f"{path}: episodes, block, min_occurrences, min_alternative_outcomes, max_success_bound_for_anti_pattern "
                "or --typed-retrieval differ from this command's"
            )
        seeds = run["seeds"]
        runs.merge(Runs.from_json(run))
    args.arms = [arm for arm in ARMS if arm in runs.realised]
    return seeds or [], runs


async def main_async(args: argparse.Namespace) -> int:
    families = load_families()
    started = time.perf_counter()
    if args.compare:
        compare(*args.compare)
        return 0
    if args.load:
        seeds, runs = load_runs(args.load, args)
    else:
        embedder = SentenceTransformerEmbedder()
        embedder.wait(timeout=300)
        if args.calibrate:
            calibrate(embedder, families)
            return 0
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        runs = Runs()
        for seed in seeds:
            stream = make_stream(families, args.episodes, seed)
            for arm in args.arms:
                t0 = time.perf_counter()
                results = await run_arm(
                    arm, stream, seed, embedder, args.min_occurrences, args.min_alternatives, args.bound, args.typed_retrieval
                )
                runs.add(arm, results, args.block)
                _log(f"seed {seed} arm {arm}: overall {np.mean([c.success for c in results]):.3f}, "
                     f"last block {runs.realised[arm][-1][-1]:.2f} ({time.perf_counter() - t0:.0f}s)")
        if args.save:
            Path(args.save).parent.mkdir(parents=True, exist_ok=True)
            Path(args.save).write_text(json.dumps({
                "seeds": seeds, "episodes": args.episodes, "block": args.block,
                "min_occurrences": args.min_occurrences, "min_alternatives": args.min_alternatives, "bound": args.bound,
                "typed_retrieval": args.typed_retrieval,
                **runs.to_json(),
            }), encoding="utf-8")
    per_arm = runs.realised
    finals = {arm: [blocks[-1] for blocks in per_arm[arm]] for arm in args.arms}
    curves = {arm: list(np.mean(np.array(per_arm[arm]), axis=0)) for arm in args.arms}

    print(f"Success rate per block of {args.block} episodes, mean over seeds {seeds} "
          f"({len(families)} families, {args.episodes} episodes each run, "
          f"min_occurrences_for_heuristic={args.min_occurrences}, min_alternative_outcomes={args.min_alternatives}, "
          f"max_success_bound_for_anti_pattern={LearningSettings().max_success_bound_for_anti_pattern if args.bound is None else args.bound}, "
          f"task_type passed to alma_retrieve: {'yes' if args.typed_retrieval else 'no'})")
    print("| episodes | " + " | ".join(args.arms) + " |")
    print("|---|" + "---|" * len(args.arms))
    for b in range(len(curves[args.arms[0]])):
        lo, hi = b * args.block + 1, min((b + 1) * args.block, args.episodes)
        print(f"| {lo}-{hi} | " + " | ".join(f"{curves[arm][b]:.2f}" for arm in args.arms) + " |")
    print("final block per seed: " + "; ".join(f"{arm} {[round(v, 2) for v in finals[arm]]}" for arm in args.arms))
    print("final block, mean and standard deviation over seeds: " + "; ".join(
        f"{arm} {np.mean(finals[arm]):.3f} +- {np.std(finals[arm], ddof=1) if len(finals[arm]) > 1 else 0.0:.3f}"
        for arm in args.arms))
    if runs.expected:
        print_expected(runs, args.arms, args.block, args.episodes)
    print_target(runs)
    guess = np.mean([np.mean(list(f.strategies.values())) for f in families])
    print(f"expected success of a pure guess: {guess:.3f}; wall time {time.perf_counter() - started:.0f}s")
    if not args.no_plot:
        path = Path(args.out)
        plot(runs, args.arms, args.block, path, args.episodes, seeds)
        print(f"curve written to {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10, help="Number of runs (seeds); figures are their mean.")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="Seeds first..first+N-1 (default 0). The rules were tuned on seeds 0-9: report others as held out.",
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--min-occurrences",
        type=int,
        default=AgentSettings().min_occurrences_for_heuristic,
        help="The agent's min_occurrences_for_heuristic (default: the config default).",
    )
    parser.add_argument(
        "--min-alternative-outcomes",
        dest="min_alternatives",
        type=int,
        default=None,
        help="learning.min_alternative_outcomes for the alma and oracle arms (default: off, as in the config).",
    )
    parser.add_argument(
        "--max-success-bound-for-anti-pattern",
        dest="bound",
        type=float,
        default=None,
        help="learning.max_success_bound_for_anti_pattern for the alma and oracle arms (default: the config default; 1: off).",
    )
    parser.add_argument(
        "--typed-retrieval",
        action="store_true",
        help="both memory arms pass the task's type to alma_retrieve, so lessons and outcomes of other task types "
        "are left out (default: every task type is a candidate)",
    )
    parser.add_argument("--out", default=str(OUT / "learning_curve.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--save", help="Also write the per-seed block results of this run to this JSON file.")
    parser.add_argument(
        "--load", nargs="+", help="Run nothing: combine the arms of files written by --save (same seeds) into one table and curve."
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("BASE", "NEW"),
        help="Run nothing: paired differences (NEW minus BASE) of two files written by --save on the same seeds.",
    )
    parser.add_argument("--calibrate", action="store_true", help="Print paraphrase similarities and exit.")
    return anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
