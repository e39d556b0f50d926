"""The review page in a real browser: headless Chromium (the distribution's package) driven by
Playwright, against `alma-mcp ui` run as a subprocess on a store that a real stdio MCP session
filled. It clicks through browse, search, a memory's page, edit, archive and restore, checks
that hostile memory text stays text, and checks the store afterwards.

Screenshots of the main views go to the test's folder, and to $ALMA_UI_SCREENSHOTS when set
(how docs/ui-*.png are made)."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("ALMA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> & "quotes"'
STRATEGY = "Leave the field blank, submit, and assert the inline error message"
TASKS = [
    "Test the signup form validation for an empty email",
    "Test signup form validation when the email is left empty",
    "Check the signup form's validation of a missing email address",
]


def _playwright():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (or set ALMA_CHROMIUM)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install playwright (never `playwright install`: the test uses the system Chromium)")
    return sync_playwright, expect


def _env() -> dict[str, str]:
    return dict(os.environ) | {"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "PYTHONUNBUFFERED": "1"}


def _config(tmp_path: Path) -> Path:
    config = tmp_path / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(
        "alma:\n  project_id: ui-test\n  agents:\n    helena:\n      min_occurrences_for_heuristic: 3\n    victor: {}\n",
        encoding="utf-8",
    )
    return config


async def _fill(config: Path, cwd: Path) -> dict[str, str]:
    """A real stdio session teaches and records what the page will show."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "alma_mcp", "--config", str(config)], env=_env(), cwd=str(cwd))
    ids: dict[str, str] = {}
    with anyio.fail_after(180):
        async with Client(params, mode="legacy") as client:
            async def call(tool: str, args: dict) -> dict:
                result = await client.call_tool(tool, args)
                assert not result.is_error, result.content
                return result.structured_content

            ids["fact"] = (await call("alma_add_knowledge", {"agent": "helena", "domain": "form_testing",
                                                              "fact": "The signup form posts to /api/v2/users"}))["id"]
            ids["hostile"] = (await call("alma_add_knowledge", {"agent": "helena", "domain": "security", "fact": HOSTILE}))["id"]
            for task in TASKS:
                learned = await call("alma_learn", {"agent": "helena", "task": task, "outcome": "success",
                                                    "strategy_used": STRATEGY, "task_type": "form_testing"})
                ids["heuristic"] = (learned["heuristics_created"] or [ids.get("heuristic")])[0]
            for task in ("Test the payment page with an expired card", "Test the payment page with a declined card"):
                await call("alma_learn", {"agent": "helena", "task": task, "outcome": "failure",
                                          "strategy_used": "Use a real credit card", "task_type": "payments"})
            await call("alma_add_anti_pattern", {"agent": "helena", "pattern": "Sleeping a fixed time before asserting",
                                                 "why_bad": "flaky on slow CI machines", "better_alternative": "wait for the element"})
    return ids


def _start_ui(config: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), "ui", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=cwd, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        first = lines.get(timeout=120)
    except queue.Empty:
        proc.kill()
        raise AssertionError("alma-mcp ui printed no URL within 120 s: " + proc.stderr.read()) from None  # type: ignore[union-attr]
    assert first.startswith("alma-mcp review page: open http://127.0.0.1:"), first
    return proc, first.split("open ", 1)[1].strip()


