"""Per agent, where the relevance floor belongs, learned from the agent's own feedback.

Every memory a retrieval serves has an evidence (similarity plus a share of lexical coverage).
When the agent later rates it with `alma_feedback`, the pair (evidence, useful) says something
about where this agent's floor should be: `helpful` and `used` mean the memory was worth
injecting, `harmful` and `ignored` that it was not. Usefulness is modelled as a logistic curve
of evidence with a fixed slope, whose value at the configured `relevance_floor` is what it was
on the development corpus (USEFUL_AT_FLOOR); this agent's own curve is that one shifted along
the evidence axis, the shift fitted to its ratings by maximum a posteriori with a normal prior
centred on no shift. An agent whose memories turn out more useful than the reference at the same
evidence gets lower floors, one whose memories turn out less useful, higher ones. A few ratings move it little; many move it as far as
they agree, at most MAX_SHIFT either way. The same shift moves `weak_floor`, so the two tiers
keep their distance.

Ratings are kept per agent (the last KEEP) in one JSON file beside the store, written whole
and replaced atomically, so a crash never leaves half a file; a file that cannot be read is
logged and ignored (the floors are then the configured ones, never a guess).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..storage.files import write_whole

log = logging.getLogger("alma_mcp")

USEFUL = {"helpful": True, "used": True, "harmful": False, "ignored": False}
SLOPE = 20.0
"""Log-odds of usefulness per unit of evidence: 0.1 of evidence changes the odds about 7-fold."""
USEFUL_AT_FLOOR = 0.33
"""Share of served memories rated useful at the configured floor's evidence, on the development
corpus: with no offset, replaying its labels as ratings (bench/retrieval.py --tiers) moved every
agent's floor up by 0.007-0.037, i.e. memories there are useful about a third of the time, not
half, since most of what a task is served is not one of its few right answers."""
_BIAS = float(np.log(USEFUL_AT_FLOOR / (1.0 - USEFUL_AT_FLOOR)))
PRIOR_SD = 0.015
"""How far from the configured floor the prior lets a handful of ratings pull it."""
MAX_SHIFT = 0.12
KEEP = 500
_SERVED = 20_000
"""Recently served (agent, memory id) -> evidence pairs remembered, to date a later rating."""
_GRID = np.round(np.arange(-MAX_SHIFT, MAX_SHIFT + 1e-9, 0.0025), 4)


def fitted_shift(ratings: list[tuple[float, bool]], floor: float) -> float:
    """The shift of `floor` that best explains these (evidence, useful) ratings, prior included."""
    if not ratings:
        return 0.0
    evidence = np.array([e for e, _ in ratings], dtype=np.float64)
    sign = np.array([1.0 if useful else -1.0 for _, useful in ratings])
    candidates = floor + _GRID
    margins = sign[None, :] * (SLOPE * (evidence[None, :] - candidates[:, None]) + _BIAS)
    log_likelihood = -np.logaddexp(0.0, -margins).sum(axis=1)
    log_prior = -0.5 * (_GRID / PRIOR_SD) ** 2
    return float(_GRID[int(np.argmax(log_likelihood + log_prior))])


class FloorCalibration:
    """The ratings of every agent, and the shift of its floors they imply."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()  # one writer at a time, so an older snapshot never replaces a newer
        self._ratings: dict[str, list[tuple[float, bool]]] = {}
        self._served: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._shifts: dict[tuple[str, float], float] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._ratings = {
                    str(agent): [(float(e), bool(u)) for e, u in rows][-KEEP:] for agent, rows in data["ratings"].items()
                }
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring the feedback calibration in %s (%s): the configured floors apply", path, exc)
                self._ratings = {}

    def served(self, agent: str, evidence_by_id: dict[str, float]) -> None:
        """Remember the evidence of what a retrieval served to `agent`."""
        with self._lock:
            for memory_id, evidence in evidence_by_id.items():
                self._served[(agent, memory_id)] = evidence
                self._served.move_to_end((agent, memory_id))
            while len(self._served) > _SERVED:
                self._served.popitem(last=False)

    def rate(self, agent: str, memory_id: str, signal: str) -> bool:
        """Count a rating if this memory was served to `agent` recently; True when it counted."""
        useful = USEFUL.get(signal)
        with self._lock:
            evidence = self._served.get((agent, memory_id))
            if useful is None or evidence is None:
                return False
            rows = self._ratings.setdefault(agent, [])
            rows.append((round(evidence, 4), useful))
            del rows[:-KEEP]
            self._shifts = {key: value for key, value in self._shifts.items() if key[0] != agent}
        with self._save_lock:
            with self._lock:
                snapshot = {name: list(values) for name, values in self._ratings.items()}
            self._save(snapshot)
        return True

    def shift(self, agent: str, floor: float) -> float:
        with self._lock:
            key = (agent, floor)
            if key not in self._shifts:
                self._shifts[key] = fitted_shift(self._ratings.get(agent, []), floor)
            return self._shifts[key]

    def ratings(self, agent: str) -> int:
        with self._lock:
            return len(self._ratings.get(agent, []))

    def _save(self, snapshot: dict[str, list[tuple[float, bool]]]) -> None:
        if self.path is None:
            return
        try:
            write_whole(self.path, json.dumps({"version": 1, "ratings": snapshot}).encode("utf-8"))
        except OSError as exc:
            log.warning("could not save the feedback calibration to %s: %s", self.path, exc)


def shifted(floor: float, shift: float) -> float:
    return min(1.0, max(0.0, round(floor + shift, 4)))

