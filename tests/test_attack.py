"""The attack suite: every tool, resource and prompt driven as a wrong agent, a wrong user and an
anonymous caller, in process, over HTTP (a real server with a token bound to the attacker) and
once over stdio. Whatever each call answers, none of the victims' words may appear in it, and
the store and the audit log must be byte for byte what they were.

`attacks()` has cases for every tool, resource and prompt by name; a test fails when the server
lists one it has no case for, so a new tool cannot ship without being attacked here.

The victims: agent alice (shares with nobody; a heuristic, a fact, an outcome, an archived
anti-pattern) and user carol (a preference). The attacker: agent mallory, user mallory-user.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

from alma_mcp.config import load_config
from alma_mcp.scope import Caller
from alma_mcp.frontends.server import create_server
from alma_mcp.service import ALMA
from alma_mcp.storage.audit import audit_file

from serving import authorized_client, serve_http, stop

SECRETS = {
    "heuristic": "ALICE-HEUR-7f3a",
    "knowledge": "ALICE-FACT-hunter2",
    "outcome": "ALICE-OUTCOME-9b1c",
    "anti_pattern": "ALICE-ANTI-4d2e",
    "preference": "CAROL-PREF-8c5f",
}
TASK = "Rotate the staging database credentials without downtime"
ATTACKER = Caller(frozenset({"mallory"}), frozenset({"mallory-user"}), "attacker")
ANONYMOUS = Caller(frozenset(), frozenset(), "anonymous")
ATTACKER_TOKEN = "mallory-token-" + "m" * 40
OWNER_TOKEN = "owner-token-" + "o" * 40

CONFIG = """\
alma:
  project_id: attack
  data_dir: {data}
  preload_indexes: false
  agents:
    alice: {{}}
    mallory: {{cannot_learn: [secrets]}}
  http:
    tokens:
      - {{name: mallory, env: ATTACK_MALLORY_TOKEN, agents: [mallory], users: [mallory-user]}}
      - {{name: owner, env: ATTACK_OWNER_TOKEN, agents: ["*"], users: ["*"]}}
"""


def write_config(root: Path) -> Path:
    path = root / ".alma" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(CONFIG.format(data=root / "data"), encoding="utf-8")
    return path


def seed(alma: ALMA) -> dict[str, str]:
    """The victims' memories; their ids by type."""
    ids = {
        "heuristic": alma.add_heuristic("alice", f"{TASK} ({SECRETS['heuristic']})", "Use dual credentials").id,
        "knowledge": alma.add_knowledge("alice", "credentials", f"The staging password is {SECRETS['knowledge']}").id,
        "outcome": alma.learn("alice", f"{TASK} {SECRETS['outcome']}", "success", "Dual credentials").outcome_id,
        "preference": alma.add_preference("carol", "style", f"Answer tersely {SECRETS['preference']}").id,
    }
    anti = alma.add_anti_pattern("alice", f"Rotate in place {SECRETS['anti_pattern']}", "It drops connections")
    alma.forget([anti.id], agent="alice", dry_run=False)
    ids["anti_pattern"] = anti.id
    return ids


def snapshot(alma: ALMA) -> tuple[list[str], bytes]:
    """Every memory (archived too) and the audit log, to compare before and after."""
    memories = []
    memories += [m.model_dump_json() for m in alma.memories(include_archived=True)]
    log = audit_file(alma.config.data_dir, alma.config.project)
    audit = log.read_bytes() if log.exists() else b""
    return sorted(memories), audit