def test_review_page_in_headless_chromium(tmp_path):
    sync_playwright, expect = _playwright()
    config = _config(tmp_path)
    ids = anyio.run(_fill, config, tmp_path)
    proc, url = _start_ui(config, tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1200, "height": 760},
            )
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(120_000)  # the first search waits for the model in a loaded CI machine
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A CSP violation (an inline style or script the page should not have) is logged as an error.
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

            # Browse: the learned heuristic is listed; the key left the address bar.
            page.goto(url)
            page.locator("#memories").wait_for()
            assert "#key=" not in page.url
            assert page.locator(f'#memories tr[data-id="{ids["heuristic"]}"]').count() == 1
            page.screenshot(path=str(shots / "ui-browse.png"))

            # Hostile text is shown as text, and nothing in it ran.
            page.select_option("#f-type", "knowledge")
            page.click("#browse-form button[type=submit]")
            page.locator(f'#memories tr[data-id="{ids["hostile"]}"]').wait_for()
            assert HOSTILE in page.locator(f'#memories tr[data-id="{ids["hostile"]}"] a').inner_text()
            assert page.evaluate("window.__pwned") is None
            assert page.locator("#memories img, #memories script").count() == 0

            # Search: exactly the prompt alma_retrieve would inject, and why.
            page.click("#nav-search")
            page.fill("#f-task", "Verify what the registration form does when no email is typed")
            page.click("#search-go")
            page.locator("#candidates, #error").first.wait_for()
            assert page.locator("#error").count() == 0, page.locator("#error").inner_text()
            assert STRATEGY in page.locator("#prompt").inner_text()
            assert page.locator(f'#candidates tr[data-id="{ids["heuristic"]}"] .tag.injected').count() == 1
            assert "relevance floor" in page.locator("#floors").inner_text()
            page.screenshot(path=str(shots / "ui-search.png"), full_page=True)

            # One memory: the outcomes it was learned from, its confidence over time.
            page.click(f'#candidates tr[data-id="{ids["heuristic"]}"] a.memory-link')
            page.locator("#provenance").wait_for()
            assert page.locator("#provenance tr").count() == 3
            assert page.locator("#confidence tr").count() >= 4
            page.screenshot(path=str(shots / "ui-memory.png"), full_page=True)

            # Edit the heuristic's wording.
            page.fill("#edit-strategy", "Submit the form empty and check every field's inline error")
            page.fill("#edit-reason", "clearer wording")
            page.click("#edit-save")
            page.locator('#fields td[data-field="strategy"]', has_text="check every field's inline error").wait_for()
            assert page.locator("#status").inner_text() == "saved"

            # Mark it wrong, with a reason: the page asks first, and a "no" changes nothing.
            asked: list[str] = []

            def answer(yes: bool) -> None:
                page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept() if yes else dialog.dismiss()))

            page.fill("#wrong-reason", "only true for the old signup form")
            answer(False)
            page.click("#wrong-save")
            assert asked and "Mark this memory wrong?" in asked[-1]
            assert page.locator('#fields td[data-field="harmful"]').inner_text() == "0"
            answer(True)
            page.click("#wrong-save")
            page.locator('#fields td[data-field="harmful"]', has_text="1").wait_for()

            # Archive (asked first, declined once), then restore.
            answer(False)
            page.click("#archive")
            assert "Archive this memory?" in asked[-1] and page.locator("#restore").count() == 0
            answer(True)
            page.click("#archive")
            page.locator("#restore").wait_for()
            assert page.locator("#memory-title .tag.archived").count() == 1
            page.click("#restore")
            page.locator("#archive").wait_for()

            # Learning and the audit log.
            page.click("#nav-learning")
            page.locator("#learning-rates").wait_for()
            rates = page.locator("#learning-rates").inner_text()
            assert "form_testing" in rates and "payments" in rates
            page.screenshot(path=str(shots / "ui-learning.png"), full_page=True)
            page.click("#nav-audit")
            page.locator("#audit").wait_for()
            page.select_option("#f-action", "edit")
            page.click("#audit-form button[type=submit]")
            expect(page.locator("#audit tbody tr")).to_have_count(1)
            assert "clearer wording" in page.locator("#audit tbody tr").inner_text()
            page.select_option("#f-action", "")
            page.click("#audit-form button[type=submit]")
            page.locator("#audit tbody tr", has_text="restore").wait_for()
            page.screenshot(path=str(shots / "ui-audit.png"))
            assert errors == []
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]

    # The store, read by a fresh process of its own: the edit stuck, the restore too, all audited.
    from alma_mcp.service import ALMA

    alma = ALMA.from_config(config)
    try:
        heuristic = alma.get(ids["heuristic"]).memory
        assert heuristic.strategy == "Submit the form empty and check every field's inline error"
        assert not heuristic.archived and len(heuristic.supporting_outcomes) == 3
        actions = [e.action for e in alma.audit_log(memory_id=ids["heuristic"])]
        assert actions == ["restore", "archive", "feedback", "edit"]
        assert heuristic.harmful == 1
        assert alma.get(ids["hostile"]).memory.fact == HOSTILE
    finally:
        alma.close()
    target = os.environ.get("ALMA_UI_SCREENSHOTS")
    if target:
        for shot in shots.iterdir():
            shutil.copy(shot, Path(target) / shot.name)
