"""Corrections a person makes on the review page: edit, mark wrong, merge. Each goes through the
service, is validated before anything is written, and leaves an audit entry."""

from __future__ import annotations

import pytest

from alma_mcp.errors import InvalidInput


def test_edit_rewords_a_heuristic_keeps_its_counters_and_is_audited(alma):
    h = alma.add_heuristic("helena", "testing a signup form", "fill the required fields first")
    alma.feedback(h.id, "helpful")
    edited = alma.edit(h.id, {"strategy": "fill required fields, then submit empty to see errors"}, "clearer")
    stored = alma.get(h.id).memory
    assert stored.strategy == "fill required fields, then submit empty to see errors"
    assert stored.condition == "testing a signup form" and stored.helpful == 1 and edited.id == h.id
    (entry,) = alma.audit_log(action="edit")
    assert entry.memory_id == h.id and entry.reason == "clearer"
    assert entry.details == {
        "before": {"strategy": "fill the required fields first"},
        "after": {"strategy": "fill required fields, then submit empty to see errors"},
    }
    # The new wording is what retrieval finds now.
    found = alma.retrieve("submit the empty signup form to see the errors", "helena")
    assert [x.memory.id for x in found.heuristics] == [h.id]
    assert "submit empty to see errors" in found.prompt


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"confidence": 1.0}, r"edited, not \['confidence'\]"),
        ({"strategy": ""}, "must not be empty"),
        ({"strategy": "x" * 9000}, "limit is 8000"),
        ({"strategy": "fill the required fields first"}, "nothing changed"),
    ],
)
def test_bad_edits_are_refused_and_change_nothing(alma, changes, message):
    h = alma.add_heuristic("helena", "testing a signup form", "fill the required fields first")
    with pytest.raises(InvalidInput, match=message):
        alma.edit(h.id, changes)
    assert alma.get(h.id).memory.model_dump() == h.model_dump()
    assert alma.audit_log(action="edit") == []


def test_outcomes_are_never_edited(alma):
    result = alma.learn("helena", "test the login form", "success", "use valid credentials")
    with pytest.raises(InvalidInput, match="a outcome can have nothing edited"):
        alma.edit(result.outcome_id, {"task": "something else"})


def test_mark_wrong_is_harmful_feedback_with_the_reason_in_the_audit_log(alma):
    h = alma.add_heuristic("helena", "testing a signup form", "skip the captcha", confidence=0.7)
    after = alma.mark_wrong(h.id, "the captcha cannot be skipped in production")
    assert after.harmful == 1 and after.confidence == pytest.approx(0.6)
    (entry,) = alma.audit_log(action="feedback")
    assert entry.reason == "the captcha cannot be skipped in production"
    assert entry.details == {"signal": "harmful", "confidence_before": 0.7, "confidence_after": 0.6}
    with pytest.raises(InvalidInput, match="reason"):
        alma.mark_wrong(h.id, "   ")
    assert alma.get(h.id).memory.harmful == 1


def test_merge_folds_one_lesson_into_another_and_archives_it(alma):
    a = alma.add_heuristic("helena", "testing a signup form", "fill the required fields first")
    b = alma.add_heuristic("helena", "checking a payment page", "use the sandbox card numbers")
    alma.feedback(b.id, "helpful")
    survivor = alma.merge(a.id, b.id, "same advice, really")
    assert survivor.helpful == 1
    other = alma.get(b.id).memory
    assert other.archived and other.archived_reason.startswith(f"merged into {a.id}")
    (entry,) = alma.audit_log(action="merge")
    assert entry.memory_id == b.id and entry.details == {"survivor": a.id}
    with pytest.raises(InvalidInput, match="restore an archived memory"):
        alma.merge(a.id, b.id)
    restored = alma.restore([b.id])
    # A merge is not undone: the restore says the survivor still counts the restored one's evidence.
    assert restored.message == f"restored 1 memory; {b.id} had been merged into {a.id}, which still counts its evidence too"
    assert alma.get(a.id).memory.helpful == 1
    k = alma.add_knowledge("helena", "forms", "the signup form has five fields")
    with pytest.raises(InvalidInput, match="cannot be merged"):
        alma.merge(a.id, k.id)
    with pytest.raises(InvalidInput, match="cannot be merged"):
        alma.merge(a.id, a.id)


def test_a_persons_wording_of_a_learned_lesson_survives_the_next_outcome(alma):
    """Learning rewrites a learned heuristic's condition (and an anti-pattern's pattern and why)
    from its outcomes on every new outcome, but never a wording a person gave it."""
    tasks = [
        "Test the signup form validation for an empty email",
        "Test signup form validation when the email is left empty",
        "Check the signup form's validation of a missing email address",
        "Verify the signup form rejects an empty email field",
    ]
    strategy = "Leave the field blank, submit, and assert the inline error message"
    for task in tasks[:3]:
        alma.learn("helena", task, "success", strategy, "form_testing")
    (h,) = alma.list_memories("helena", "heuristic")
    assert h.condition.startswith("tasks like: ")
    alma.edit(h.id, {"condition": "a signup form's required email field is left empty"}, "clearer")
    alma.learn("helena", tasks[3], "success", strategy, "form_testing")
    stored = alma.get(h.id).memory
    assert stored.occurrence_count == 4, "the outcome still counts"
    assert stored.condition == "a signup form's required email field is left empty"


def test_learning_recognises_its_own_wording():
    from alma_mcp.learning.learner import written_by_learning

    assert written_by_learning("tasks like: a; b", "condition")
    assert not written_by_learning("when the signup email is empty", "condition")
    assert written_by_learning("retry with backoff (on tasks like: x; y)", "pattern")
    assert not written_by_learning("retrying without backoff", "pattern")
    assert written_by_learning("failed 3 of 4 times on similar tasks: timeout", "why_bad")
    assert not written_by_learning("it hides the real error", "why_bad")


def test_titles_cut_on_a_word_and_say_when_once():
    from alma_mcp.models import Heuristic, shown

    h = Heuristic(id="heuristic-" + "0" * 32, project="p", agent="a", condition="When testing the signup form of the new onboarding flow for mobile users",
                  strategy="Fill every required field first, then submit and check the inline errors one by one")
    assert h.title() == "When testing the signup form of the new onboarding flow for\u2026: Fill every required field first, then submit and check the\u2026"
    assert shown("x" * 100_000).endswith("...'") and len(shown("x" * 100_000)) == 60
