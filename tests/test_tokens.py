"""Bearer tokens bound to identities: what the config accepts, how secrets are read, and a real
`serve --http` process where each token acts only as the agents and users it names, with the
protected-resource metadata and WWW-Authenticate challenge of the MCP authorization guidance."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import anyio
import httpx
import pytest

from alma_mcp.config import parse_config
from alma_mcp.errors import ConfigError
from alma_mcp.frontends.http import bind_tokens

from serving import authorized_client, serve_http, stop

HELENA = "helena-" + secrets.token_urlsafe(32)
ALL = "all-" + secrets.token_urlsafe(32)


def settings(tmp_path: Path, tokens: list[dict]) -> object:
    config = {"alma": {"data_dir": str(tmp_path), "agents": {"helena": {}, "victor": {}}, "http": {"tokens": tokens}}}
    return parse_config(config).alma.http


def test_config_rejects_ambiguous_or_unknown_tokens(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of env"):
        settings(tmp_path, [{"name": "t", "env": "A", "file": "/x", "agents": ["helena"]}])
    with pytest.raises(ConfigError, match="exactly one of env"):
        settings(tmp_path, [{"name": "t", "agents": ["helena"]}])
    with pytest.raises(ConfigError, match="ghost"):
        settings(tmp_path, [{"name": "t", "env": "A", "agents": ["ghost"]}])
    with pytest.raises(ConfigError, match="agents"):
        settings(tmp_path, [{"name": "t", "env": "A", "agents": []}])
    with pytest.raises(ConfigError, match="its own name"):
        settings(tmp_path, [{"name": "t", "env": "A", "agents": ["*"]}, {"name": "t", "env": "B", "agents": ["*"]}])


def test_secrets_come_from_private_files_or_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "helena.token"
    path.write_text(HELENA + "\n")
    path.chmod(0o644)
    http = settings(tmp_path, [{"name": "h", "file": str(path), "agents": ["helena"], "users": ["alice"]}])
    with pytest.raises(ConfigError, match="chmod 600"):
        bind_tokens(http, None, "127.0.0.1")
    path.chmod(0o600)
    (bound,) = bind_tokens(http, None, "127.0.0.1")
    assert bound.caller.agents == {"helena"} and bound.caller.users == {"alice"}
    env = settings(tmp_path, [{"name": "v", "env": "ALMA_TEST_VICTOR", "agents": ["victor"]}])
    monkeypatch.delenv("ALMA_TEST_VICTOR", raising=False)
    with pytest.raises(ConfigError, match="ALMA_TEST_VICTOR is not set"):
        bind_tokens(env, None, "127.0.0.1")
    monkeypatch.setenv("ALMA_TEST_VICTOR", HELENA)
    with pytest.raises(ConfigError, match="same secret"):
        bind_tokens(env, HELENA, "127.0.0.1")
    legacy = bind_tokens(env, ALL, "127.0.0.1")[-1]
    assert legacy.caller.agents is None and legacy.caller.users is None  # ALMA_MCP_TOKEN: every agent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    config = root / "config.yaml"
    token_file = root / "helena.token"
    token_file.write_text(HELENA)
    token_file.chmod(0o600)
    config.write_text(
        "alma:\n"
        f"  data_dir: {root / 'data'}\n"
        "  preload_indexes: false\n"
        "  agents: {helena: {}, victor: {}}\n"
        "  http:\n"
        "    tokens:\n"
        f"      - {{name: helena, file: {token_file}, agents: [helena], users: [alice]}}\n",
        encoding="utf-8",
    )
    proc, url = serve_http(config, ALL)
    yield url
    stop(proc)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_each_token_acts_only_as_what_it_names(server, mode):
    async def calls() -> dict[str, tuple[bool, str]]:
        out = {}
        async with authorized_client(server, HELENA, mode) as client:
            for label, tool, args in [
                ("own", "alma_add_knowledge", {"agent": "helena", "domain": "forms", "fact": "Signup posts to /api/users"}),
                ("other agent", "alma_add_knowledge", {"agent": "victor", "domain": "api", "fact": "x"}),
                ("own user", "alma_add_preference", {"user_id": "alice", "category": "tone", "preference": "Short", "agent": "helena"}),
                ("other user", "alma_add_preference", {"user_id": "bob", "category": "tone", "preference": "Long", "agent": "helena"}),
                ("other user read", "alma_retrieve", {"agent": "helena", "task": "tone", "user_id": "bob"}),
            ]:
                result = await client.call_tool(tool, args)
                out[label] = (result.is_error, result.content[0].text if result.content else "")
        async with authorized_client(server, ALL, mode) as client:
            result = await client.call_tool("alma_add_knowledge", {"agent": "victor", "domain": "api", "fact": "Orders are paginated"})
            out["all-agents token"] = (result.is_error, "")
        return out

    out = anyio.run(calls)
    assert out["own"][0] is False and out["own user"][0] is False and out["all-agents token"][0] is False
    assert out["other agent"][0] and "may not act as agent 'victor'" in out["other agent"][1]
    for label in ("other user", "other user read"):
        assert out[label][0] and "user 'bob'" in out[label][1], out[label]


def test_a_guarded_server_gives_a_request_without_a_caller_nothing(alma):
    from alma_mcp.config import HttpSettings
    from alma_mcp.frontends.http import build_http_app
    from alma_mcp.frontends.server import create_server

    mcp = create_server(alma=alma)
    assert mcp.alma_caller.agents is None  # stdio and in-process: every agent
    build_http_app(mcp, HttpSettings(), "127.0.0.1", 8765, token=ALL)
    assert mcp.alma_caller.agents == frozenset() and mcp.alma_caller.users == frozenset()


def test_401_points_at_the_protected_resource_metadata(server):
    base = server.rsplit("/mcp", 1)[0]
    metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    bare = httpx.post(server, json=init, headers=headers)
    assert bare.status_code == 401
    challenge = bare.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata_url}"' in challenge
    assert "invalid_token" not in challenge
    wrong = httpx.post(server, json=init, headers={**headers, "Authorization": "Bearer " + "w" * 40})
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    metadata = httpx.get(metadata_url)
    assert metadata.status_code == 200
    assert metadata.json()["resource"] == server and metadata.json()["bearer_methods_supported"] == ["header"]
    assert httpx.get(metadata_url, headers={"Host": "evil.example"}).status_code == 421


def test_a_session_answers_only_the_token_that_opened_it(server):
    """Another token holding a session's id can neither use nor end it: both get the answer an
    unknown session gets (404), and the session goes on serving the token that opened it."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    opened = httpx.post(server, json=init, headers={**headers, "Authorization": f"Bearer {HELENA}"})
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    in_session = {**headers, "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    other = {**in_session, "Authorization": f"Bearer {ALL}"}
    assert httpx.post(server, json=listing, headers=other).status_code == 404
    assert httpx.delete(server, headers=other).status_code == 404
    own = {**in_session, "Authorization": f"Bearer {HELENA}"}
    assert httpx.post(server, json=listing, headers=own).status_code == 200
    assert httpx.delete(server, headers=own).status_code in (200, 204)


@pytest.mark.parametrize(
    "host", ['localhost:1", error="x', "localhost:1@evil.example", "127.0.0.1:80/x", "localhost:abc", ""]
)
def test_a_malformed_host_is_refused_before_anything_reads_it(server, host):
    headers = {"Accept": "application/json, text/event-stream", "Host": host}
    for response in (
        httpx.post(server, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers),
        httpx.post(server, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={**headers, "Authorization": f"Bearer {ALL}"}),
        httpx.get(server.rsplit("/mcp", 1)[0] + "/.well-known/oauth-protected-resource/mcp", headers=headers),
    ):
        assert response.status_code == 421, (host, response.status_code, response.text)
        assert "www-authenticate" not in response.headers and "evil" not in response.text


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_token_sees_only_the_agents_it_may_act_as(server, mode):
    """alma://agents, alma://config, alma://stats and alma_stats name only the token's own agents,
    and of the tokens only its own binding; the all-agents token sees them all."""

    async def read(token: str) -> dict[str, object]:
        async with authorized_client(server, token, mode) as client:
            if token == ALL:
                await client.call_tool("alma_add_knowledge", {"agent": "victor", "domain": "api", "fact": "Pages hold 50 orders"})
            agents = json.loads((await client.read_resource("alma://agents")).contents[0].text)
            config = json.loads((await client.read_resource("alma://config")).contents[0].text)
            stats = json.loads((await client.read_resource("alma://stats")).contents[0].text)
            tool = (await client.call_tool("alma_stats", {})).structured_content
            return {"agents": [a["name"] for a in agents], "config agents": sorted(config["alma"]["agents"]),
                    "tokens": [t["name"] for t in config["alma"]["http"]["tokens"]],
                    "stats": sorted(stats["agents"]), "tool": sorted(tool["agents"])}

    everything = anyio.run(read, ALL)
    assert everything == {"agents": ["helena", "victor"], "config agents": ["helena", "victor"], "tokens": ["helena"],
                          "stats": ["helena", "victor"], "tool": ["helena", "victor"]}
    assert anyio.run(read, HELENA) == {"agents": ["helena"], "config agents": ["helena"], "tokens": ["helena"],
                                       "stats": ["helena"], "tool": ["helena"]}
