"""Smoke test of an installed alma-mcp: the `alma-mcp` command of this Python's environment, driven
over stdio by the SDK's client (initialize, list tools, teach a fact, alma_retrieve finds it).

CI runs it with the Python of a clean virtual environment into which the built wheel was installed
(not editable), so a module or data file missing from the wheel fails here:

    .ci/wheel/bin/python tests/smoke_stdio.py --source alma_mcp

With --source, every file of the checkout's package folder must also be in the installed package.
It is not collected by pytest (tests/test_packaging.py runs it against the checkout's install).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

EXPECTED_TOOLS = {"alma_retrieve", "alma_learn", "alma_add_knowledge", "alma_health", "alma_stats"}
FACT = "The signup form posts to /api/v2/users and shows each error under its field"


def installed_package() -> Path:
    """The installed alma_mcp folder, found without importing it from the current directory."""
    found = subprocess.run(
        [sys.executable, "-c", "import alma_mcp, os; print(os.path.dirname(alma_mcp.__file__))"],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(),
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    return Path(found.stdout.strip())


def check_files(source: Path, installed: Path) -> None:
    if installed.resolve() == source.resolve():
        raise SystemExit(f"alma_mcp is imported from the checkout ({installed}), not from an installed package")
    wanted = {
        p.relative_to(source) for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    }
    missing = sorted(str(p) for p in wanted if not (installed / p).is_file())
    if missing:
        raise SystemExit(f"the installed package lacks {len(missing)} file(s) of {source}: {missing}")
    print(f"smoke: {len(wanted)} package files installed in {installed}")


class SmokeFailed(Exception):
    pass


async def drive(command: str, workdir: Path) -> None:
    config = workdir / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "alma:\n  project_id: smoke\n  agents:\n    helena:\n      can_learn: [form_testing]\n", encoding="utf-8"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "ALMA_CONFIG", "ALMA_DATA_DIR"}
    }
    env.update(HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", HOME=str(workdir / "home"))
    params = StdioServerParameters(command=command, args=["serve", "--config", str(config)], env=env, cwd=str(workdir))
    started = time.perf_counter()
    with anyio.fail_after(300):
        async with Client(params, mode="legacy") as client:
            print(f"smoke: initialized in {time.perf_counter() - started:.1f} s")
            tools = {tool.name for tool in (await client.list_tools()).tools}
            if not EXPECTED_TOOLS <= tools:
                raise SmokeFailed(f"tools missing: {sorted(EXPECTED_TOOLS - tools)}")
            print(f"smoke: {len(tools)} tools listed")
            taught = await client.call_tool("alma_add_knowledge", {"agent": "helena", "domain": "form_testing", "fact": FACT})
            if taught.is_error:
                raise SmokeFailed(f"alma_add_knowledge failed: {taught.content}")
            got = await client.call_tool(
                "alma_retrieve", {"agent": "helena", "task": "Test the errors of the signup form that posts to /api/v2/users"}
            )
            if got.is_error:
                raise SmokeFailed(f"alma_retrieve failed: {got.content}")
            prompt = (got.structured_content or {}).get("prompt", "")
            if "/api/v2/users" not in prompt:
                raise SmokeFailed(f"alma_retrieve did not return the fact it was taught: {got.structured_content}")
            print(f"smoke: alma_retrieve returned the taught fact ({time.perf_counter() - started:.1f} s in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="the checkout's alma_mcp folder, to compare with the installed one")
    parser.add_argument(
        "--command", default=str(Path(sys.executable).parent / "alma-mcp"),
        help="the alma-mcp command to run (default: the one beside this Python)",
    )
    args = parser.parse_args()
    if args.source is not None:
        check_files(args.source, installed_package())
    with tempfile.TemporaryDirectory(prefix="alma-smoke-") as workdir:
        try:
            anyio.run(drive, args.command, Path(workdir))
        except BaseExceptionGroup as group:  # the client's task group wraps what drive raised
            failed = group.subgroup(SmokeFailed)
            if failed is None:
                raise
            raise SystemExit(f"smoke: FAILED: {failed.exceptions[0]}") from None
        except SmokeFailed as error:
            raise SystemExit(f"smoke: FAILED: {error}") from None
    print("smoke: ok")


if __name__ == "__main__":
    main()
