"""An agent's own feedback moves its floors: little for a few ratings, as far as many agree,
never past MAX_SHIFT; ratings of what was served are kept beside the store and survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import teach_playwright

from alma_mcp.ranking.calibration import MAX_SHIFT, FloorCalibration, fitted_shift
from alma_mcp.ranking.retriever import CALIBRATION_FILE
from alma_mcp.service import ALMA

FLOOR = 0.42


def test_useful_memories_below_the_floor_lower_it_and_useless_ones_above_raise_it() -> None:
    assert fitted_shift([], FLOOR) == 0.0
    useful_low = [(0.36, True)] * 40 + [(0.25, False)] * 40
    useless_high = [(0.48, False)] * 40 + [(0.60, True)] * 40
    assert -MAX_SHIFT <= fitted_shift(useful_low, FLOOR) < -0.03
    assert MAX_SHIFT >= fitted_shift(useless_high, FLOOR) > 0.03


def test_a_few_ratings_move_the_floor_little_and_many_no_further_than_max_shift() -> None:
    few = fitted_shift([(0.20, True)] * 2, FLOOR)
    many = fitted_shift([(0.20, True)] * 400, FLOOR)
    assert -0.02 <= few < 0 and many == -MAX_SHIFT
    agreeing = fitted_shift([(0.60, False)] * 400, FLOOR)
    assert agreeing == MAX_SHIFT


def test_only_served_memories_count_and_ratings_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    calibration = FloorCalibration(path)
    assert not calibration.rate("helena", "knowledge-x", "helpful"), "never served to helena: no evidence to learn from"
    calibration.served("helena", {"knowledge-x": 0.35})
    assert not calibration.rate("victor", "knowledge-x", "helpful"), "served to helena, not to victor"
    for _ in range(30):
        assert calibration.rate("helena", "knowledge-x", "used")
    assert calibration.shift("helena", FLOOR) < 0 and calibration.shift("victor", FLOOR) == 0
    again = FloorCalibration(path)
    assert again.ratings("helena") == 30 and again.shift("helena", FLOOR) == calibration.shift("helena", FLOOR)


def test_an_unreadable_calibration_file_leaves_the_configured_floors(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{not json", encoding="utf-8")
    assert FloorCalibration(path).shift("helena", FLOOR) == 0.0


def test_feedback_through_the_service_moves_the_agents_floors(alma: ALMA) -> None:
    alma.config.alma.retrieval = alma.config.alma.retrieval.model_copy(update={"calibrate_from_feedback": True})
    teach_playwright(alma)
    configured = alma.config.retrieval_for("helena")
    served = alma.retrieve("Fix a flaky end-to-end test that clicks a button too early after navigating", "helena")
    assert len(served) > 0
    best = served.ranked()[0]
    for _ in range(60):  # the agent keeps finding a memory at this evidence useless
        alma.feedback(best.memory.id, "ignored", agent="helena")
    moved = alma.retrieval_settings("helena")
    assert moved.relevance_floor > configured.relevance_floor and moved.weak_floor > configured.weak_floor
    assert moved.relevance_floor - configured.relevance_floor == pytest.approx(moved.weak_floor - configured.weak_floor)
    assert alma.retrieval_settings("victor") == alma.config.retrieval_for("victor"), "per agent"
    assert (alma.config.data_dir / CALIBRATION_FILE).exists()
    off = configured.model_copy(update={"calibrate_from_feedback": False})
    alma.config.alma.retrieval = off
    assert alma.retrieval_settings("helena") == off
