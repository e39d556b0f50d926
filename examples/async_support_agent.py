"""An async support agent that learns which fix resolves a recurring ticket. No LLM.

Run it:  python examples/async_support_agent.py  [--dir FOLDER]

It writes a config that declares the `support` agent of the built-in operations template
(heuristics after 2 successes), builds the harness with `create_harness`, and answers
tickets with `await harness.arun(...)` and an async scripted executor. The customer's
preference about password resets (stored once with `add_preference`) is injected into
the prompts of that customer's password-reset tickets.

The executor reads the injected memory: it follows a strategy memory marks as a heuristic,
skips one memory marks as an anti-pattern, and otherwise tries the quick fix first. Only
checking the address resolves these tickets (the customers mistyped it at sign-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import anyio  # noqa: E402

from alma_mcp import ALMA, Briefing, Context, ExecutionResult, create_harness  # noqa: E402
from alma_mcp.models import strategy_key  # noqa: E402

CONFIG = """\
alma:
  project_id: helpdesk
  agents:
    support:
      domain: operations
      description: Resolves customer tickets
      can_learn: [customer_support, troubleshooting, escalation]
      cannot_learn: [billing_changes, security_overrides]
      min_occurrences_for_heuristic: 2
"""

QUICK_FIX = "Resend the password reset email"
CHECK_ADDRESS = "Check the account's email address for typos with the customer, fix it, then resend the reset email"

TICKETS = [
    "Customer says the password reset email never arrived",
    "Customer never received the password reset email",
    "Customer says the password reset email never arrived, second request",
    "Customer did not get the password reset email",
    "Customer says the password reset email never arrived after two tries",
    "Customer never received the password reset email on their work address",
]


async def support_agent(briefing: Briefing) -> ExecutionResult:
    """A scripted agent: it reads the injected memory the way a model would read its prompt."""
    await anyio.sleep(0)  # an async agent would await its model or tools here
    proven = [item.memory.strategy for item in briefing.memories.heuristics]  # type: ignore[union-attr]
    avoid = {getattr(item.memory, "strategy_key", None) for item in briefing.memories.anti_patterns}
    if proven:
        strategy = proven[0]
    else:
        strategy = next((s for s in (QUICK_FIX, CHECK_ADDRESS) if strategy_key(s) not in avoid), CHECK_ADDRESS)
    if strategy == CHECK_ADDRESS:
        return ExecutionResult(
            outcome="success",
            strategy=strategy,
            output="address had a typo; fixed it and the reset email arrived",
            feedback="customer confirmed the reset worked",
        )
    return ExecutionResult(
        outcome="failure",
        strategy=strategy,
        error="the resent email bounced: the address on the account has a typo",
    )


async def main(folder: Path) -> int:
    config_path = folder / ".alma" / "config.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(CONFIG, encoding="utf-8")
    alma = ALMA.from_config(config_path)
    harness = create_harness("operations", "support", alma)
    await alma.aadd_preference(
        user_id="acme", category="password resets", preference="Tell us which address the reset email went to"
    )

    print(f"{'ticket':>6}  {'strategy':<14} {'outcome':<8} learned")
    results = []
    for number, ticket in enumerate(TICKETS, start=1):
        result = await harness.arun(Context(task=ticket, user_id="acme", task_type="troubleshooting"), support_agent)
        learned = result.learned
        lessons = [
            label
            for label, ids in (
                ("new anti-pattern", learned.anti_patterns_created),
                ("new heuristic", learned.heuristics_created),
                ("heuristic reinforced", learned.heuristics_updated),
            )
            if ids
        ]
        name = "check address" if result.execution.strategy == CHECK_ADDRESS else "quick resend"
        print(f"{number:>6}  {name:<14} {result.execution.outcome:<8} {', '.join(lessons) or '-'}")
        results.append(result)

    last = results[-1]
    print("\nMemory injected into the last ticket's prompt:\n")
    print(last.prompt[last.prompt.index("## Memory from earlier runs") : last.prompt.index("## Task")])
    alma.close()
    first_half, second_half = results[: len(results) // 2], results[len(results) // 2 :]
    improved = sum(r.success for r in second_half) > sum(r.success for r in first_half)
    return 0 if improved and "Tell us which address the reset email went to" in last.prompt else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, help="where to put .alma/ (default: a temporary folder)")
    args = parser.parse_args()
    if args.dir:
        sys.exit(anyio.run(main, args.dir))
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(anyio.run(main, Path(tmp)))
