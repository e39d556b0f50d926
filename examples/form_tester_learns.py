"""Helena, a scripted frontend tester, gets better at testing forms over eight runs. No LLM.

Run it:  python examples/form_tester_learns.py  [--dir FOLDER]

It writes the starter config (what `alma-mcp init` writes: agents helena and victor) into a
fresh folder, builds helena's harness from the built-in coding template, and runs her on
form-testing tasks. Her executor is a script that knows two strategies and reads the memory
injected into each run: it skips a strategy memory marks as an anti-pattern and follows a
strategy memory marks as a heuristic. The "world" is a script too: only the thorough
strategy finds the form's validation bug.

What you should see: runs 1-2 fail with the naive strategy; after the second failure an
anti-pattern forms, so run 3 avoids it and succeeds; after three successes a heuristic
forms, and from then on the prompt tells her what works before she starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package: never download
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from alma_mcp import ALMA, Briefing, Context, ExecutionResult, create_harness  # noqa: E402
from alma_mcp.config import write_starter_config  # noqa: E402
from alma_mcp.models import strategy_key  # noqa: E402

NAIVE = "Fill the form with valid data, submit it and check the success page"
THOROUGH = "Submit each field with invalid values and check its validation message"
KNOWN_STRATEGIES = [NAIVE, THOROUGH]  # in the order a beginner would try them

TASKS = [
    "Test the login form validation in Firefox",
    "Test the login form validation",
    "Test the login form validation after the redesign",
    "Test the login form validation on mobile",
    "Test the login form validation",
    "Test the signup form validation",
    "Test the login form validation in Firefox",
    "Test the signup form validation in Safari",
]


def world(strategy: str) -> ExecutionResult:
    """The application under test: its email field accepts 'a@', which only the thorough strategy notices."""
    if strategy == THOROUGH:
        return ExecutionResult(
            outcome="success",
            strategy=strategy,
            output="found bug: the email field accepts 'a@'",
            feedback="the invalid-value pass caught the broken email check",
        )
    return ExecutionResult(
        outcome="failure",
        strategy=strategy,
        error="missed the validation bug: the happy path never exercises the error messages",
    )


def scripted_tester(briefing: Briefing) -> ExecutionResult:
    """Pick a strategy the way an agent reading its prompt would: follow proven ones, skip known-bad ones."""
    for item in briefing.memories.heuristics:
        return world(item.memory.strategy)  # type: ignore[union-attr]
    avoid = {getattr(item.memory, "strategy_key", None) for item in briefing.memories.anti_patterns}
    for strategy in KNOWN_STRATEGIES:
        if strategy_key(strategy) not in avoid:
            return world(strategy)
    return world(KNOWN_STRATEGIES[-1])


def main(folder: Path) -> int:
    config_path = write_starter_config(folder / ".alma" / "config.yaml", project="shop")
    alma = ALMA.from_config(config_path)
    harness = create_harness("coding", "helena", alma)
    print(f"config: {config_path}\n")
    print(f"{'run':>3}  {'injected':<22} {'strategy':<10} {'outcome':<8} learned")
    successes = []
    for number, task in enumerate(TASKS, start=1):
        result = harness.run(Context(task=task, task_type="form_testing"), scripted_tester)
        memories = result.memories
        injected = f"{len(memories.heuristics)} heuristic, {len(memories.anti_patterns)} avoid"
        strategy = "thorough" if result.execution.strategy == THOROUGH else "naive"
        learned = result.learned
        lessons = []
        if learned.anti_patterns_created:
            lessons.append("new anti-pattern")
        if learned.heuristics_created:
            lessons.append("new heuristic")
        if learned.heuristics_updated:
            lessons.append("heuristic reinforced")
        print(f"{number:>3}  {injected:<22} {strategy:<10} {result.execution.outcome:<8} {', '.join(lessons) or '-'}")
        successes.append(result.success)
    half = len(successes) // 2
    print(
        f"\nsuccess rate: first {half} runs {sum(successes[:half])}/{half}, "
        f"last {len(successes) - half} runs {sum(successes[half:])}/{len(successes) - half}"
    )
    print("\nThe prompt of the last run (memory section included):\n")
    print(result.prompt)
    print(harness.stats())
    alma.close()
    return 0 if sum(successes[half:]) > sum(successes[:half]) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where to put .alma/ (default: a temporary folder)")
    args = parser.parse_args()
    if args.dir:
        sys.exit(main(args.dir))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(Path(tmp)))
