"""docs/configuration.md, generated from the pydantic models of `alma_mcp.config`.

`python -m alma_mcp.configdoc [FILE]` writes it (default: docs/configuration.md); a test fails when
the checked-in file differs from what the models say, so a new field, default or description
reaches the reference by regenerating it.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import CONFIG_ENV, DATA_DIR_ENV, EMBEDDED_ALIASES, AlmaSettings, _Strict

HEADER = f"""\
# Configuration reference

<!-- Generated from alma_mcp/config.py by `python -m alma_mcp.configdoc`; edit the models, not this file. -->

The configuration is a YAML file, `.alma/config.yaml` by default (else `--config PATH`, else
`${CONFIG_ENV}`). Every key is optional; `alma-mcp init` writes a commented starter and
`alma-mcp config check` validates a file and prints what each agent may learn and read. An
unknown key or a value out of range stops the server at start with the field and its line.
Relative paths are relative to the folder that holds `.alma/`. With no `data_dir`, the embedded
store is in `${DATA_DIR_ENV}` if set, else `data/` beside the config file, else (no config file)
`~/.alma-mcp/data`.

The JSON Schema of the file is `schemas/config.schema.json`. Sections below follow the file's
nesting; a map section (`agents.NAME`) has one entry per name you choose. Each setting gives its
unit and why it is a setting: the measurement that chose its default or shows its effect, or what a
user or operator needs it for. Values nothing measured and nobody needs to set are constants
instead (the last section lists the settings that became constants).
"""

# Every setting's unit, and why it is a setting: a measured effect (with where it is written up),
# or what a user or operator needs it for. A field without an entry fails tests/test_packaging.py,
# so a new setting arrives with its reason; one with no reason becomes a constant (see RETIRED in
# alma_mcp/config.py). Keys are paths inside `alma:`.
MEASURED = "measured"
NEEDED = "needed"
FIELD_NOTES: dict[str, tuple[str, str, str]] = {
    # path: (unit, measured | needed, the measurement or the need)
    "project_id": ("name", NEEDED, "scopes memories when one store holds several projects"),
    "storage": ("choice", NEEDED, "embedded store or a shared Chroma server"),
    "data_dir": ("path", NEEDED, "where the embedded store lives"),
    "vector_search": ("choice", MEASURED, "at 100,000 near-duplicate memories per agent Chroma's approximate index returned 85-88% of the true 10 nearest (dense-only Recall@5 0.05 against 0.41 exact); a scan costs 1.6 KB a memory (docs/retrieval.md)"),
    "preload_indexes": ("flag", MEASURED, "at 100,000 memories per agent the indexes take tens of seconds to read, which the first retrieval and learn otherwise wait for (docs/retrieval.md; `bench/perf.py --sizes 10000,100000 --preload off,on`)"),
    "retrieve_structured": ("flag", NEEDED, "clients differ in what of a tool's result they hand the model: the text, or the structured content's JSON (docs/retrieval-tiers.md, \"What a model reads\")"),
    "allow_undeclared_agents": ("flag", NEEDED, "access control: whether agents missing from `agents` may write"),
    "chroma_http.host": ("host name", NEEDED, "connection to a Chroma server"),
    "chroma_http.port": ("TCP port", NEEDED, "connection to a Chroma server"),
    "chroma_http.ssl": ("flag", NEEDED, "connection to a Chroma server"),
    "chroma_http.headers": ("HTTP headers", NEEDED, "a Chroma server's authentication"),
    "chroma_http.tenant": ("name", NEEDED, "a Chroma server's tenant"),
    "chroma_http.database": ("name", NEEDED, "a Chroma server's database"),
    "chroma_http.change_check_seconds": ("seconds", NEEDED, "trades requests to a shared server against how soon another process's write drops cached results"),
    "embedding.model": ("model name or folder", NEEDED, "the model memories are compared by"),
    "embedding.device": ("torch device", NEEDED, "a GPU for the torch backend"),
    "embedding.backend": ("choice", NEEDED, "running without torch (numpy) or with it"),
    "embedding.onnx": ("flag", MEASURED, "a query embeds about twice as fast, same vectors to 1.5e-7 (docs/retrieval.md, docs/benchmarks.md)"),
    "http.host": ("address", NEEDED, "what the HTTP server listens on"),
    "http.port": ("TCP port", NEEDED, "what the HTTP server listens on"),
    "http.path": ("URL path", NEEDED, "where the MCP endpoint is"),
    "http.token_env": ("variable name", NEEDED, "the single-token setup's secret"),
    "http.allowed_origins": ("origins", NEEDED, "DNS-rebinding guard for browser clients"),
    "http.allowed_hosts": ("host[:port] values", NEEDED, "DNS-rebinding guard behind a proxy or a name"),
    "http.max_request_bytes": ("bytes", NEEDED, "bounds what one request may make the server read"),
    "http.tokens.name": ("name", NEEDED, "names a token in logs and errors"),
    "http.tokens.env": ("variable name", NEEDED, "where a token's secret is"),
    "http.tokens.file": ("path", NEEDED, "where a token's secret is"),
    "http.tokens.agents": ("agent names", NEEDED, "access control per token"),
    "http.tokens.users": ("user ids", NEEDED, "access control per token"),
    "retrieval.top_k": ("memories", NEEDED, "how much of the prompt memories may take; one budget across types measured in docs/retrieval-tiers.md"),
    "retrieval.top_k_scope": ("choice", MEASURED, "one budget across types held R@5 and hit@1 and cut the prompt on held-out no-answer tasks from 245 to 187 tokens (docs/retrieval-tiers.md)"),
    "retrieval.relevance_floor": ("evidence", MEASURED, "calibrated by `bench/retrieval.py --calibrate-tiers`; a store of 10,000 memories per agent wants about 0.54 (docs/retrieval-tiers.md, bench/README.md)"),
    "retrieval.lexical_floor": ("share of the task's words", MEASURED, "chosen with the floors by `bench/retrieval.py --calibrate`; lets a task that quotes an identifier or an error string through when the embedding blurs it (docs/retrieval.md)"),
    "retrieval.recency_half_life_days": ("days", NEEDED, "how fast an unused memory fades in ranking and, through the sweep, is archived"),
    "retrieval.token_budget": ("estimated tokens (4 characters each)", NEEDED, "how much of the model's context the prompt may take"),
    "retrieval.include_outcomes": ("choice", MEASURED, "true against weak on the field learning benchmark's development set (docs/retrieval-tiers.md, docs/learning-benchmark.md)"),
    "retrieval.track_record": ("outcomes", MEASURED, "beside the five nearest memories the record scored above the plain store in every phase (docs/learning-benchmark.md, 'The track record')"),
    "retrieval.rrf_k": ("ranks", MEASURED, "chosen by the ranking grid of `bench/retrieval.py --calibrate` (5, 10, 30, 60)"),
    "retrieval.lexical_weight": ("weight", MEASURED, "chosen by the ranking grid of `bench/retrieval.py --calibrate`; the hybrid ranks ahead of dense-only (nDCG@10 0.798 against 0.741, bench/README.md)"),
    "retrieval.fusion_rank_share": ("share", MEASURED, "chosen by the ranking grid of `bench/retrieval.py --calibrate`"),
    "retrieval.floor_margin": ("evidence", MEASURED, "chosen with the floors by `bench/retrieval.py --calibrate`; 0 and 0.10 measured within noise of it on the learning benchmark (bench/README.md)"),
    "retrieval.key_weight": ("share of the similarity", MEASURED, "about +0.07 paraphrase R@5, chosen among 0, 0.15, 0.3 and 0.45 (bench/README.md)"),
    "retrieval.preference_floor": ("evidence", MEASURED, "+0.05 R@5 on the development corpus; on the held-out corpus it served 89.5% of no-answer tasks, so it is off (docs/retrieval-tiers.md)"),
    "retrieval.weak_floor": ("evidence", MEASURED, "with weak_few_below 0.32: personal development corpus R@5 0.754 → 0.795 for 1.6 tokens more a no-answer task, agent corpus unchanged (docs/retrieval-tiers.md)"),
    "retrieval.weak_few_below": ("evidence", MEASURED, "with weak_floor 0.30: 10,000 memories per agent 37 tokens a no-answer task against 51 without it, for R@5 0.582 either way (docs/retrieval-tiers.md)"),
    "retrieval.crowding_weight": ("share of the background's rise", MEASURED, "the tiers grid: lets the corpus's floors hold at 10,000 memories per agent; off cost 62 tokens a no-answer task instead of 53 (docs/retrieval-tiers.md)"),
    "retrieval.crowding_floor": ("cosine similarity", MEASURED, "chosen with crowding_weight by the tiers grid (docs/retrieval-tiers.md)"),
    "retrieval.standout": ("evidence", MEASURED, "the tiers grid on both development corpora: at 0.18 the personal corpus's questions with no answer given a confident memory fell from 29% to 7% for −0.019 served R@5 on the agent corpus; a higher relevance_floor alone left 14% at a larger cost; applied to lessons too it cost the field learning benchmark 0.030, so lessons and outcomes are held to it on questions only (at any evidence), whose no-answer share it took from 17.6% to 10.3% on the personal corpus, served recall unchanged (docs/retrieval-tiers.md)"),
    "retrieval.sure_floor": ("evidence", MEASURED, "the tiers grid on both development corpora: 0.60 and above changed no figure there (their evidence rarely reaches it), 0.55 let a tenth more no-answer questions through on the personal corpus (docs/retrieval-tiers.md)"),
    "retrieval.align_floor": ("cosine similarity", MEASURED, "bench/nearmiss.py on the development sets: the personal corpus's questions with no answer given a confident memory 48.5% → 17.6% (near misses written for it), 132 → 78 tokens, served recall unchanged; test split of the agent corpus R@5 −0.006; 0.30 left 26.5%, 0.40 16.2% for more answerable questions named instead of given; questions only: judging tasks to do as well cost the field learning benchmark 0.010 ± 0.004 (docs/retrieval-tiers.md)"),
    "retrieval.weak_span": ("evidence", MEASURED, "the tiers grid: 0.08 with weak_top_k 3 saved 10 tokens a no-answer task for −0.042 R@5 (docs/retrieval-tiers.md)"),
    "retrieval.weak_top_k": ("memories", MEASURED, "0 (all-or-nothing) served R@5 0.385 against 0.708 (docs/retrieval-tiers.md)"),
    "retrieval.calibrate_from_feedback": ("flag", MEASURED, "the feedback replay: +0.057 R@5 for one held-out agent, a step along the same frontier on the development corpus, so off (docs/retrieval-tiers.md)"),
    "learning.similarity_threshold": ("cosine similarity", MEASURED, "calibrated on paraphrases by `bench/learning.py --calibrate`: 0.70 grouped 3% of paraphrase pairs, 0.45 groups 85% against the mean of three (docs/learning.md)"),
    "learning.min_failures_for_anti_pattern": ("failures", MEASURED, "3 measured +0.005 ± 0.002 on the oracle arm, 4 +0.000 (bench/README.md)"),
    "learning.max_success_bound_for_anti_pattern": ("upper Wilson bound of a success rate", MEASURED, "the largest single gain on the learning benchmark (docs/learning.md)"),
    "learning.min_alternative_outcomes": ("outcomes", MEASURED, "−0.018 ± 0.014 over 30 held-out seeds, so off (docs/learning.md)"),
    "lifecycle.archive_floor": ("strength, 0-1", NEEDED, "how long an untouched memory lives: 0.02 is about 170 days at a 30-day half-life"),
    "lifecycle.decay_types": ("memory types", NEEDED, "which memories may fade at all"),
    "lifecycle.sweep_every_writes": ("writes", NEEDED, "when the sweep runs by itself; 0 leaves it to the operator"),
    "lifecycle.merge_on_write": ("flag", NEEDED, "whether teaching a near-duplicate merges or adds"),
    "lifecycle.merge_thresholds": ("cosine similarity", MEASURED, "paraphrased lessons measured 0.88-0.97 and a changed fact 0.946 (docs/operations.md); null per type never merges it"),
    "lifecycle.max_memories_per_type": ("memories", NEEDED, "bounds a store's size per agent and type"),
    "domains.<name>.enabled": ("flag", NEEDED, "the original ALMA design's config shape (informational)"),
    "domains.<name>.agents": ("agent names", NEEDED, "the original ALMA design's config shape (informational)"),
    "agents.<name>.domain": ("name", NEEDED, "the original ALMA design's config shape (informational)"),
    "agents.<name>.description": ("text", NEEDED, "what `alma://agents` and `config check` say about the agent"),
    "agents.<name>.can_learn": ("categories", NEEDED, "access control: what the agent may write"),
    "agents.<name>.cannot_learn": ("categories", NEEDED, "access control: what the agent may never write"),
    "agents.<name>.min_occurrences_for_heuristic": ("successes", NEEDED, "the original ALMA design's per-agent rule; the learning benchmark runs 3"),
    "agents.<name>.share_with": ("agent names", NEEDED, "access control: who reads this agent's lessons"),
    "agents.<name>.inherit_from": ("agent names", NEEDED, "access control: whose lessons this agent reads"),
    "agents.<name>.max_memories": ("memories", NEEDED, "bounds one agent's store per type"),
}


_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", type(None): "null"}


def _anchor(path: str) -> str:
    return path.replace(".", "").replace("<", "").replace(">", "").lower()


def _type_name(annotation: Any, nested: dict[type[BaseModel], str]) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0], nested)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a, nested) for a in args)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0], nested)}"
    if origin is dict:
        return f"map of {_type_name(args[0], nested)} to {_type_name(args[1], nested)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        path = nested[annotation]
        return f"[{path}](#{_anchor(path)})"
    return _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: FieldInfo) -> str:
    found = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            found.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            found.append(f"< {item.lt}")
    return ", ".join(found)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _what(field: FieldInfo, nested: dict[type[BaseModel], str]) -> str:
    if field.description:
        return field.description
    inner = _models_in(field.annotation)
    return f"See {nested[inner[0]]}." if inner else ""


def _sections() -> list[tuple[str, type[BaseModel]]]:
    """Every settings model with the path it has in the file, in the order of the file."""
    found: list[tuple[str, type[BaseModel]]] = []

    def visit(path: str, model: type[BaseModel]) -> None:
        if any(m is model for _, m in found):
            return
        found.append((path, model))
        for name, field in model.model_fields.items():
            for inner in _models_in(field.annotation):
                key = f"{path}.{name}" + (".<name>" if get_origin(field.annotation) is dict else "")
                visit(key, inner)

    visit("alma", AlmaSettings)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def render() -> str:
    sections = _sections()
    nested = {model: path for path, model in sections}
    out = [HEADER]
    for path, model in sections:
        out.append(f"## {path}\n")
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!!")):
            out.append(" ".join(doc.split("\n\n")[0].split()) + "\n")
        out.append("| key | type | default | range | unit | what it does | why it is a setting |")
        out.append("|---|---|---|---|---|---|---|")
        for name, field in model.model_fields.items():
            unit, kind, why = FIELD_NOTES.get(_key(path, name), ("", "", ""))
            reason = f"{kind}: {why}" if kind else ""
            out.append(
                f"| `{name}` | {_type_name(field.annotation, nested)} | {_default(field)} | {_bounds(field)} "
                f"| {_cell(unit)} | {_cell(_what(field, nested))} | {_cell(reason)} |"
            )
        out.append("")
    out.append(_retired(sections))
    return "\n".join(out).rstrip() + "\n"


def _key(path: str, name: str) -> str:
    """A field's key in FIELD_NOTES: its path inside `alma:`."""
    return f"{path}.{name}".removeprefix("alma.")


def leaf_keys() -> list[str]:
    """The FIELD_NOTES key of every setting that is a value rather than a section."""
    return [
        _key(path, name)
        for path, model in _sections()
        for name, field in model.model_fields.items()
        if not _models_in(field.annotation)
    ]


def _retired(sections: list[tuple[str, type[BaseModel]]]) -> str:
    rows = [
        f"| `{path.removeprefix('alma.')}.{name}` | {_cell(model.retired_note(name))} |"
        for path, model in sections
        if issubclass(model, _Strict)
        for name in model.RETIRED
    ]
    return (
        "## Settings that are constants now\n\n"
        "A file that still sets one of these loads; the server logs a notice for each at start and "
        "`alma-mcp config check` lists them: remove them from the file. Older spellings of `storage: chroma` "
        f"({', '.join(f'`{a}`' for a in EMBEDDED_ALIASES)}) load the same way.\n\n"
        "| key | what it is now |\n|---|---|\n" + "\n".join(rows) + "\n"
    )


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")), file=sys.stderr)
