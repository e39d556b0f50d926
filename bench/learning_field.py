"""Learning like real use: several agents in one store, taught memories, no task_type, text only.

bench/learning.py measures alma-mcp on the workload its rules were tuned on: one agent, no
other memories, `task_type` on every call and an agent that reads alma's structured fields.
This benchmark is the workload a new user brings (docs/learning-benchmark.md):

- Four agents share one store, each with three kinds of task of its own (12 kinds a set).
  Each kind has four candidate strategies: on most one works 90% of the time and the others
  10-20%; on some two strategies work (90% and 85%); on some the best works only 70%. Some
  strategies are candidates in several kinds of one agent and work in none of them, or in
  another kind the agent was taught about. An agent told the best strategy scores 0.85.
- Every task is one of eight paraphrases of its kind, in random order over the four agents.
- Before the run each agent is taught about fifty memories of all five types through the MCP
  tools (knowledge, preferences, heuristics, anti-patterns, and past outcomes with
  `alma_learn`), on the same and on unrelated subjects; some name candidate strategies,
  rightly for another kind of task.
- No call passes `task_type`.
- The agent sees only text: the prompt an LLM would be given. It reads it with one rule, the
  same for every arm (`read_memory_text`, `decide`).

Two sets of kinds: bench/data/field_dev.json (software operations, terse tickets) for choosing
rules, and bench/data/field_heldout.json (a small business's shop, app, clinic and office IT,
written as chatty requests) for reporting only.

Arms (same stream, same draws, same reader):
- none: no memory; a guess among the candidates.
- plain: what users compare alma-mcp with, a plain vector store: one Chroma collection per
  agent with the same embedding model, every outcome stored as one line of text ("Task: ...
  Outcome: success. Worked: ..." / "Task: ... Outcome: failure. Tried: ... Error: ..."), the
  taught memories as lines of text, the five nearest by cosine returned with no floor and no
  lessons, one line each.
- alma: a real MCP server through the SDK's Client (in process) on a fresh embedded Chroma
  store in its default configuration: `alma_retrieve` (the agent and the user, nothing else)
  before each task, its `prompt` read, then `alma_learn` without task_type.
- told-best (a reference): an agent told each kind's best strategy.

Figures: success in episodes 21-60, over all 200 and in the last 20, realised (the draws) and
expected (each choice scored by its strategy's success probability: the same mean without the
luck of the draws), paired over seeds: alma minus plain with the standard error of the paired
difference, and the lowest per-seed alma minus none.

Run:  python bench/learning_field.py                        (dev set, 30 seeds, all arms)
      python bench/learning_field.py --set heldout          (the figures to report)
      python bench/learning_field.py --arms alma --save a.json; ... --load a.json b.json
      python bench/learning_field.py --compare base.json new.json   (paired, new minus base)
      python bench/learning_field.py --trace 3 --arms alma  (print what the agent read, seed 0)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the alma-mcp command does for its process (the library leaves it to its host): numpy's BLAS
# on one thread, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import anyio  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = {"dev": HERE / "data" / "field_dev.json", "heldout": HERE / "data" / "field_heldout.json"}
ARMS = ("none", "plain", "alma", "told-best")
PLAIN_TOP_K = 5
WINDOWS = {"episodes 21-60": (20, 60), "all": (0, None), "last 20": (-20, None)}


# -- the workload ------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    name: str
    agent: str
    paraphrases: list[str]
    strategies: dict[str, float]
    errors: list[str]

    @property
    def best(self) -> str:
        return max(self.strategies, key=self.strategies.__getitem__)


@dataclass(frozen=True)
class Workload:
    name: str
    user: str
    kinds: list[Kind]
    taught: dict[str, dict[str, list[list[Any]]]]
    """Per agent, per memory type, the memories taught before the run."""
    common: list[list[str]]
    """Knowledge taught to every agent."""

    @property
    def agents(self) -> list[str]:
        return list(self.taught)


def load_workload(name: str) -> Workload:
    data = json.loads(SETS[name].read_text(encoding="utf-8"))
    kinds = [
        Kind(k["name"], agent, k["paraphrases"], k["strategies"], k["errors"])
        for agent, body in data["agents"].items()
        for k in body["kinds"]
    ]
    workload = Workload(name, data["user"], kinds, {a: b["taught"] for a, b in data["agents"].items()}, data.get("common", []))
    check_workload(workload)
    return workload


def check_workload(w: Workload) -> None:
    """The reader finds strategies by name: a task, an error, a fact or a preference that named
    one would be read as advice. And within a kind no candidate may contain another."""
    names = {s.lower() for k in w.kinds for s in k.strategies}
    prose = [p for k in w.kinds for p in k.paraphrases + k.errors] + [f for _, f in w.common]
    for taught in w.taught.values():
        prose += [fact for _, fact in taught["knowledge"]] + [pref for _, pref in taught["preferences"]]
        prose += [o[0] for o in taught["outcomes"]] + [o[3] for o in taught["outcomes"] if o[3]]
    for text in prose:
        hit = [n for n in names if n in text.lower()]
        if hit:
            raise SystemExit(f"{w.name}: {text!r} names the strategy {hit[0]!r}")
    for k in w.kinds:  # an error saying "failure" after a strategy's name would be read as its result
        for text in k.errors + k.paraphrases:
            if RESULT_WORD.search(text):
                raise SystemExit(f"{w.name}: {text!r} says success, failure or partial")
    for k in w.kinds:
        if len(k.paraphrases) != 8 or len(k.strategies) != 4:
            raise SystemExit(f"{w.name}: {k.name} needs 8 paraphrases and 4 strategies")
        low = [s.lower() for s in k.strategies]
        if any(a != b and a in b for a in low for b in low):
            raise SystemExit(f"{w.name}: {k.name} has a strategy inside another")


@dataclass(frozen=True)
class Episode:
    kind: Kind
    task: str
    draw: float
    """The chosen strategy succeeds when draw < its success probability (same draw in every arm)."""
    error: str


def make_stream(w: Workload, episodes: int, seed: int) -> list[Episode]:
    rng = random.Random(seed)
    stream = []
    for _ in range(episodes):
        kind = rng.choice(w.kinds)
        stream.append(Episode(kind, rng.choice(kind.paraphrases), rng.random(), rng.choice(kind.errors)))
    return stream


# -- the reader: one rule for every arm ---------------------------------------------------
NEGATIVE_CUES = {"avoid", "never", "not", "don't", "dont", "stop"}
POSITIVE_CUES = {"do", "instead", "worked", "use", "prefer", "try"}
VERDICT = re.compile(r"\b(?:outcome|result)\W+(success|failure|partial)\b", re.IGNORECASE)
RESULT_WORD = re.compile(r"\b(success|failure|partial)\b", re.IGNORECASE)
ITEM = re.compile(r"^\s*(?:[-*]|\d+[.)]?)\s")
WORD = re.compile(r"[a-z']+")


def records(text: str) -> list[list[str]]:
    """A record is one memory: a list item (a bulleted or numbered line) and what follows it up to
    the next item or blank line."""
    out: list[list[str]] = []
    current: list[str] = []
    for line in text.splitlines():
        if not line.strip() or ITEM.match(line):
            if current:
                out.append(current)
            current = [line] if line.strip() else []
        else:
            current.append(line)
    if current:
        out.append(current)
    return out


@dataclass
class Votes:
    positive: int = 0
    negative: int = 0
    first: int = 1_000_000
    """Position of the first mention in the text (the reader trusts what comes first on ties)."""

    @property
    def net(self) -> int:
        return self.positive - self.negative


def read_memory_text(text: str, candidates: list[str]) -> dict[str, Votes]:
    """What the text says about each candidate strategy, as a reader who knows only the
    candidates' names would take it. A mention is a candidate's name, ignoring case. Its sign
    comes from the word just before it on its line, when that word is a directive ("avoid",
    "never", "not", "stop": against; "do", "instead", "worked", "use", "prefer", "try": for);
    otherwise from the result stated after it on its line ("tried X: failure"), else from the
    memory's stated result ("outcome/result: success" for, "failure" against); otherwise it
    counts for nothing. Every mention counts one, whatever kind of
    memory it is in: the reader does not know which store wrote the text."""
    votes = {c: Votes() for c in candidates}
    position = 0
    for record in records(text):
        verdict = VERDICT.search("\n".join(record))
        result = verdict.group(1).lower() if verdict else None
        for line in record:
            lower = line.lower()
            for candidate in candidates:
                start = lower.find(candidate.lower())
                while start >= 0:
                    words = WORD.findall(lower[:start])
                    cue = words[-1] if words else ""
                    after = RESULT_WORD.search(lower, start + len(candidate))
                    said = after.group(1) if after else result
                    vote = votes[candidate]
                    vote.first = min(vote.first, position + start)
                    if cue in NEGATIVE_CUES:
                        vote.negative += 1
                    elif cue in POSITIVE_CUES:
                        vote.positive += 1
                    elif said == "success":
                        vote.positive += 1
                    elif said == "failure":
                        vote.negative += 1
                    start = lower.find(candidate.lower(), start + 1)
            position += len(line) + 1
    return votes


@dataclass(frozen=True)
class Decision:
    strategy: str
    why: str


def decide(text: str, candidates: list[str], rng: random.Random) -> Decision:
    """Follow the strategy the text speaks for most (net of what it says against it; ties: the
    one mentioned first); with none spoken for, guess among those not spoken against; when
    every candidate is spoken against, guess among all."""
    votes = read_memory_text(text, candidates)
    backed = [c for c in candidates if votes[c].net > 0]
    if backed:
        return Decision(max(backed, key=lambda c: (votes[c].net, -votes[c].first)), "followed")
    open_ = [c for c in candidates if votes[c].net == 0]
    if not open_:
        return Decision(rng.choice(candidates), "guess, all warned")
    return Decision(rng.choice(open_), "guess, avoiding" if len(open_) < len(candidates) else "guess")


# -- arms ----------------------------------------------------------------------------------
@dataclass
class Result:
    success: list[int]
    expected: list[float]
    why: list[str]
    best: list[int]
    """1 where the choice was the kind's best strategy."""
    read: list[dict[str, Any]] | None = None
    """With --dump: per episode, what the agent read and what it chose."""