def attacks(ids: dict[str, str]) -> dict[str, list[tuple[str, dict[str, Any] | str]]]:
    """Each tool, resource (by URI or template) and prompt, with the calls that try to reach
    alice's memories or carol's preferences from mallory's side."""
    h, k, o, a, p = (ids[t] for t in ("heuristic", "knowledge", "outcome", "anti_pattern", "preference"))
    learn = {"task": TASK, "outcome": "success", "strategy_used": "Dual credentials"}
    task = quote(TASK)
    return {
        "alma_retrieve": [
            ("tool", {"task": TASK, "agent": "alice"}),
            ("tool", {"task": TASK, "agent": "mallory", "user_id": "carol"}),
            ("tool", {"task": TASK}),
        ],
        "alma_explain": [
            ("tool", {"task": TASK, "agent": "alice", "n": 100}),
            ("tool", {"task": TASK, "agent": "mallory", "user_id": "carol", "n": 100}),
        ],
        "alma_learn": [
            ("tool", {**learn, "agent": "alice"}),
            ("tool", {**learn, "agent": "mallory", "user_id": "carol"}),
            ("tool", {**learn, "agent": "mallory", "task_type": "secrets\n"}),
            ("tool", {**learn, "agent": "mallory", "task_type": "secrets "}),
        ],
        "alma_add_heuristic": [("tool", {"agent": "alice", "condition": "always", "strategy": "leak"})],
        "alma_add_anti_pattern": [("tool", {"agent": "alice", "pattern": "x", "why_bad": "y"})],
        "alma_add_knowledge": [
            ("tool", {"agent": "alice", "domain": "credentials", "fact": "overwritten"}),
            ("tool", {"agent": "mallory", "domain": "Secrets ", "fact": "smuggled"}),
        ],
        "alma_add_preference": [
            ("tool", {"user_id": "carol", "category": "style", "preference": "be verbose", "agent": "mallory"}),
            ("tool", {"user_id": "mallory-user", "category": "style", "preference": "x", "agent": "alice"}),
            ("tool", {"user_id": "carol", "category": "style", "preference": "be verbose"}),
        ],
        "alma_feedback": [
            ("tool", {"memory_id": h, "signal": "harmful", "agent": "mallory"}),
            ("tool", {"memory_id": p, "signal": "harmful", "agent": "mallory"}),
            ("tool", {"memory_id": h, "signal": "harmful", "agent": "alice"}),
            ("tool", {"memory_id": h, "signal": "harmful"}),
        ],
        "alma_forget": [
            ("tool", {"agent": "mallory", "memory_ids": [k]}),
            ("tool", {"agent": "mallory", "memory_ids": [k, p, o], "dry_run": False, "purge": True}),
            ("tool", {"agent": "alice", "older_than_days": 0, "dry_run": False}),
            ("tool", {"memory_ids": [k], "dry_run": False}),
        ],
        "alma_restore": [
            ("tool", {"agent": "mallory", "memory_ids": [a]}),
            ("tool", {"agent": "alice", "memory_ids": [a]}),
            ("tool", {"memory_ids": [a]}),
        ],
        "alma_consolidate": [
            ("tool", {"agent": "alice", "dry_run": False}),
            ("tool", {"agent": "mallory", "memory_type": "preference"}),
        ],
        "alma_sweep": [("tool", {"agent": "alice"}), ("tool", {})],
        "alma_stats": [("tool", {"agent": "alice"}), ("tool", {})],
        "alma_health": [("tool", {})],
        "alma://agents": [("resource", "alma://agents")],
        "alma://config": [("resource", "alma://config")],
        "alma://stats{?agent}": [("resource", "alma://stats"), ("resource", "alma://stats?agent=alice")],
        "alma://audit{?agent,limit}": [
            ("resource", "alma://audit"),
            ("resource", "alma://audit?agent=alice"),
            ("resource", "alma://audit?agent=mallory&limit=10000"),
        ],
        "alma://audit/{memory_id}{?agent}": [
            ("resource", f"alma://audit/{a}"),
            ("resource", f"alma://audit/{a}?agent=mallory"),
            ("resource", f"alma://audit/{a}?agent=alice"),
        ],
        "alma://agents/{agent}/memories{?task,top_k,user_id,task_type}": [
            ("resource", "alma://agents/alice/memories"),
            ("resource", f"alma://agents/alice/memories?task={task}"),
            ("resource", f"alma://agents/mallory/memories?task={task}&user_id=carol"),
            ("resource", "alma://agents/mallory/memories?top_k=50"),
        ],
        "alma://agents/{agent}/prompt{?task,top_k,user_id,task_type}": [
            ("resource", f"alma://agents/alice/prompt?task={task}"),
            ("resource", f"alma://agents/mallory/prompt?task={task}&user_id=carol"),
        ],
        "alma://agents/{agent}/{memory_type}{?user_id}": [
            ("resource", "alma://agents/alice/knowledge"),
            ("resource", "alma://agents/mallory/knowledge"),
            ("resource", "alma://agents/mallory/outcome"),
            ("resource", "alma://agents/mallory/preference"),
            ("resource", "alma://agents/mallory/preference?user_id=carol"),
        ],
        "alma://memories/{memory_id}{?agent}": [
            ("resource", f"alma://memories/{k}"),
            ("resource", f"alma://memories/{k}?agent=mallory"),
            ("resource", f"alma://memories/{o}?agent=mallory"),
            ("resource", f"alma://memories/{p}?agent=mallory"),
            ("resource", f"alma://memories/{h}?agent=alice"),
        ],
        "alma_task": [
            ("prompt", {"agent": "alice", "task": TASK}),
            ("prompt", {"agent": "mallory", "task": TASK, "user_id": "carol"}),
        ],
        "alma_reflect": [("prompt", {"agent": "alice", "task": TASK, "outcome": "success"})],
    }


