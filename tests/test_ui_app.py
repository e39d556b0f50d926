"""The review page's API in-process: who may call it (key, Host, Origin, JSON only), that it
answers through the service (audited corrections), and what its views compute."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from alma_mcp.errors import ConfigError
from alma_mcp.frontends.ui import views
from alma_mcp.frontends.ui.app import CSP, build_app, launch_key

PORT = 8766
BASE = f"http://127.0.0.1:{PORT}"
KEY = "k" * 43


@pytest.fixture
def client(alma):
    with TestClient(build_app(alma, KEY, "127.0.0.1", PORT), base_url=BASE) as c:
        c.headers["X-Alma-Key"] = KEY
        yield c


def test_the_page_and_its_api_carry_a_strict_content_security_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "app.js" in page.text
    assert page.headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    assert client.get("/static/app.js").headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/overview").json()["agents"] == []


def test_api_calls_need_the_key(client):
    assert client.get("/api/overview", headers={"X-Alma-Key": ""}).status_code == 401
    assert client.get("/api/overview", headers={"X-Alma-Key": "wrong"}).status_code == 401
    assert client.post("/api/search", json={"task": "x", "agent": "a"}, headers={"X-Alma-Key": "wrong"}).status_code == 401


@pytest.mark.parametrize("host", ["evil.example:8766", "127.0.0.1:9999", "attacker.localhost:8766"])
def test_a_foreign_host_header_is_refused_even_with_the_key(client, host):
    # DNS rebinding: a page on evil.example resolved to 127.0.0.1 still sends its own name.
    assert client.get("/api/overview", headers={"Host": host}).status_code == 421
    assert client.get("/", headers={"Host": host}).status_code == 421


def test_a_foreign_origin_is_refused(client, alma):
    h = alma.add_heuristic("dev", "deploying on a friday", "do not")
    response = client.post(f"/api/memory/{h.id}/archive", json={}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert not alma.get(h.id).memory.archived
    assert client.post(f"/api/memory/{h.id}/archive", json={}, headers={"Origin": BASE}).status_code == 200
    assert alma.get(h.id).memory.archived


def test_writes_must_be_json(client, alma):
    h = alma.add_heuristic("dev", "deploying on a friday", "do not")
    form = client.post(f"/api/memory/{h.id}/wrong", content="reason=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert client.post(f"/api/memory/{h.id}/wrong", content="[1]", headers={"Content-Type": "application/json"}).status_code == 400
    assert alma.get(h.id).memory.harmful == 0


def test_a_long_key_is_required_off_loopback():
    with pytest.raises(ConfigError, match="without a key: set ALMA_UI_KEY"):
        launch_key(None, "0.0.0.0")
    with pytest.raises(ConfigError, match="ALMA_UI_KEY is 1 characters long; use at least 32"):
        launch_key("a", "0.0.0.0")
    assert launch_key("k" * 32, "0.0.0.0") == "k" * 32
    assert launch_key(None, "127.0.0.1") != launch_key(None, "127.0.0.1")  # a fresh secret per launch


def test_the_hosts_the_page_answers_to(alma):
    """Loopback and the bound address with the port, a bare name on port 80 (as browsers send it),
    and alma.http.allowed_hosts (name:* for any port) with alma.http.allowed_origins."""
    from alma_mcp.frontends.ui.app import Guard, _host_names

    assert _host_names("127.0.0.1", 80, []) >= {"127.0.0.1:80", "127.0.0.1", "localhost"}
    assert "localhost" not in _host_names("127.0.0.1", 8766, [])
    assert {"review.lan:8766", "box:9"} <= _host_names("0.0.0.0", 8766, ["review.lan:*", "box:9"])
    guard = Guard(lambda *a: None, "0.0.0.0", 8766, ["review.lan:*"], ["https://review.example"])
    assert "http://review.lan:8766" in guard.origins and "https://review.example" in guard.origins


def test_bad_filters_are_refused_in_words(client, alma):
    for query, words in [
        ("/api/memories?agent=dev&limit=-1", "limit is '-1': use a whole number from 1 to 5000"),
        ("/api/memories?agent=dev&limit=0", "limit is '0'"),
        ("/api/audit?limit=abc", "limit is 'abc': use a whole number from 1 to 10000"),
        ("/api/audit?action=bogus", "action is 'bogus': use one of archive, purge, merge"),
    ]:
        answer = client.get(query)
        assert answer.status_code == 400 and words in answer.json()["error"], (query, answer.text)
    search = client.post("/api/search", json={"task": "x", "agent": "dev", "top_k": "abc"})
    assert search.status_code == 400 and "top_k is 'abc'" in search.json()["error"]
    huge = client.get("/api/memory/" + "x" * 60_000)
    assert huge.status_code == 400 and len(huge.text) < 400, huge.text[:200]


def test_corrections_go_through_the_service_and_are_audited(client, alma):
    h = alma.add_heuristic("dev", "deploying on a friday", "deploy before noon")
    other = alma.add_heuristic("dev", "rolling back a release", "use the previous image tag")
    edited = client.post(f"/api/memory/{h.id}/edit", json={"changes": {"strategy": "deploy before 11:00"}, "reason": "policy"})
    assert edited.status_code == 200, edited.text
    assert client.post(f"/api/memory/{h.id}/wrong", json={"reason": "we never deploy on fridays"}).status_code == 200
    assert client.post("/api/merge", json={"survivor": h.id, "other": other.id}).status_code == 200
    assert client.post(f"/api/memory/{h.id}/archive", json={}).status_code == 200
    assert client.post(f"/api/memory/{h.id}/restore", json={}).status_code == 200
    entries = client.get("/api/audit", params={"agent": "dev"}).json()
    assert [e["action"] for e in entries] == ["restore", "archive", "merge", "feedback", "edit"]
    assert entries[1]["call"] == "review page"  # the archive says where it was made
    page = client.get(f"/api/memory/{h.id}").json()
    assert page["memory"]["strategy"] == "deploy before 11:00" and page["memory"]["harmful"] == 1
    assert [e["action"] for e in page["audit"]] == ["restore", "archive", "feedback", "edit"]
    assert page["confidence"][-1]["source"] == "now"
    assert any(p["source"].startswith("feedback: we never deploy") for p in page["confidence"])
    # The value a correction started from is a point too: the line drops from it, not from nowhere.
    sources = [p["source"] for p in page["confidence"]]
    before = sources.index("before feedback")
    assert sources[before + 1].startswith("feedback: we never deploy")
    assert page["confidence"][before]["value"] > page["confidence"][before + 1]["value"]
    # Lessons archived and restored on one day: the learning view counts both.
    (today,) = [d for d in client.get("/api/learning", params={"agent": "dev"}).json()["days"] if d["retired"]]
    assert today["retired"] == 2 and today["restored"] == 1  # other merged in, h archived; h restored


def test_errors_say_what_to_fix(client, alma):
    h = alma.add_heuristic("dev", "deploying on a friday", "deploy before noon")
    bad = client.post(f"/api/memory/{h.id}/edit", json={"changes": {"strategy": ""}})
    assert bad.status_code == 400 and "must not be empty" in bad.json()["error"]
    missing = client.get("/api/memory/heuristic-" + "0" * 32)
    assert missing.status_code == 404
    assert client.get("/api/memory/not-an-id").status_code == 400
    assert "agent is missing" in client.get("/api/memories").json()["error"]


def test_search_shows_the_prompt_retrieve_would_inject_and_why(client, alma):
    h = alma.add_heuristic("dev", "testing the signup form", "fill the required fields first")
    alma.add_knowledge("dev", "cooking", "pasta needs salted water")
    got = client.post("/api/search", json={"task": "test the signup form", "agent": "dev"}).json()
    assert got["prompt"] == alma.retrieve("test the signup form", "dev").prompt
    assert [c["id"] for c in got["explanation"]["candidates"] if c["injected"]] == [h.id]
    assert got["explanation"]["relevance_floor"] > 0


def test_learning_view_counts_lessons_and_success_by_task_type(alma):
    for i in range(3):
        alma.learn("qa", f"test the signup form variant {i}", "success", "fill required fields first", task_type="forms")
    alma.learn("qa", "test the payment page", "failure", "use a real card", task_type="payments")
    alma.learn("qa", "test the payment page again", "partial", "use a real card", task_type="payments")
    seen = views.learning(alma, "qa")
    assert seen["outcomes"] == 5
    assert {r["task_type"]: r["success_rate"] for r in seen["by_task_type"]} == {"forms": 1.0, "payments": 0.25}
    assert seen["active"]["heuristic"] == 1 and sum(d["formed"] for d in seen["days"]) >= 1
    (heuristic,) = alma.list_memories("qa", "heuristic")
    page = views.memory_page(alma, heuristic.id)
    assert len(page["provenance"]) == 3
    assert [p["source"] for p in page["confidence"]][:3] == ["evidence after 1 outcome", "evidence after 2 outcomes", "evidence after 3 outcomes"]


def test_cli_ui_refuses_a_non_loopback_host_without_its_own_key(tmp_path, capsys, monkeypatch):
    """The serve --http token (which acts as every agent) is never the page's key."""
    from alma_mcp.frontends.cli import main

    monkeypatch.delenv("ALMA_UI_KEY", raising=False)
    monkeypatch.setenv("ALMA_MCP_TOKEN", "t" * 40)

    def served(*args, **kwargs):
        raise AssertionError("the page was served off loopback with the serve --http token as its key")

    monkeypatch.setattr("alma_mcp.frontends.ui.app.serve", served)
    config = tmp_path / "config.yaml"
    config.write_text(f"alma:\n  project_id: cli\n  data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    assert main(["--config", str(config), "ui", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to serve the review page on non-loopback host '0.0.0.0' without a key" in capsys.readouterr().err


def test_open_hands_the_browser_a_private_redirect_not_the_key(tmp_path):
    from alma_mcp.frontends.ui.commands import redirect_page

    url = "http://127.0.0.1:8766/#key=" + "s" * 43
    page = redirect_page(tmp_path / "data", url)
    assert page.stat().st_mode & 0o777 == 0o600
    assert f'content="0;url={url}"' in page.read_text() and "#key=" not in page.as_uri()
