"""Retrieval with the real embedding model on a real embedded Chroma store: the floor, the
lexical door for identifiers, near-duplicates, anti-patterns under a tight budget, and the
result cache's invalidation by writes to the scope."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Literal

import anyio
import numpy as np
import pytest
from mcp import Client

from alma_mcp.config import RetrievalSettings
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder
from alma_mcp.errors import AlmaError
from alma_mcp.indexes.lexical import BM25Index, tokenize
from alma_mcp.prompt.render import estimate_tokens
from alma_mcp.indexes.keys import KeyVectors
from alma_mcp.models import Outcome
from alma_mcp.ranking.candidates import Candidate, final_score
from alma_mcp.ranking.retriever import embeds_beside
from alma_mcp.frontends.server import create_server
from alma_mcp.service import ALMA
from helpers import Parts, teach_playwright

def test_a_task_with_nothing_relevant_gets_an_empty_prompt(alma: ALMA) -> None:
    teach_playwright(alma)
    for task in (
        "Bake a sourdough loaf with a crisp crust for the weekend.",
        "Plan the seating chart for the company summer party.",
        "Translate the quarterly newsletter into Spanish.",
    ):
        result = alma.retrieve(task, "helena")
        assert result.prompt == "", f"something was injected for {task!r}: {[m.memory.id for m in result.all()]}"
        assert len(result) == 0


def test_a_paraphrased_task_finds_its_memory(alma: ALMA) -> None:
    teach_playwright(alma)
    result = alma.retrieve(
        "Fix a flaky end-to-end test that clicks a button too early after navigating",
        "helena",
    )
    assert result.heuristics, "the flaky-test lesson should clear the floor"
    assert "waitForURL" in result.heuristics[0].memory.strategy  # type: ignore[attr-defined]
    assert "waitForURL" in result.prompt


def test_the_floor_holds_through_a_real_mcp_client(make_alma: Callable[..., ALMA]) -> None:
    alma = make_alma()
    teach_playwright(alma)

    async def scenario() -> None:
        async with Client(create_server(alma=alma), mode="legacy") as client:
            with anyio.fail_after(60):
                empty = await client.call_tool(
                    "alma_retrieve", {"agent": "helena", "task": "Write a haiku about autumn leaves."}
                )
                relevant = await client.call_tool(
                    "alma_retrieve",
                    {"agent": "helena", "task": "Check the sign-in form rejects a blank password, in the browser and the API."},
                )
            assert not empty.is_error and not relevant.is_error
            assert empty.structured_content["prompt"] == ""
            assert "getByRole('alert')" in relevant.structured_content["prompt"]

    anyio.run(scenario)


def test_an_exact_error_string_is_found_lexically_when_the_embedding_floor_would_drop_it(
    make_alma: Callable[..., ALMA],
) -> None:
    # An evidence floor (similarity + lexical_weight x coverage) no memory here reaches: only the
    # lexical door can let anything through.
    strict = {"relevance_floor": 0.95, "floor_margin": 0.0, "lexical_weight": 0.15, "weak_top_k": 0}
    alma = make_alma(retrieval={**strict, "lexical_floor": 0.5})
    teach_playwright(alma, "victor")
    alma.add_knowledge(
        "victor",
        "database",
        "Signup raises psycopg2.errors.UniqueViolation on users_email_key when the email differs only in case; "
        "normalise emails to lower case before the insert.",
    )
    for n in range(30):  # hard distractors: same vocabulary, other tables and errors
        alma.add_knowledge("victor", "database", f"Table orders_{n} has a foreign key to customers; batch job {n} retries on deadlock.")
    task = "Sentry: psycopg2.errors.UniqueViolation duplicate key value violates unique constraint users_email_key"
    found = alma.retrieve(task, "victor", memory_types=["knowledge"])
    assert [m.memory.fact.startswith("Signup raises") for m in found.knowledge] == [True]  # type: ignore[attr-defined]
    assert found.knowledge[0].matched_by == "lexical"
    assert found.knowledge[0].coverage > 0.3

    shut = make_alma(data_dir=alma.config.data_dir, retrieval={**strict, "lexical_floor": 1.0})
    assert shut.retrieve(task, "victor", memory_types=["knowledge"]).knowledge == []


def test_near_duplicates_never_fill_the_top_k(make_alma: Callable[..., ALMA]) -> None:
    alma = make_alma(lifecycle={"merge_on_write": False})  # store the duplicates; retrieval must cope
    variants = [
        "Remove fixed sleeps and wait for the URL after the click, then assert with auto-retrying expect.",
        "Remove fixed sleeps and wait for the URL after clicking, then assert with auto-retrying expect().",
        "Remove the fixed sleeps, wait for the URL after the click, then assert with auto-retrying expect.",
        "Remove fixed sleeps; wait for the URL after the click and assert with auto-retrying expect.",
    ]
    for strategy in variants:
        alma.add_heuristic("helena", "A Playwright test is flaky after navigation", strategy, task_type="testing")
    alma.add_heuristic(
        "helena", "A Playwright test is flaky in CI only", "Run it with --repeat-each=20 and a trace to find the race.", task_type="testing"
    )
    alma.add_heuristic(
        "helena", "A flaky Playwright test depends on test data", "Give every test its own user via a fixture so runs cannot collide.", task_type="testing"
    )
    result = alma.retrieve("Fix a flaky Playwright test that fails after navigating to a page", "helena", top_k=3)
    chosen = result.heuristics
    assert len(chosen) == 3
    vectors = alma.embedder.embed([m.memory.text() for m in chosen])
    similarity = vectors @ vectors.T
    near = alma.config.alma.retrieval.near_duplicate
    assert all(similarity[i, j] < near for i in range(3) for j in range(3) if i != j)
    assert sum(1 for m in chosen if "fixed sleeps" in m.memory.strategy) == 1  # type: ignore[attr-defined]


CHECKOUT_ASPECTS = [
    "guest checkout without an account",
    "a discount code applied at the last step",
    "shipping to a different billing address",
    "a cart with a backordered item",
    "express delivery chosen at the last moment",
    "a gift message on the order",
]


def test_a_relevant_anti_pattern_is_shown_even_when_heuristics_would_fill_the_budget(
    make_alma: Callable[..., ALMA],
) -> None:
    alma = make_alma(retrieval={"token_budget": 400}, lifecycle={"merge_on_write": False})
    for aspect in CHECKOUT_ASPECTS:
        alma.add_heuristic(
            "helena",
            f"Testing the checkout form: {aspect}",
            f"For {aspect}, fill the checkout form with valid data, submit it, and assert the confirmation page "
            "shows the order number, the total and the delivery address exactly as entered.",
            task_type="testing",
            confidence=0.95,
        )
    alma.add_anti_pattern(
        "helena",
        "Submitting the checkout form with a live credit card in tests",
        "It charges real money and the payment provider flags the account.",
        "Use the provider's sandbox test cards.",
    )
    result = alma.retrieve("Write tests for the checkout form", "helena")
    assert result.anti_patterns, "the anti-pattern should clear the floor"
    assert len(result.heuristics) >= 3
    assert "live credit card" in result.prompt
    assert estimate_tokens(result.prompt) <= 400
    assert result.prompt.count("when: Testing the checkout form") < len(result.heuristics), "the budget should bind"


LOGIN_RULES = [
    "validates the email field when it loses focus and shows the error under the field",
    "locks the account for fifteen minutes after five wrong passwords",
    "accepts passwords of at least twelve characters including one digit",
    "keeps the user signed in for thirty days when remember me is ticked",
    "redirects to the page the user came from after a successful sign in",
    "shows a captcha after three failed attempts from one address",
]


def test_the_prompt_keeps_to_its_token_budget(make_alma: Callable[..., ALMA], tmp_path: Path) -> None:
    for budget in (150, 400, 1500):
        alma = make_alma(
            retrieval={"token_budget": budget}, lifecycle={"merge_on_write": False}, data_dir=tmp_path / f"b{budget}"
        )
        teach_playwright(alma)
        for rule in LOGIN_RULES:
            alma.add_knowledge("helena", "testing", f"The login form {rule}. " * 3)
        result = alma.retrieve("Test the login form validation", "helena", top_k=10)
        assert result.prompt, budget
        assert estimate_tokens(result.prompt) <= budget, (budget, estimate_tokens(result.prompt))
        shown = result.prompt.count("- memory `")
        assert 1 <= shown <= len(result)
        if budget == 1500:
            assert shown > 3  # a real budget holds several memories
        else:
            assert shown < len(result)  # a small one cannot hold them all


def test_the_result_cache_is_invalidated_by_a_write_to_the_scope_only(parts: Parts) -> None:
    alma, retriever = parts.alma, parts.retriever
    teach_playwright(alma)
    task = "Test the signup page's captcha bypass on staging"
    first = alma.retrieve(task, "helena")
    misses = retriever.cache_misses
    again = alma.retrieve(task, "helena")
    assert again == first and retriever.cache_misses == misses  # served from the cache

    alma.add_knowledge("victor", "api", "The staging captcha is reCAPTCHA v3 with a 0.5 threshold.")  # another scope
    alma.retrieve(task, "helena")
    assert retriever.cache_misses == misses, "a write to another agent must not invalidate helena's results"

    taught = alma.add_heuristic(
        "helena", "Testing signup behind the captcha on staging", "Send the X-Test-Bypass header from the Playwright config."
    )
    after = alma.retrieve(task, "helena")
    assert retriever.cache_misses == misses + 1
    assert taught.id in [m.memory.id for m in after.all()], "the new memory must be visible at once"


def test_the_lexical_index_follows_writes_and_forgetting(parts: Parts) -> None:
    alma, retriever = parts.alma, parts.retriever
    teach_playwright(alma)
    alma.retrieve("warm the indexes", "helena")  # builds the lexical indexes from the store
    taught = alma.add_knowledge("helena", "ci", "Error ERR_PNPM_OUTDATED_LOCKFILE means the lockfile must be regenerated.")
    index = retriever.indexes.get("knowledge", "helena").lexical
    assert [h.id for h in index.search("ERR_PNPM_OUTDATED_LOCKFILE", 3)][:1] == [taught.id]
    alma.forget(memory_ids=[taught.id], dry_run=False)
    assert taught.id not in [h.id for h in index.search("ERR_PNPM_OUTDATED_LOCKFILE", 3)]
    assert taught.id not in [m.memory.id for m in alma.retrieve("ERR_PNPM_OUTDATED_LOCKFILE in CI", "helena").all()]


def test_bm25_index_adds_replaces_and_removes() -> None:
    index = BM25Index(["a", "b"], ["psycopg2.errors.UniqueViolation on signup", "flaky tests in CI"])
    assert [h.id for h in index.search("UniqueViolation", 5)] == ["a"]
    index.add("a", "nothing about databases")  # replaces
    assert index.search("UniqueViolation", 5) == []
    index.remove(["b"])
    assert index.search("flaky", 5) == [] and len(index) == 1
    texts = [f"term{i % 7} filler{i} " + f"term{i % 7} " * (i % 3) for i in range(400)]  # some terms repeat
    many = BM25Index([f"d{i}" for i in range(400)], texts)
    many.remove([f"d{i}" for i in range(300)])  # compacts
    hits = many.search("term3", 200)
    assert {h.id for h in hits} == {f"d{i}" for i in range(300, 400) if i % 7 == 3}
    assert all(0 < h.coverage <= 1 for h in hits)
    # Compacted, it scores exactly as an index built from the documents left.
    fresh = BM25Index([f"d{i}" for i in range(300, 400)], texts[300:])
    query = "term3 term5 filler350"
    assert [(h.id, h.score) for h in many.search(query, 50)] == [(h.id, h.score) for h in fresh.search(query, 50)]
    assert len({round(h.score, 4) for h in fresh.search("term3", 50)}) > 1, "term frequencies should tell documents apart"


def test_identifiers_are_tokenized_whole_and_in_parts() -> None:
    tokens = tokenize("psycopg2.errors.UniqueViolation users_email_key NET::ERR_CERT_DATE_INVALID")
    for expected in ("psycopg2.errors.uniqueviolation", "uniqueviolation", "unique", "violation", "users_email_key", "email", "net::err_cert_date_invalid", "cert"):
        assert expected in tokens


def test_archived_memories_are_never_retrieved(alma: ALMA) -> None:
    teach_playwright(alma)
    task = "Audit the new settings page for accessibility problems"
    found = alma.retrieve(task, "helena").heuristics
    target = next(m.memory for m in found if "AxeBuilder" in m.memory.strategy)  # type: ignore[attr-defined]
    alma.forget([target.id], dry_run=False)  # archived
    assert target.id not in [m.memory.id for m in alma.retrieve(task, "helena").all()]


def test_another_writer_on_the_same_store_is_seen_by_the_lexical_index(
    make_alma: Callable[..., ALMA], make_parts: Callable[..., Parts], tmp_path: Path
) -> None:
    reader, _, retriever = make_parts(data_dir=tmp_path / "shared")
    writer = make_alma(data_dir=tmp_path / "shared")  # a second service, as a second process would be
    teach_playwright(reader)
    task = "CI says ERR_PNPM_OUTDATED_LOCKFILE on install"
    before = reader.retrieve(task, "helena")  # builds the reader's lexical indexes
    assert all("ERR_PNPM" not in m.memory.text() for m in before.all())
    taught = writer.add_knowledge("helena", "ci", "ERR_PNPM_OUTDATED_LOCKFILE: run pnpm install without --frozen-lockfile once and commit the lockfile.")
    index = retriever.indexes.get("knowledge", "helena").lexical
    assert taught.id in [h.id for h in index.search(task, 5)], "the reader's index must pick up the other writer's memory"
    assert taught.id in [m.memory.id for m in reader.retrieve(task, "helena").knowledge]


def test_a_write_of_ours_after_another_writers_does_not_hide_theirs(
    make_alma: Callable[..., ALMA], make_parts: Callable[..., Parts], tmp_path: Path
) -> None:
    # The lexical index follows this process's writes incrementally; when another process wrote
    # first, applying only our write must not mark the index as up to date.
    reader, _, retriever = make_parts(data_dir=tmp_path / "shared")
    writer = make_alma(data_dir=tmp_path / "shared")
    teach_playwright(reader)
    task = "CI says ERR_PNPM_OUTDATED_LOCKFILE on install"
    reader.retrieve(task, "helena")  # builds the reader's lexical indexes
    theirs = writer.add_knowledge("helena", "ci", "ERR_PNPM_OUTDATED_LOCKFILE: run pnpm install without --frozen-lockfile once and commit the lockfile.")
    reader.add_knowledge("helena", "ci", "The CI runners cache the pnpm store under /opt/pnpm-store between jobs.")
    index = retriever.indexes.get("knowledge", "helena").lexical
    assert theirs.id in [h.id for h in index.search(task, 5)]


def test_a_named_users_general_preferences_are_injected_under_their_own_floor(alma: ALMA) -> None:
    alma.config.alma.retrieval = RetrievalSettings(preference_floor=0.10, weak_top_k=0)  # the door is off by default
    teach_playwright(alma)
    alma.add_preference("alice", "reporting", "Keep reports short: five bullet points at most, no preamble.")
    alma.add_preference("bob", "reporting", "Always include the full stack trace in reports.")
    task = "Summarise what went wrong in last night's run of the mobile release pipeline."

    # Without a user, nothing about this task clears the floor: nothing is injected.
    assert alma.retrieve(task, "helena").prompt == ""

    # With alice named, her general preference is injected though it looks unrelated to the task,
    # and bob's is not: preferences are the named user's only.
    named = alma.retrieve(task, "helena", user_id="alice")
    assert [m.memory.preference for m in named.preferences] == [  # type: ignore[attr-defined]
        "Keep reports short: five bullet points at most, no preamble."
    ]
    assert named.preferences[0].similarity < alma.config.retrieval_for("helena").relevance_floor
    assert "five bullet points" in named.prompt and "stack trace" not in named.prompt
    # A preference under its own floor does not open the floor for the other types.
    assert not named.heuristics and not named.anti_patterns and not named.knowledge

    # The preference floor is configurable: at the main floor's height, the same call injects nothing.
    strict = RetrievalSettings(preference_floor=0.9)
    assert alma.retrieve(task, "helena", user_id="alice", settings=strict).prompt == ""


def test_key_vectors_are_embedded_once_per_key_text(alma: ALMA) -> None:
    teach_playwright(alma)
    heuristic = alma.retrieve("A Playwright test flakes right after navigation", "helena").heuristics[0].memory
    keys = KeyVectors(alma.embedder)
    query = alma.embedder.embed_query("flaky test after a page navigation")
    first = keys.similarities([heuristic], query)
    assert keys.embedded == 1
    assert np.allclose(keys.similarities([heuristic, heuristic], query), [first[0], first[0]])
    assert keys.embedded == 1, "a memory seen before is not embedded again"
    # The key is the situation alone: closer to a task worded like it than the whole memory is.
    condition_only = float(alma.embedder.embed([heuristic.condition])[0] @ query)  # type: ignore[attr-defined]
    assert abs(float(first[0]) - condition_only) < 1e-4
    edited = heuristic.model_copy(update={"condition": "Testing a date picker in every time zone"})
    keys.similarities([edited], query)
    assert keys.embedded == 2, "an edited key text is embedded anew"


def test_task_type_leaves_out_lessons_and_outcomes_of_other_task_types(alma: ALMA) -> None:
    """`task_type` keeps lessons and outcomes filed under it (or under none) and drops the others:
    retry works on rate limits and fails on certificate errors, and each kind of task is told only
    its own lesson. Knowledge has no task type and stays."""
    retry = "Retry the request with exponential backoff and jitter"
    alma.add_heuristic("victor", "The partner API answers 429 Too Many Requests during the nightly sync", retry, task_type="rate_limits")
    alma.add_anti_pattern("victor", f"{retry} when the partner API call fails", "Backing off changed nothing.", task_type="tls")
    alma.add_heuristic("victor", "Calls to the partner API fail", "Check the partner's status page first")  # no task type
    alma.learn("victor", "The partner API call failed with certificate verify failed", "failure", retry, task_type="tls")
    alma.add_knowledge("victor", "integrations", "The partner API allows 100 requests a minute per key.")
    task = "Calls to the partner API keep failing during the sync"
    kinds = ["heuristic", "anti_pattern", "outcome", "knowledge"]

    def types_seen(result) -> dict[str, set[str | None]]:
        return {kind: {getattr(item.memory, "task_type", "n/a") for item in items} for kind, items in result.by_type().items() if items}

    untyped = alma.retrieve(task, "victor", memory_types=kinds)
    assert types_seen(untyped)["heuristic"] == {"rate_limits", None}
    assert types_seen(untyped)["anti_pattern"] == {"tls"} and types_seen(untyped)["outcome"] == {"tls"}

    typed = alma.retrieve(task, "victor", memory_types=kinds, task_type="Rate_Limits")  # case does not matter
    seen = types_seen(typed)
    assert seen["heuristic"] == {"rate_limits", None}
    assert "anti_pattern" not in seen and "outcome" not in seen
    assert [k.memory.fact for k in typed.knowledge] == [k.memory.fact for k in untyped.knowledge] != []
    assert "exponential backoff" in typed.prompt and "Avoid" not in typed.prompt

    tls = alma.retrieve(task, "victor", memory_types=kinds, task_type="tls")
    assert types_seen(tls)["anti_pattern"] == {"tls"} and types_seen(tls)["heuristic"] == {None}
    # A cached untyped result is not handed out for a typed call, nor the other way round.
    assert alma.retrieve(task, "victor", memory_types=kinds).model_dump() == untyped.model_dump()


async def test_task_type_through_the_client_and_a_bad_one_is_refused(alma: ALMA) -> None:
    alma.add_heuristic("victor", "The partner API answers 429 Too Many Requests", "Back off and retry", task_type="rate_limits")
    alma.add_heuristic("victor", "The partner API fails with certificate verify failed", "Renew the certificate chain", task_type="tls")
    async with Client(create_server(alma=alma), mode="legacy") as client:
        got = await client.call_tool("alma_retrieve", {"agent": "victor", "task": "The partner API call fails", "task_type": "tls"})
        assert not got.is_error
        assert [h["memory"]["task_type"] for h in got.structured_content["heuristics"]] == ["tls"]
        bad = await client.call_tool("alma_retrieve", {"agent": "victor", "task": "The partner API call fails", "task_type": "bad\ntype"})
        assert bad.is_error and "task_type" in bad.content[0].text


def test_explain_gives_each_memory_its_verdict_against_the_floor(alma: ALMA) -> None:
    alma.config.alma.retrieval = RetrievalSettings(preference_floor=0.10)  # the door is off by default
    teach_playwright(alma)
    alma.add_preference("alice", "reporting", "Keep reports short: five bullet points at most, no preamble.")
    floor = alma.config.retrieval_for("helena").relevance_floor

    # Answered: the injected memories are exactly what retrieve returns, each with why.
    task = "Fix a flaky end-to-end test that clicks a button too early after navigating"
    result = alma.retrieve(task, "helena", user_id="alice")
    why = alma.explain(task, "helena", user_id="alice")
    assert why.answered and why.relevance_floor == floor
    assert {c.id for c in why.candidates if c.injected} == {m.memory.id for m in result.all()}
    for c in why.candidates:
        assert c.verdict.startswith("injected") == c.injected, c
        if c.verdict == "injected: cleared relevance_floor":
            assert c.evidence >= floor
        if c.verdict.startswith("below"):
            assert c.evidence < floor - why.floor_margin
    assert any("preference_floor" in c.verdict for c in why.candidates), "alice's preference came in under its own floor"

    # Not answered: nothing injected, every candidate below the floor, the nearest first.
    empty = alma.explain("Bake a sourdough loaf with a crisp crust for the weekend.", "helena", n=3)
    assert not empty.answered and len(empty.candidates) == 3
    assert all(not c.injected and c.verdict.startswith("below the floor: no memory cleared it") for c in empty.candidates)
    assert all(c.evidence < floor for c in empty.candidates)
    assert [c.evidence for c in empty.candidates] == sorted((c.evidence for c in empty.candidates), reverse=True)

    for bad, fix in ((dict(n=0), "n is 0"), (dict(top_k=99), "top_k is 99"), (dict(agent="../etc"), "agent")):
        args = {"task": task, "agent": "helena", **bad}
        try:
            alma.explain(**args)
        except AlmaError as exc:
            assert fix in str(exc)
        else:
            raise AssertionError(f"explain accepted {bad}")


def test_an_outcomes_verdict_counts_in_its_score() -> None:
    """At the same relevance, a success outranks a failure by the whole `success` weight: the field
    learning benchmark's agent reads a success first to its profit (leaving the verdict out cost
    it 0.013 ± 0.008 of its success in episodes 21-60, docs/retrieval-tiers.md)."""
    settings = RetrievalSettings()
    w = settings.weights
    now = datetime.now(timezone.utc)

    def scored(kind: Literal["success", "failure"]) -> float:
        attempt = Outcome(id=f"o-{kind}", project="p", agent="a", task="The nightly S3 dump job timed out",
                          outcome=kind, strategy_used="Raised the job timeout to 60 minutes")
        return final_score(Candidate(memory=attempt, vector=np.zeros(3), similarity=0.6, relevance=0.6), settings, now)

    total = w.similarity + w.recency + w.success + w.confidence + w.feedback
    assert scored("success") - scored("failure") == pytest.approx(w.success / total)


def test_the_lexical_searches_start_once_the_task_is_tokenized(
    parts: Parts, real_embedder: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lexical searches run on the search threads beside the encoder's layers. Started before
    the tokenizer, they held the GIL its call waits for on its way out (0.2 ms alone, 0.8 ms beside
    them). The vector is the one `embed_query` gives."""
    teach_playwright(parts.alma)
    encoder = real_embedder.encoder
    assert encoder is not None, "the default model runs on the numpy encoder"
    events: list[str] = []
    tokenized, submit = encoder.tokenized, parts.retriever._searches.submit

    def tokenizing(texts: Any) -> Any:
        events.append("tokenized")
        return tokenized(texts)

    def submitting(fn: Any, *args: Any) -> Any:
        events.append("lexical search")
        return submit(fn, *args)

    monkeypatch.setattr(encoder, "tokenized", tokenizing)
    monkeypatch.setattr(parts.retriever._searches, "submit", submitting)
    task = "Checkout test fails now and then on the payment page's validation messages"
    result = parts.retriever.retrieve(task, "helena")
    assert result.heuristics, "the Playwright lessons are found"
    assert events[:2] == ["tokenized", "lexical search"], events

    events.clear()
    started: list[bool] = []
    task = "A first look at the login form's error messages"
    vector = real_embedder.embed_query_beside(task, lambda: started.append("tokenized" in events))
    assert started == [True]
    assert np.array_equal(vector, real_embedder.embed_query(task))
    started.clear()
    real_embedder.embed_query_beside(task, lambda: started.append(True))  # cached: called at once
    assert started == [True]


