"""The verdict on near misses, chosen on the development sets: the standout test's settings
(`standout`, `sure_floor`) and the near-miss test's `align_floor` (alma_mcp/ranking/nearmiss.py),
offline on the candidates `Retriever.candidates` finds (`bench/tiers.serve_offline`).

Sets: the calibration split of the agent corpus and the whole development corpus of personal facts
(chosen on), the agent corpus's test split (confirmation). Per set and setting, over paraphrased
answerable tasks: served R@5, nDCG@10, hit@1 and the share given a memory in full; over the tasks
with no answer: the share given a confident memory and the mean prompt in tokens (without the track
record, which the offline path does not build). The held-out corpus is not read.

    python bench/nearmiss.py --workdir DIR [--show]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Sequence

from bench.alignment import development_sets, hold_back
from bench.tiers import figures, serve_offline

from alma_mcp.config import RetrievalSettings
from alma_mcp.ranking.nearmiss import asks


def measure(rows: Sequence[dict[str, Any]], settings: RetrievalSettings) -> dict[str, float]:
    """Served figures with these settings; the near-miss test (`hold_back` on the alignment of the
    task with its best candidate, at any evidence, on questions, as `ranking.nearmiss.near_miss` runs it) reads
    the alignment each row measured once."""
    served = {}
    for r in rows:
        served[r["task"].id] = serve_offline(
            r["candidates"],
            settings,
            after_fuse=lambda cs, r=r: asks(r["task"].task) and hold_back(cs, settings, settings.align_floor, lambda best: r["weakest@1"], 2.0),
        )
    tasks = [r["task"] for r in rows]
    row = figures(served, tasks, "paraphrase")
    answerable = [t for t in tasks if t.kind == "paraphrase"]
    row["in full"] = sum(1 for t in answerable if served[t.id].confident) / len(answerable)
    return row


def line(name: str, sets: dict[str, list[dict[str, Any]]], settings: RetrievalSettings) -> None:
    cells = []
    for rows in sets.values():
        f = measure(rows, settings)
        cells.append(
            f"{f['R@5']:.3f} {f['nDCG@10']:.3f} {f['hit@1']:.3f} {f['in full']:>4.0%} {f.get('none: confident', 0):>6.1%} {f.get('none: tokens', 0):>5.1f}"
        )
    print(f"{name:<34} | " + " | ".join(cells))
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--show", action="store_true", help="list the personal corpus's no-answer questions with their signals")
    args = parser.parse_args()

    alma, sets = development_sets(args.workdir)
    base = alma.config.retrieval_for("any")
    head = "R@5   nDCG  hit@1 full  none:c  tok"
    print(f"{'':<34} | " + " | ".join(f"{name:<{len(head)}}" for name in sets))
    print(f"{'settings':<34} | " + " | ".join(head for _ in sets))
    line(f"shipped (align_floor {base.align_floor})", sets, base)
    off = base.model_copy(update={"align_floor": 0.0})
    line("no near-miss test (align_floor 0)", sets, off)
    for floor in (0.25, 0.30, 0.35, 0.40):
        line(f"align_floor {floor}", sets, base.model_copy(update={"align_floor": floor}))
    for align, standout, sure in itertools.product((0.0, base.align_floor), (0.0, 0.10, 0.18, 0.26, 0.30), (0.60, 0.70, 1.0)):
        change = {"align_floor": align, "standout": standout, "sure_floor": sure}
        line(f"align {align} standout {standout} sure {sure}", sets, base.model_copy(update=change))
    if args.show:
        print("\npersonal corpus, no-answer questions and the hard answerable ones:")
        for r in sets["personal corpus"]:
            t = r["task"]
            if t.kind == "no_answer" or "-s" in t.id:
                print(
                    f"  {'ANS ' if r['answerable'] else 'NONE'} {r['type'][:5]} ev {r['evidence']:.2f} gap {r['gap']:.2f} "
                    f"weakest {r['weakest@1']:.2f} ({r['word']})  {t.task[:70]}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
