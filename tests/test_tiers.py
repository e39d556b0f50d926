"""The weak tier with the real model on a real store: what falls below the relevance floor but
above weak_floor is mentioned in one line and says so in the result; the prompt, the result and
explain give a memory the same evidence."""

from __future__ import annotations

from helpers import fenced_regions, teach_playwright

from alma_mcp.config import RetrievalSettings
from alma_mcp.ranking.candidates import NAMED_ON_MARGIN
from alma_mcp.prompt.handles import handle_of
from alma_mcp.prompt.render import WEAK_HEADER, WEAK_SECTION, estimate_tokens
from alma_mcp.service import ALMA

FLAKY = "Fix a flaky end-to-end test that clicks a button too early after navigating"


def test_evidence_below_the_floor_is_mentioned_as_a_weak_match(alma: ALMA) -> None:
    teach_playwright(alma)
    unreachable = RetrievalSettings(relevance_floor=0.95, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.2, weak_span=1.0, weak_top_k=2)
    result = alma.retrieve(FLAKY, "helena", settings=unreachable)
    assert 1 <= len(result) <= 2 and {m.tier for m in result.all()} == {"weak"}
    assert result.ranked()[0].memory.condition.startswith("A Playwright test flakes")  # type: ignore[attr-defined]
    assert result.confident() == []
    assert result.prompt.startswith(WEAK_HEADER)
    assert all(handle_of(m.memory.id) in result.prompt for m in result.all()), "a weak match's handle is in the prompt, to read or rate it"
    assert len(fenced_regions(result.prompt)[0]) == 1

    # weak_top_k 0 is the all-or-nothing floor of before.
    off = unreachable.model_copy(update={"weak_top_k": 0})
    nothing = alma.retrieve(FLAKY, "helena", settings=off)
    assert len(nothing) == 0 and nothing.prompt == ""
    # ... and evidence under weak_floor is not mentioned either.
    high = unreachable.model_copy(update={"weak_floor": 0.9})
    assert len(alma.retrieve(FLAKY, "helena", settings=high)) == 0


def test_confident_memories_come_first_and_weak_ones_after(alma: ALMA) -> None:
    teach_playwright(alma)
    settings = RetrievalSettings(relevance_floor=0.5, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.0, weak_span=1.0, weak_top_k=3)
    result = alma.retrieve(FLAKY, "helena", settings=settings)
    tiers = [m.tier for m in result.ranked()]
    assert tiers[0] == "confident" and "weak" in tiers
    assert tiers == sorted(tiers), "confident (c) before weak (w)"
    assert all(m.evidence >= 0.5 for m in result.confident())
    assert all(m.evidence < 0.5 for m in result.all() if m.tier == "weak")
    assert result.prompt.index("### Strategies") < result.prompt.index(WEAK_SECTION)
    for m in result.all():
        assert (f"- memory `{handle_of(m.memory.id)}`" in result.prompt) == (m.tier == "confident")


def test_the_prompt_the_result_and_explain_give_the_same_evidence(alma: ALMA) -> None:
    teach_playwright(alma)
    result = alma.retrieve(FLAKY, "helena")
    why = {c.id: c for c in alma.explain(FLAKY, "helena").candidates}
    assert len(result) > 0
    for m in result.all():
        assert m.evidence == why[m.memory.id].evidence and why[m.memory.id].tier == m.tier
        shown = f"evidence {m.evidence:.2f}" if m.tier == "confident" else f"{handle_of(m.memory.id)} {m.evidence:.2f}"
        assert shown in result.prompt
    assert "relevance 0." not in result.prompt


def test_by_default_an_agents_own_outcomes_reach_it_ranked_with_the_lessons(alma: ALMA) -> None:
    teach_playwright(alma)
    alma.learn("helena", "Fix the flaky checkout end-to-end test that clicks Pay too early", "success",
               "Waited for the payment iframe to load with frameLocator before clicking Pay", task_type="testing")
    task = "The checkout e2e test is flaky: it presses Pay before the card iframe is ready"
    result = alma.retrieve(task, "helena")
    assert [m.tier for m in result.outcomes] == ["confident"], "no lesson has formed yet: the outcome itself is injected"
    assert "Waited for the payment iframe" in result.prompt
    alma.config.alma.retrieval = alma.config.alma.retrieval.model_copy(update={"include_outcomes": "weak"})
    weak = alma.retrieve(task, "helena")
    assert {m.tier for m in weak.outcomes} <= {"weak"}, "'weak': outcomes only ever mentioned"
    named = alma.retrieve(task, "helena", memory_types=["outcome"])
    assert [m.tier for m in named.outcomes] == ["confident"], "a caller who asks for outcomes gets them like any memory"
    alma.config.alma.retrieval = alma.config.alma.retrieval.model_copy(update={"include_outcomes": False})
    assert alma.retrieve(task, "helena").outcomes == []