def score(stream: list[Episode], decisions: list[Decision]) -> Result:
    r = Result([], [], [], [])
    for e, d in zip(stream, decisions):
        p = e.kind.strategies[d.strategy]
        r.success.append(int(e.draw < p))
        r.expected.append(p)
        r.why.append(d.why)
        r.best.append(int(d.strategy == e.kind.best))
    return r


def guess_rng(seed: int) -> random.Random:
    return random.Random(seed * 1000 + 7)  # the same guesses in the same situation in every arm


Step = Callable[[Episode], Awaitable[str]]
Record = Callable[[Episode, str, bool], Awaitable[None]]


async def run_episodes(stream: list[Episode], seed: int, recall: Step, record: Record, trace: int, arm: str) -> Result:
    rng = guess_rng(seed)
    decisions: list[Decision] = []
    read: list[dict[str, Any]] = []
    for i, episode in enumerate(stream):
        text = await recall(episode)
        decision = decide(text, list(episode.kind.strategies), rng)
        decisions.append(decision)
        read.append({"kind": episode.kind.name, "task": episode.task, "text": text, "chose": decision.strategy, "why": decision.why})
        success = episode.draw < episode.kind.strategies[decision.strategy]
        if i >= len(stream) - trace:
            print(f"\n=== {arm} seed {seed} episode {i + 1} [{episode.kind.agent}/{episode.kind.name}] {episode.task}\n"
                  f"--- the agent read:\n{text or '(nothing)'}\n--- chose: {decision.strategy} ({decision.why}), "
                  f"p={episode.kind.strategies[decision.strategy]}, {'success' if success else 'failure'}")
        await record(episode, decision.strategy, success)
    result = score(stream, decisions)
    result.read = read
    return result


