"""The confident verdict is relative to the store: evidence clears relevance_floor only when the
task's best candidate stands `standout` above the runner-up. On a store of facts about one
household, a question about the dog that nothing answers comes close to every fact about the dog;
the one that is answered stands out. Real model, real store."""

from __future__ import annotations

from typing import Callable

from helpers import teach_playwright

from alma_mcp.config import RetrievalSettings
from alma_mcp.service import ALMA

FACTS = (
    ("pets", "Miso is a six-year-old border collie who gets car-sick on long drives."),
    ("pets", "Miso's rabies booster and yearly vaccinations are due every April."),
    ("pets", "Miso is insured with Petplan; claims need the vet's report within 30 days."),
    ("pets", "Miso sleeps in a crate in the hallway and is walked at 7:00 and 19:00."),
    ("home", "The boiler is serviced every October by Warmtetechniek Vanhove."),
    ("family", "Lukas plays the cello; his lessons are on Wednesdays at 17:30."),
    ("travel", "Every August the family rents a cottage in Wissant on the French coast."),
)
UNANSWERED = "does Miso like cats"
ANSWERED = "when are the dog's yearly jabs due"


def teach_household(alma: ALMA) -> dict[str, str]:
    return {fact: alma.add_knowledge("butler", domain, fact).id for domain, fact in FACTS}


def test_a_question_about_a_subject_many_memories_share_gets_them_as_weak_matches(alma: ALMA) -> None:
    teach_household(alma)
    settings = alma.config.retrieval_for("butler")
    why = alma.explain(UNANSWERED, "butler")
    best = why.candidates[0]
    assert best.evidence >= settings.relevance_floor, "the best fact about the dog reaches the absolute floor"
    assert why.runner_up_gap < settings.standout and not why.answered
    assert "does not stand out" in best.verdict
    result = alma.retrieve(UNANSWERED, "butler")
    assert result.confident() == [] and len(result) >= 1, "named as weak matches for the model to judge"
    assert {m.tier for m in result.all()} == {"weak"} and result.prompt.startswith("## alma-mcp weak matches")

    # The same store and floors without the standout test give the fact about the dog in full (the
    # near-miss test off too: no word of the fact matches "cats", so it holds the fact back as well).
    alma.config.alma.retrieval = settings.model_copy(update={"standout": 0.0, "align_floor": 0.0})
    assert [m.memory.fact for m in alma.retrieve(UNANSWERED, "butler").confident()][:1] == [best.text.removeprefix("pets: ")]  # type: ignore[attr-defined]


def test_the_answer_stands_out_and_a_near_duplicate_of_it_does_not_hide_it(make_alma: Callable[..., ALMA]) -> None:
    # Near-duplicates are merged when taught; one taught with merging off (or read from another
    # agent) stays beside its twin.
    alma = make_alma(lifecycle={"merge_on_write": False})
    ids = teach_household(alma)
    vaccinations = ids[FACTS[1][1]]
    result = alma.retrieve(ANSWERED, "butler")
    assert result.ranked()[0].memory.id == vaccinations and result.ranked()[0].tier == "confident"
    assert alma.explain(ANSWERED, "butler").runner_up_gap > 0.2

    # The same fact stored again in other words is not the runner-up it is measured against (the
    # two stand within a few hundredths of each other).
    twin = alma.add_knowledge("butler", "pets", "Miso's rabies booster and yearly vaccinations are due each April.").id
    again = alma.explain(ANSWERED, "butler")
    evidence = {c.id: c.evidence for c in again.candidates}
    assert abs(evidence[twin] - evidence[vaccinations]) < 0.05
    assert again.answered and again.runner_up_gap > 0.2
    assert alma.retrieve(ANSWERED, "butler").ranked()[0].tier == "confident"


def test_the_lexical_door_ignores_the_standout_test(alma: ALMA) -> None:
    alma.add_knowledge("butler", "car", "The Skoda's registration is 1-KXV-482.")
    alma.add_knowledge("butler", "car", "The Skoda's technical inspection is due in February.")
    task = "Is 1-KXV-482 due anything?"
    strict = RetrievalSettings(standout=1.0)
    alma.config.alma.retrieval = strict
    result = alma.retrieve(task, "butler")
    assert any(m.tier == "confident" and "1-KXV-482" in m.memory.fact for m in result.all())  # type: ignore[attr-defined]


def test_a_family_of_close_lessons_is_not_judged_by_the_standout_test(alma: ALMA) -> None:
    # Lessons are keyed on a situation: several close ones are what a task in it should be given.
    teach_playwright(alma)
    task = "Fix a flaky end-to-end test that clicks a button too early after navigating"
    alma.config.alma.retrieval = RetrievalSettings(standout=1.0, sure_floor=1.0)
    result = alma.retrieve(task, "helena")
    assert result.ranked()[0].memory.type == "heuristic" and result.ranked()[0].tier == "confident"
    assert alma.explain(task, "helena").runner_up_gap < 1.0