async def listed(client: Client) -> set[str]:
    tools = {t.name for t in (await client.list_tools()).tools}
    resources = {str(r.uri) for r in (await client.list_resources()).resources}
    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    return tools | resources | templates | prompts


async def answer(client: Client, name: str, kind: str, call: dict[str, Any] | str) -> str:
    """Whatever the server says to one call, as text: the result or the error."""
    try:
        if kind == "tool":
            result = await client.call_tool(name, call)  # type: ignore[arg-type]
            return json.dumps([c.model_dump(mode="json") for c in result.content]) + json.dumps(result.structured_content)
        if kind == "resource":
            result = await client.read_resource(call)  # type: ignore[arg-type]
            return json.dumps([c.model_dump(mode="json") for c in result.contents])
        result = await client.get_prompt(name, call)  # type: ignore[arg-type]
        return json.dumps(result.model_dump(mode="json"))
    except Exception as exc:  # refusals come back as errors: their message must not leak either
        return f"{type(exc).__name__}: {exc}"


async def run_attacks(client: Client, ids: dict[str, str]) -> dict[str, str]:
    cases = attacks(ids)
    missing = await listed(client) - set(cases)
    assert not missing, f"no attack case for {sorted(missing)}: add them to attacks()"
    answers = {}
    for name, calls in cases.items():
        for number, (kind, call) in enumerate(calls):
            answers[f"{name}#{number} {call}"] = await answer(client, name, kind, call)
    return answers


def assert_nothing_leaked(answers: dict[str, str]) -> None:
    leaks = {case: [s for s in SECRETS.values() if s in text] for case, text in answers.items()}
    leaks = {case: found for case, found in leaks.items() if found}
    assert not leaks, f"victims' words in the answers: {leaks}"


@pytest.mark.parametrize("who", [ATTACKER, ANONYMOUS], ids=["wrong-agent-and-user", "anonymous"])
async def test_in_process_attacks_leak_and_change_nothing(make_alma, who):
    alma = make_alma(agents={"alice": {}, "mallory": {"cannot_learn": ["secrets"]}}, allow_undeclared_agents=False)
    ids = seed(alma)
    before = snapshot(alma)
    async with Client(create_server(alma=alma, caller=who), mode="legacy") as client:
        answers = await run_attacks(client, ids)
    assert_nothing_leaked(answers)
    after = snapshot(alma)
    assert after[1] == before[1], "the audit log changed"
    assert after[0] == before[0], "a memory changed"