class CachedEmbedder:
    """The embedder with every text's vector kept: the streams repeat a few hundred texts, so
    after the first seed no arm waits for the model (the vectors are the model's own). With a
    `path`, the vectors are also kept on disk between runs (bench/.cache, one file a set), so
    that processes running seeds apart do not each embed every text again."""

    def __init__(self, inner: Any, path: Path | None = None) -> None:
        self.inner = inner
        self.vectors: dict[str, np.ndarray] = {}
        self.path = path
        self.saved = 0
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                self.vectors = dict(zip(data["texts"].tolist(), data["vectors"]))
            self.saved = len(self.vectors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            for text, vector in zip(missing, self.inner.embed(missing)):
                self.vectors[text] = vector
        if not texts:
            return self.inner.embed([])
        return np.stack([self.vectors[t] for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def save(self) -> None:
        """Write the vectors to `path` when there are new ones (atomically: runs share the file)."""
        if self.path is None or len(self.vectors) == self.saved:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self.vectors)
        tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, texts=np.array(texts), vectors=np.stack([self.vectors[t] for t in texts]))
        os.replace(tmp, self.path)
        self.saved = len(texts)


def plain_line(kind: str, item: list[Any], user: str) -> str:
    """A taught memory as the line of text a plain store holds."""
    if kind == "knowledge":
        return f"{item[0]}: {item[1]}"
    if kind == "preferences":
        return f"{user}'s preference ({item[0]}): {item[1]}"
    if kind == "heuristics":
        return f"When {item[0]}, do: {item[1]}"
    if kind == "anti_patterns":
        return f"Avoid: {item[0]}. Why: {item[1]}." + (f" Instead: {item[2]}" if item[2] else "")
    return outcome_line(item[0], item[1] == "success", item[2], item[3])


def outcome_line(task: str, success: bool, strategy: str, error: str | None) -> str:
    if success:
        return f"Task: {task} Outcome: success. Worked: {strategy}"
    return f"Task: {task} Outcome: failure. Tried: {strategy}. Error: {error or 'it did not work'}"


def taught_items(w: Workload, agent: str) -> list[tuple[str, list[Any]]]:
    """The order a user teaches an agent in: facts (the shared ones first), preferences, heuristics, anti-patterns, outcomes."""
    items: list[tuple[str, list[Any]]] = [("knowledge", f) for f in w.common]
    for kind in ("knowledge", "preferences", "heuristics", "anti_patterns", "outcomes"):
        items += [(kind, item) for item in w.taught[agent][kind]]
    return items


async def run_plain(w: Workload, stream: list[Episode], seed: int, embedder: Any, trace: int) -> Result:
    import chromadb
    from chromadb.config import Settings

    # In memory: a store on disk costs seconds of writes per seed and measures nothing more.
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    names = [f"plain_{seed}_{agent}" for agent in w.agents]
    try:
        collections = {}
        counter = 0
        for agent in w.agents:
            col = client.create_collection(f"plain_{seed}_{agent}", metadata={"hnsw:space": "cosine"}, embedding_function=None)
            lines = [plain_line(kind, item, w.user) for kind, item in taught_items(w, agent)]
            col.add(ids=[f"t{i}" for i in range(len(lines))], documents=lines, embeddings=embedder.embed(lines).tolist())
            collections[agent] = col
            counter += len(lines)

        async def recall(e: Episode) -> str:
            col = collections[e.kind.agent]
            got = col.query(query_embeddings=[embedder.embed_query(e.task).tolist()], n_results=PLAIN_TOP_K)
            return "\n".join(f"- {doc}" for doc in got["documents"][0])

        async def record(e: Episode, strategy: str, success: bool) -> None:
            nonlocal counter
            line = outcome_line(e.task, success, strategy, e.error)
            # Embedded as stored, the line itself, as the memory servers users compare with do.
            collections[e.kind.agent].add(ids=[f"o{counter}"], documents=[line], embeddings=embedder.embed([line]).tolist())
            counter += 1

        return await run_episodes(stream, seed, recall, record, trace, "plain")
    finally:
        for name in names:
            client.delete_collection(name)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


async def run_alma(
    w: Workload, stream: list[Episode], seed: int, embedder: Any, trace: int, settings: dict[str, Any] | None = None
) -> Result:
    from mcp import Client

    from alma_mcp.config import parse_config
    from alma_mcp.frontends.server import create_server
    from alma_mcp.service import ALMA

    with tempfile.TemporaryDirectory(prefix="alma-field-alma-", ignore_cleanup_errors=True) as tmp:
        alma = {"project_id": "field", "data_dir": tmp, "agents": {a: {} for a in w.agents}}
        config = parse_config({"alma": merged(alma, settings or {})})
        service = ALMA(config, embedder=embedder)
        server = create_server(alma=service)
        try:
            async with Client(server, mode="legacy") as client:

                async def call(tool: str, args: dict[str, Any]) -> Any:
                    got = await client.call_tool(tool, args)
                    if got.is_error:
                        raise RuntimeError(f"{tool} failed: {got.content[0].text}")
                    return got.structured_content

                for agent in w.agents:
                    for kind, item in taught_items(w, agent):
                        if kind == "knowledge":
                            await call("alma_add_knowledge", {"agent": agent, "domain": item[0], "fact": item[1], "source": "user"})
                        elif kind == "preferences":
                            await call("alma_add_preference", {"user_id": w.user, "category": item[0], "preference": item[1], "agent": agent})
                        elif kind == "heuristics":
                            await call("alma_add_heuristic", {"agent": agent, "condition": item[0], "strategy": item[1]})
                        elif kind == "anti_patterns":
                            args = {"agent": agent, "pattern": item[0], "why_bad": item[1]}
                            if item[2]:
                                args["better_alternative"] = item[2]
                            await call("alma_add_anti_pattern", args)
                        else:
                            args = {"agent": agent, "task": item[0], "outcome": item[1], "strategy_used": item[2]}
                            if item[3]:
                                args["error_message"] = item[3]
                            await call("alma_learn", args)

                async def recall(e: Episode) -> str:
                    got = await call("alma_retrieve", {"task": e.task, "agent": e.kind.agent, "user_id": w.user})
                    return got["prompt"]

                async def record(e: Episode, strategy: str, success: bool) -> None:
                    args = {"agent": e.kind.agent, "task": e.task, "outcome": "success" if success else "failure",
                            "strategy_used": strategy}
                    if not success:
                        args["error_message"] = e.error
                    await call("alma_learn", args)

                return await run_episodes(stream, seed, recall, record, trace, "alma")
        finally:
            service.close()


async def run_arm(
    arm: str, w: Workload, stream: list[Episode], seed: int, embedder: Any, trace: int, settings: dict[str, Any] | None = None
) -> Result:
    if arm == "none":
        rng = guess_rng(seed)
        return score(stream, [Decision(rng.choice(list(e.kind.strategies)), "guess") for e in stream])
    if arm == "told-best":
        return score(stream, [Decision(e.kind.best, "told") for e in stream])
    if arm == "plain":
        return await run_plain(w, stream, seed, embedder, trace)
    return await run_alma(w, stream, seed, embedder, trace, settings)


# -- figures -------------------------------------------------------------------------------
def window(values: list[float], name: str) -> float:
    lo, hi = WINDOWS[name]
    return float(np.mean(values[lo:hi]))


def mean_se(values: list[float]) -> str:
    se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {se:.3f}"


def print_figures(run: dict[str, Any]) -> None:
    arms = [a for a in ARMS if a in run["arms"]]
    seeds = run["seeds"]
    print(f"set {run['set']}, {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}), {run['episodes']} episodes; "
          "mean ± standard error over seeds")
    for measure in ("success", "expected"):
        label = "realised success" if measure == "success" else "expected success (the chosen strategy's probability)"
        print(f"\n{label}")
        print("| arm | " + " | ".join(WINDOWS) + " |")
        print("|---|" + "---|" * len(WINDOWS))
        for arm in arms:
            cells = [mean_se([window(s, name) for s in run["arms"][arm][measure]]) for name in WINDOWS]
            print(f"| {arm} | " + " | ".join(cells) + " |")
        for a, b in (("alma", "plain"), ("alma", "none"), ("plain", "none")):
            if a in run["arms"] and b in run["arms"]:
                cells = []
                for name in WINDOWS:
                    diffs = [window(x, name) - window(y, name) for x, y in zip(run["arms"][a][measure], run["arms"][b][measure])]
                    cells.append(mean_se(diffs) + (f" (min {min(diffs):+.3f})" if b == "none" else ""))
                print(f"| {a} − {b}, paired | " + " | ".join(cells) + " |")
    for arm in arms:
        if arm in ("none", "told-best"):
            continue
        whys: dict[str, list[int]] = {}
        for why, best in zip(run["arms"][arm]["why"], run["arms"][arm]["best"]):
            for w, b in zip(why[-20:], best[-20:]):
                whys.setdefault(w, [0, 0])[0] += 1
                whys[w][1] += b
        print(f"last 20, {arm}: " + "; ".join(f"{w} {n} ({b} best)" for w, (n, b) in sorted(whys.items(), key=lambda x: -x[1][0])))


def compare(base_path: str, new_path: str) -> None:
    base, new = (merge_runs(p.split(",")) for p in (base_path, new_path))
    if base["seeds"] != new["seeds"] or base["set"] != new["set"]:
        raise SystemExit("--compare needs two runs of one set on the same seeds")
    print(f"paired difference, {new_path} minus {base_path}, set {base['set']}, {len(base['seeds'])} seeds")
    for arm in [a for a in ARMS if a in base["arms"] and a in new["arms"]]:
        for measure in ("success", "expected"):
            cells = [
                f"{name} {mean_se([window(y, name) - window(x, name) for x, y in zip(base['arms'][arm][measure], new['arms'][arm][measure])])}"
                for name in WINDOWS
            ]
            print(f"  {arm} {measure}: " + "; ".join(cells))


def merge_runs(paths: list[str]) -> dict[str, Any]:
    """Runs saved separately put together: the same arms on further seeds (appended in seed
    order), and arms run apart on the same seeds."""
    by_arms: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for path in paths:
        run = json.loads(Path(path).read_text(encoding="utf-8"))
        by_arms.setdefault(tuple(sorted(run["arms"])), []).append(run)
    merged: dict[str, Any] | None = None
    for runs in by_arms.values():
        runs.sort(key=lambda r: r["seeds"][0])
        whole = runs[0]
        for run in runs[1:]:
            if set(run["seeds"]) & set(whole["seeds"]):
                raise SystemExit("--load: two runs of the same arms overlap in seeds")
            whole["seeds"] = whole["seeds"] + run["seeds"]
            for arm, slot in run["arms"].items():
                for key, values in slot.items():
                    whole["arms"][arm][key] = whole["arms"][arm][key] + values
        if merged is None:
            merged = whole
            continue
        if (whole["set"], whole["episodes"], whole["seeds"]) != (merged["set"], merged["episodes"], merged["seeds"]):
            raise SystemExit("--load: arms run apart need the same set, episodes and seeds")
        merged["arms"].update(whole["arms"])
    assert merged is not None
    return merged


async def main_async(args: argparse.Namespace) -> int:
    if args.compare:
        compare(*args.compare)
        return 0
    if args.load:
        print_figures(merge_runs(args.load))
        return 0
    w = load_workload(args.set)
    embedder = None
    if {"plain", "alma"} & set(args.arms):
        from alma_mcp.embedding.embedder import SentenceTransformerEmbedder

        inner = SentenceTransformerEmbedder()
        embedder = CachedEmbedder(inner, HERE / ".cache" / f"vectors-{args.set}-{Path(inner.name).name}.npz")
        embedder.wait(timeout=300)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    run: dict[str, Any] = {"set": args.set, "seeds": seeds, "episodes": args.episodes, "arms": {}, "alma_config": args.alma_config}
    started = time.perf_counter()
    dumped: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for seed in seeds:
        stream = make_stream(w, args.episodes, seed)
        for arm in args.arms:
            t0 = time.perf_counter()
            r = await run_arm(arm, w, stream, seed, embedder, args.trace if seed == seeds[0] else 0, args.alma_config)
            slot = run["arms"].setdefault(arm, {"success": [], "expected": [], "why": [], "best": []})
            for key in slot:
                slot[key].append(getattr(r, key))
            if args.dump and r.read is not None:
                dumped.setdefault(arm, {})[seed] = r.read
            print(f"seed {seed} {arm}: all {np.mean(r.success):.2f}, last 20 {np.mean(r.success[-20:]):.2f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
        if embedder is not None:
            embedder.save()
        if args.save:  # after every seed, so a long run that is stopped keeps what it measured
            Path(args.save).parent.mkdir(parents=True, exist_ok=True)
            Path(args.save).write_text(json.dumps({**run, "seeds": seeds[: seeds.index(seed) + 1]}), encoding="utf-8")
        if args.dump:
            Path(args.dump).write_text(json.dumps(dumped), encoding="utf-8")
    print_figures(run)
    print(f"\nwall time {time.perf_counter() - started:.0f}s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=list(SETS), default="dev", help="dev (for choosing rules) or heldout (for reporting)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--save", help="write the per-episode results to this JSON file (after every seed)")
    parser.add_argument("--load", nargs="+", help="run nothing: print the figures of runs saved with --save (arms merged)")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "NEW"), help="run nothing: paired differences NEW minus BASE (each may be files joined by commas)")
    parser.add_argument(
        "--alma-config", type=json.loads, default=None,
        help='settings merged into the alma arm\'s config, e.g. \'{"retrieval": {"include_outcomes": true}}\' (default: none, the defaults)',
    )
    parser.add_argument("--dump", help="write what the agent read and chose in every episode to this JSON file")
    parser.add_argument("--trace", type=int, default=0, help="print what the agent read in the last N episodes of the first seed")
    return anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