def test_a_cached_result_is_not_served_for_the_same_types_asked_another_way(alma: ALMA) -> None:
    alma.learn("helena", "Fix the flaky checkout end-to-end test that clicks Pay too early", "success",
               "Waited for the payment iframe to load with frameLocator before clicking Pay", task_type="testing")
    task = "The checkout e2e test is flaky: it presses Pay before the card iframe is ready"
    alma.config.alma.retrieval = alma.config.alma.retrieval.model_copy(update={"include_outcomes": "weak"})
    every = ["heuristic", "anti_pattern", "knowledge", "preference", "outcome"]
    assert [m.tier for m in alma.retrieve(task, "helena", memory_types=every).outcomes] == ["confident"]
    assert [m.tier for m in alma.retrieve(task, "helena").outcomes] == ["weak"], "the default types read outcomes as weak only"


def teach_flaky_mix(alma: ALMA) -> None:
    """Close and loose memories of three types on flaky end-to-end tests."""
    teach_playwright(alma)
    for condition, strategy in (
        ("An end-to-end test fails only on the CI runners", "Run it with --repeat-each=20 and a trace to find the race."),
        ("A flaky Playwright test depends on shared test data", "Give every test its own user via a fixture."),
    ):
        alma.add_heuristic("helena", condition, strategy, task_type="testing")
    for pattern in ("Retrying a flaky end-to-end test until it passes", "Sleeping before every click in a browser test"):
        alma.add_anti_pattern("helena", pattern, "It hides the race instead of fixing it.", "Wait for the state the click needs.")
    for fact in ("Playwright's auto-waiting covers visibility and enabled state", "End-to-end tests run on three CI shards"):
        alma.add_knowledge("helena", "testing", fact)


def test_top_k_counts_the_memories_injected_in_all_ranked_across_types(alma: ALMA) -> None:
    teach_flaky_mix(alma)
    settings = RetrievalSettings(relevance_floor=0.2, floor_margin=0.0, lexical_floor=1.0, weak_top_k=0, top_k=3)
    result = alma.retrieve(FLAKY, "helena", settings=settings)
    assert len(result) == 3, "three memories in all, not three of each type"
    why = alma.explain(FLAKY, "helena", top_k=3, n=40)
    admitted = [c for c in why.candidates if c.verdict.startswith("admitted, not injected")]
    assert admitted, "more than three memories cleared the floor"
    assert min(m.score for m in result.all()) >= max(c.score for c in admitted), "the three best scores, whatever their type"
    per_type = alma.retrieve(FLAKY, "helena", settings=settings.model_copy(update={"top_k_scope": "type"}))
    assert len(per_type) > 3 and all(len(items) <= 3 for items in per_type.by_type().values())


def test_weak_mentions_only_fill_the_room_the_confident_memories_left(alma: ALMA) -> None:
    teach_flaky_mix(alma)
    settings = RetrievalSettings(relevance_floor=0.5, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.0, weak_span=1.0, weak_top_k=5, top_k=8)
    result = alma.retrieve(FLAKY, "helena", settings=settings)
    confident = len(result.confident())
    assert 1 <= confident < 8 and len(result) == 8, "confident first, then weak mentions up to top_k in all"
    full = settings.model_copy(update={"relevance_floor": 0.2, "top_k": 2})
    assert {m.tier for m in alma.retrieve(FLAKY, "helena", settings=full).all()} == {"confident"}
    per_type = alma.retrieve(FLAKY, "helena", settings=settings.model_copy(update={"top_k_scope": "type"}))
    assert len(per_type) - len(per_type.confident()) == 5, "per type, weak_top_k mentions besides"


def test_weak_mentions_are_judged_against_the_tasks_own_best_candidate(alma: ALMA) -> None:
    teach_flaky_mix(alma)
    wide = RetrievalSettings(relevance_floor=0.95, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.0, weak_span=1.0, weak_top_k=20, top_k=20)
    everything = sorted((m.evidence for m in alma.retrieve(FLAKY, "helena", settings=wide).all()), reverse=True)
    best = everything[0]
    assert len(everything) >= 6 and everything[5] < best - 0.05, "the memories are not all level with the best"

    # A task whose best reaches weak_floor gets the mentions within weak_span of its best, and
    # only those, even where they are below weak_floor themselves.
    for span in (0.05, 0.15):
        settings = wide.model_copy(update={"weak_floor": best - 0.01, "weak_span": span})
        mentioned = [m.evidence for m in alma.retrieve(FLAKY, "helena", settings=settings).all()]
        assert sorted(mentioned, reverse=True) == [e for e in everything if e >= best - span]
    assert any(e < best - 0.01 for e in mentioned), "a mention below weak_floor, within weak_span of the best"
    # A best below weak_floor: nothing, however level the others are.
    assert len(alma.retrieve(FLAKY, "helena", settings=wide.model_copy(update={"weak_floor": best + 0.01}))) == 0


def test_a_weak_mention_is_short(alma: ALMA) -> None:
    teach_flaky_mix(alma)
    settings = RetrievalSettings(relevance_floor=0.95, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.0, weak_span=1.0, weak_top_k=5)
    result = alma.retrieve(FLAKY, "helena", settings=settings)
    assert len(result) == 5 and result.confident() == []
    # A header of about 20 tokens and about 30 a mention, a third of that the id (kind-uuid, 40-odd
    # characters); the format of before (kind words, 72 characters a mention) took about 200.
    assert estimate_tokens(result.prompt) <= 180, result.prompt