async def test_the_owner_still_reaches_everything(make_alma):
    """The control: the same calls as the caller that owns every agent and user do reach the
    victims' memories, so the attack tests above can fail."""
    alma = make_alma(agents={"alice": {}, "mallory": {}}, allow_undeclared_agents=False)
    ids = seed(alma)
    async with Client(create_server(alma=alma), mode="legacy") as client:
        fact = await client.read_resource(f"alma://memories/{ids['knowledge']}?agent=alice")
        assert SECRETS["knowledge"] in fact.contents[0].text
        prefs = await client.read_resource("alma://agents/alice/preference?user_id=carol")
        assert SECRETS["preference"] in prefs.contents[0].text
        audit = await client.read_resource("alma://audit?agent=alice")
        assert SECRETS["anti_pattern"] in audit.contents[0].text


def test_http_attacks_leak_and_change_nothing(tmp_path, real_embedder):
    config = write_config(tmp_path)
    alma = ALMA(load_config(config), embedder=real_embedder)
    ids = seed(alma)
    before = snapshot(alma)
    alma.close()
    os.environ["ATTACK_MALLORY_TOKEN"] = ATTACKER_TOKEN
    os.environ["ATTACK_OWNER_TOKEN"] = OWNER_TOKEN
    try:
        proc, url = serve_http(config, None)
    finally:
        del os.environ["ATTACK_MALLORY_TOKEN"], os.environ["ATTACK_OWNER_TOKEN"]
    try:

        async def attack() -> tuple[dict[str, str], str]:
            async with authorized_client(url, ATTACKER_TOKEN) as client:
                answers = await run_attacks(client, ids)
            async with authorized_client(url, OWNER_TOKEN) as client:  # the control
                owned = (await client.read_resource(f"alma://memories/{ids['knowledge']}?agent=alice")).contents[0].text
            return answers, owned

        answers, owned = anyio.run(attack)
        assert_nothing_leaked(answers)
        assert SECRETS["knowledge"] in owned
        # Anonymous: no token, or a token of the right shape that is not one, gets nothing at all.
        call = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": f"alma://memories/{ids['knowledge']}"}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        for auth in ({}, {"Authorization": "Bearer " + ATTACKER_TOKEN[:-1] + "x"}):
            response = httpx.post(url, json=call, headers={**headers, **auth})
            assert response.status_code == 401 and SECRETS["knowledge"] not in response.text
    finally:
        stop(proc)
    alma = ALMA(load_config(config), embedder=real_embedder)
    try:
        assert snapshot(alma) == before
    finally:
        alma.close()


@pytest.mark.slow
def test_stdio_serves_every_agent_but_ids_stay_in_scope(tmp_path, real_embedder):
    """Over stdio the caller may name any agent of the config, and still an agent reaches only
    its own scope by id: mallory neither reads nor forgets alice's fact."""
    config = write_config(tmp_path)
    alma = ALMA(load_config(config), embedder=real_embedder)
    ids = seed(alma)
    before = snapshot(alma)
    alma.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTACK_")}
    env.update({"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"})
    params = StdioServerParameters(command=sys.executable, args=["-m", "alma_mcp", "--config", str(config)], env=env)

    async def attack() -> dict[str, str]:
        async with Client(params, mode="legacy") as client:
            return {
                "read": await answer(client, "", "resource", f"alma://memories/{ids['knowledge']}?agent=mallory"),
                "forget": await answer(
                    client, "alma_forget", "tool", {"agent": "mallory", "memory_ids": [ids["knowledge"]], "dry_run": False}
                ),
                "own": await answer(client, "", "resource", f"alma://memories/{ids['knowledge']}?agent=alice"),
            }

    answers = anyio.run(attack)
    assert "no memory with id" in answers["read"] and "no memory with id" in answers["forget"]
    assert SECRETS["knowledge"] in answers.pop("own")
    assert_nothing_leaked(answers)
    alma = ALMA(load_config(config), embedder=real_embedder)
    try:
        assert snapshot(alma) == before
    finally:
        alma.close()
