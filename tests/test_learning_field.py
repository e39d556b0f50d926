"""The field benchmark's reader (bench/learning_field.py): one rule for every arm's text."""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import learning_field as field  # noqa: E402

CANDIDATES = ["renew the certificate", "restart the proxy", "flush the DNS cache", "call the provider"]


def votes(text: str) -> dict[str, tuple[int, int]]:
    return {c: (v.positive, v.negative) for c, v in field.read_memory_text(text, CANDIDATES).items()}


def test_plain_lines_read_by_their_outcome() -> None:
    text = (
        "- Task: TLS errors on the portal Outcome: success. Worked: renew the certificate\n"
        "- Task: TLS errors again Outcome: failure. Tried: restart the proxy. Error: still broken\n"
        "- When a record moved, do: flush the DNS cache\n"
        "- Avoid: call the provider. Why: slow. Instead: renew the certificate"
    )
    assert votes(text) == {
        "renew the certificate": (2, 0),
        "restart the proxy": (0, 1),
        "flush the DNS cache": (1, 0),
        "call the provider": (0, 1),
    }


def test_alma_prompt_read_the_same_way() -> None:
    text = (
        "### Strategies that worked on similar tasks\n\n"
        "- memory `h1` (strategy, 3/3 successes)\n```memory-data\nwhen: tasks like: TLS errors\ndo: renew the certificate\n```\n\n"
        "- memory `a1` (anti-pattern, seen 2 times)\n```memory-data\navoid: restart the proxy (on tasks like: TLS)\n"
        "why: failed 2 of 2 times\ninstead: renew the certificate\n```\n\n"
        "- memory `o1` (outcome (failure); relevance 0.5)\n```memory-data\ntask: TLS errors\ntried: flush the DNS cache\n"
        "result: failure\nerror: still broken\n```\n"
        "1 TLS errors again - tried call the provider: success\n"
    )
    assert votes(text) == {
        "renew the certificate": (2, 0),
        "restart the proxy": (0, 1),
        "flush the DNS cache": (0, 1),
        "call the provider": (1, 0),
    }


def test_decide_follows_avoids_and_guesses() -> None:
    rng = random.Random(0)
    followed = field.decide("- Task: x Outcome: success. Worked: restart the proxy", CANDIDATES, rng)
    assert (followed.strategy, followed.why) == ("restart the proxy", "followed")
    warned = "\n".join(f"- Avoid: {c}. Why: no." for c in CANDIDATES[1:])
    for _ in range(20):
        assert field.decide(warned, CANDIDATES, rng).strategy == "renew the certificate"
    everything = "\n".join(f"- Avoid: {c}. Why: no." for c in CANDIDATES)
    assert {field.decide(everything, CANDIDATES, rng).why for _ in range(5)} == {"guess, all warned"}
    assert field.decide("", CANDIDATES, rng).why == "guess"


def test_both_sets_load() -> None:
    for name in field.SETS:
        w = field.load_workload(name)
        assert len(w.kinds) >= 12 and len(w.agents) == 4