def test_a_store_crowded_around_the_task_lowers_every_evidence_by_the_same_amount(alma: ALMA) -> None:
    teach_playwright(alma)
    settings = alma.config.retrieval_for("helena")
    sparse = alma.explain(FLAKY, "helena")
    assert sparse.crowding == 0.0, "a few varied memories: nothing taken off"
    for c in sparse.candidates:
        assert abs(c.evidence - (c.similarity + settings.lexical_weight * c.coverage)) < 2e-3

    # Twelve facts about flaky browser tests: the task's tenth nearest memory is now close.
    for n, detail in enumerate(
        ("the login page", "the cart", "the search box", "the profile form", "the settings tab", "the invoice list",
         "the signup wizard", "the admin table", "the upload dialog", "the map view", "the chat widget", "the export menu")
    ):
        alma.add_knowledge("helena", "testing", f"The end-to-end test of {detail} was flaky: it clicked before the page had settled (run {n}).")
    crowded = alma.explain(FLAKY, "helena")
    assert crowded.crowding > 0.0
    for c in crowded.candidates:
        assert abs(c.evidence - (c.similarity + settings.lexical_weight * c.coverage - crowded.crowding)) < 2e-3
    result = alma.retrieve(FLAKY, "helena")
    assert all(m.evidence < m.similarity + settings.lexical_weight * m.coverage - crowded.crowding + 2e-3 for m in result.all())

    alma.config.alma.retrieval = settings.model_copy(update={"crowding_weight": 0.0})
    assert alma.explain(FLAKY, "helena").crowding == 0.0, "crowding_weight 0: off"


def test_a_heuristic_under_the_floor_is_named_not_given_on_the_margin(alma: ALMA) -> None:
    # Advice an agent acts on must clear the floor in its own right: the floor margin that brings
    # in the memories around a relevant one names a heuristic in the weak tier instead.
    teach_playwright(alma)
    everything = RetrievalSettings(relevance_floor=0.01, floor_margin=0.0, lexical_floor=1.0, weak_top_k=0, top_k=10)
    ranked = alma.retrieve(FLAKY, "helena", settings=everything).ranked()
    top = ranked[0]
    lower = [m for m in ranked[1:] if m.memory.type == "heuristic" and m.evidence < top.evidence - 0.02]  # type: ignore[attr-defined]
    assert lower, "the fixture has a heuristic less relevant than its best memory"
    heuristic = lower[0]
    floor = (heuristic.evidence + top.evidence) / 2
    margin = RetrievalSettings(relevance_floor=floor, floor_margin=1.0, lexical_floor=1.0, weak_floor=0.0, weak_span=0.0, weak_top_k=5, top_k=10)
    result = alma.retrieve(FLAKY, "helena", settings=margin)
    tiers = {m.memory.id: m.tier for m in result.all()}
    assert tiers.get(top.memory.id) == "confident"
    assert tiers.get(heuristic.memory.id) == "weak", "named in the weak tier, not given in full"
    assert f"- memory `{handle_of(heuristic.memory.id)}`" not in result.prompt and handle_of(heuristic.memory.id) in result.prompt
    # Any other type within the margin but facts and preferences (NAMED_ON_MARGIN) is still given in full.
    others = [m for m in ranked[1:] if m.memory.type not in NAMED_ON_MARGIN and m.evidence < floor]  # type: ignore[attr-defined]
    for m in others:
        assert tiers.get(m.memory.id) == "confident"
    # A fact within the margin shares a subject with what cleared the floor more often than it
    # answers the task: named, not given in full.
    facts = [m for m in ranked[1:] if m.memory.type == "knowledge" and m.evidence < floor]  # type: ignore[attr-defined]
    assert facts, "the fixture has a fact less relevant than its best memory"
    assert all(tiers.get(m.memory.id) == "weak" for m in facts)
    assert all(f"- memory `{handle_of(m.memory.id)}`" not in result.prompt for m in facts)


def test_a_task_near_the_bottom_of_the_weak_tier_is_given_its_few_closest(alma: ALMA) -> None:
    teach_playwright(alma)
    settings = RetrievalSettings(
        relevance_floor=0.95, floor_margin=0.0, lexical_floor=1.0, weak_floor=0.0, weak_few_below=0.0, weak_span=1.0, weak_top_k=5
    )
    many = alma.retrieve(FLAKY, "helena", settings=settings)
    assert len(many) >= 3 and {m.tier for m in many.all()} == {"weak"}
    best = max(m.evidence for m in many.all())
    few = alma.retrieve(FLAKY, "helena", settings=settings.model_copy(update={"weak_few_below": best + 0.01}))
    assert [m.memory.id for m in few.ranked()] == [m.memory.id for m in many.ranked()][: RetrievalSettings.weak_few]
    # At weak_few_below or above, the task's best has the whole weak tier again.
    level = alma.retrieve(FLAKY, "helena", settings=settings.model_copy(update={"weak_few_below": best - 0.01}))
    assert len(level) == len(many)