def test_an_embedder_that_overrides_embed_query_alone_embeds_the_task_its_own_way(
    make_parts: Callable[..., Parts],
) -> None:
    """A subclass that changes how a task is embedded (`embed_query`) and inherits
    `embed_query_beside` is not bypassed: the inherited method embeds the text the base class's
    way, so the retriever calls `embed_query` for such a class."""

    class Unticketed(SentenceTransformerEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def embed_query(self, text: str) -> np.ndarray:
            self.seen.append(text)
            return super().embed_query(text.removeprefix("[JIRA-42] "))

    embedder = Unticketed()
    embedder.wait(timeout=120)
    parts = make_parts(embedder=embedder)
    teach_playwright(parts.alma)
    task = "[JIRA-42] Checkout test fails now and then on the payment page's validation messages"
    result = parts.retriever.retrieve(task, "helena")
    assert task in embedder.seen
    assert result.heuristics, "the Playwright lessons are found"


def test_the_embedding_beside_the_searches_is_taken_only_where_it_embeds_as_embed_query() -> None:
    class Base:
        def embed_query(self, text: str) -> str:
            return text

        def embed_query_beside(self, text: str, beside: Callable[[], None]) -> str:
            beside()
            return text

    class Both(Base):
        def embed_query(self, text: str) -> str:
            return text.upper()

        def embed_query_beside(self, text: str, beside: Callable[[], None]) -> str:
            beside()
            return text.upper()

    class QueryOnly(Base):
        def embed_query(self, text: str) -> str:
            return text.lower()

    class Unchanged(Base):
        pass

    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def embed_query(self, text: str) -> str:
            return "wrapped " + text

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    assert embeds_beside(Base()) is Base.embed_query_beside
    assert embeds_beside(Both()) is Both.embed_query_beside
    assert embeds_beside(Unchanged()) is Base.embed_query_beside
    assert embeds_beside(QueryOnly()) is None
    assert embeds_beside(Wrapper(Base())) is None
