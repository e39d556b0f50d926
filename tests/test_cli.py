"""The `alma-mcp` command as a newcomer meets it: options where they type them, a server that says
what it waits for and stops on Ctrl-C, quiet one-shot commands, a config that explains itself.

Commands run in real subprocesses with HOME pointed into the test's folder, so nothing is written
into the real home folder."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from alma_mcp.frontends.cli import build_parser

COMMANDS = [
    ["serve"],
    ["init"],
    ["config", "check"],
    ["stats"],
    ["search", "a task", "--agent", "helena"],
    ["health"],
    ["export", "--out", "x.jsonl"],
    ["import", "x.jsonl"],
    ["reindex"],
    ["sweep"],
    ["ui"],
    ["import-from", "claude-code", "CLAUDE.md", "--agent", "helena"],
    ["export-to", "claude-md", "CLAUDE.md", "--agent", "helena"],
]


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", ANONYMIZED_TELEMETRY="False", HOME=str(tmp_path / "home"))
    for name in ("ALMA_CONFIG", "ALMA_DATA_DIR", "ALMA_MCP_TOKEN"):
        env.pop(name, None)
    return env


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alma_mcp", *args],
        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "proj" / ".alma" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        yaml.safe_dump({"alma": {
            "project_id": "cli",
            "data_dir": str(tmp_path / "data"),
            "agents": {"helena": {"can_learn": ["testing"]}, "victor": {"share_with": ["helena"]}},
        }}),
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c[0] != "config" else "config-check")
def test_config_option_goes_before_or_after_the_command(command):
    parser = build_parser()
    for argv in (["--config", "c.yaml", *command], [*command, "--config", "c.yaml"]):
        args = parser.parse_args(argv)
        assert args.config == "c.yaml", argv
        assert args.func is not None
    # Given in both places, the one nearer the end wins, as with any repeated option.
    assert parser.parse_args(["--config", "a.yaml", *command, "--config", "b.yaml"]).config == "b.yaml"
    assert parser.parse_args(command).config is None


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0] if c[0] != "config" else "config-check")
def test_every_command_has_help_with_an_example(command, capsys):
    names = command[:2] if command[0] == "config" else command[:1]
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*names, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"alma-mcp {' '.join(names)}" in text, text
    assert "--config" in text


@pytest.mark.parametrize("argv", [
    ["serve", "--http", "--port", "99999"],
    ["serve", "--http", "--port", "0"],
    ["serve", "--http", "--port", "http"],
    ["ui", "--port", "65536"],
    ["ui", "--port", "-1"],
])
def test_a_port_out_of_range_is_refused_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --port:" in error and "is not a port number" in error, error


def test_the_ports_a_command_can_use_are_accepted():
    parser = build_parser()
    assert parser.parse_args(["serve", "--http", "--port", "1"]).port == 1
    assert parser.parse_args(["serve", "--http", "--port", "65535"]).port == 65535
    assert parser.parse_args(["ui", "--port", "0"]).port == 0  # a free one
    assert parser.parse_args(["ui"]).port == 8766


def test_the_docs_use_agents_the_starter_config_declares():
    """The commands in the README and docs run as written against the config `alma-mcp init` writes."""
    from alma_mcp.config import STARTER_CONFIG

    declared = set(yaml.safe_load(STARTER_CONFIG.format(project="p"))["alma"]["agents"])
    root = Path(__file__).resolve().parent.parent
    named = {
        (path.name, agent)
        for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
        for agent in re.findall(r"alma-mcp [^#`\n]*--agent[= ]+([\w-]+)", path.read_text(encoding="utf-8"))
    }
    assert named, "no --agent found: the pattern no longer matches the docs"
    assert {(name, agent) for name, agent in named if agent not in declared | {"NAME"}} == set()


def test_verbosity_defaults_to_warnings_for_one_shot_commands():
    from alma_mcp.frontends.cli import _log_level

    parser = build_parser()
    assert _log_level(parser.parse_args(["stats"])) == "WARNING"
    assert _log_level(parser.parse_args(["stats", "-v"])) == "INFO"
    assert _log_level(parser.parse_args(["-vv", "export", "--out", "x"])) == "DEBUG"
    assert _log_level(parser.parse_args(["serve"])) == "INFO"
    assert _log_level(parser.parse_args(["serve", "--log-level", "ERROR"])) == "ERROR"


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Bytes read from `fd` until `needle` appears (or the process closed it, or time ran out)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a terminal whose other end every process closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.slow
def test_serve_in_a_terminal_says_it_waits_for_a_client_and_ctrl_c_stops_it(tmp_path):
    config = write_config(tmp_path)
    master, slave = pty.openpty()  # stdin is a terminal, as when a person runs the command
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), "serve"],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path,
    )
    os.close(slave)
    try:
        said = _read_until(proc.stderr.fileno(), b"Ctrl-C", timeout=120)  # type: ignore[union-attr]
        assert b"waiting for an MCP client on stdin" in said, said.decode()
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert code == 130
    assert took < 10, f"Ctrl-C took {took:.1f} s to stop the server"


INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_client_started_server_stops_promptly_on_a_signal(tmp_path, stop):
    """A client holds the server's stdin open; a signal (Ctrl-C in the client's terminal, or the
    client's own SIGTERM) must end it without waiting for stdin to close."""
    config = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config), "serve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=tmp_path,
    )
    try:
        proc.stdin.write((json.dumps(INITIALIZE) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        answer = _read_until(proc.stdout.fileno(), b"\n", timeout=120)  # type: ignore[union-attr]
        assert b'"serverInfo"' in answer, answer
        stopped_at = time.monotonic()
        proc.send_signal(stop)
        code = proc.wait(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()  # type: ignore[union-attr]
    assert code == 128 + stop
    assert took < 10, f"{stop.name} took {took:.1f} s to stop the server"


@pytest.mark.slow
def test_one_shot_commands_are_quiet_and_report_once(tmp_path):
    config = str(write_config(tmp_path))

    # A fresh store lists the declared agents, with zeros; a one-shot command logs nothing at INFO.
    stats = run_cli(tmp_path, "--config", config, "stats")
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["agents"] == {
        name: {"heuristic": 0, "anti_pattern": 0, "knowledge": 0, "outcome": 0} for name in ("helena", "victor")
    }
    assert stats.stderr == ""

    # No progress bar where no one watches it (stderr is a pipe here): each refresh would be a line.
    backup = tmp_path / "backup.jsonl"
    export = run_cli(tmp_path, "--config", config, "export", "--out", str(backup))
    assert export.returncode == 0, export.stderr
    assert export.stderr == ""

    # A bad line is reported once on stderr (and listed in the JSON report), the exit code says so.
    with backup.open("a", encoding="utf-8") as out:
        out.write('{"memory": {"type": "heuristic"\n')
    loaded = run_cli(tmp_path, "--config", config, "import", str(backup))
    assert loaded.returncode == 1
    assert loaded.stderr.count("line 2 rejected") == 1, loaded.stderr
    assert [bad["line"] for bad in json.loads(loaded.stdout)["rejected"]] == [2]

    assert not (tmp_path / "home").exists()


@pytest.mark.slow
def test_init_config_check_and_errors_with_lines(tmp_path):
    made = run_cli(tmp_path, "init", "--project", "shop")
    assert made.returncode == 0, made.stderr
    starter = tmp_path / ".alma" / "config.yaml"
    text = starter.read_text(encoding="utf-8")
    assert text.startswith("#") and "project_id: shop" in text

    again = run_cli(tmp_path, "init", "--project", "other")  # a set-up line run twice
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert starter.read_text(encoding="utf-8") == text

    checked = run_cli(tmp_path, "config", "check")
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout
    assert "helena" in checked.stdout and "may learn: testing, form_testing, ui_testing" in checked.stdout
    assert "also reads the lessons and knowledge of: victor" in checked.stdout
    described = json.loads(run_cli(tmp_path, "config", "check", "--json").stdout)
    assert described["agents"]["victor"]["read_by"] == ["helena"]
    assert described["agents"]["victor"]["cannot_learn"] == ["frontend"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "alma:\n"
        "  agents:\n"
        "    helena:\n"
        "      min_occurrences_for_heuristic: zero\n"
        "  retrieval:\n"
        "    colour: red\n",
        encoding="utf-8",
    )
    refused = run_cli(tmp_path, "config", "check", "--config", str(bad))
    assert refused.returncode == 2
    assert "alma.agents.helena.min_occurrences_for_heuristic (line 4): Input should be a valid integer" in refused.stderr
    assert "alma.retrieval.colour (line 6): Extra inputs are not permitted" in refused.stderr

    dangling = tmp_path / "dangling.yaml"
    dangling.write_text("alma:\n  agents:\n    bob:\n      share_with: [ghost]\n", encoding="utf-8")
    refused = run_cli(tmp_path, "config", "check", "--config", str(dangling))
    assert refused.returncode == 2
    assert "alma.agents.bob (line 3): agents.bob refers to agent 'ghost'" in refused.stderr
    assert not (tmp_path / "home").exists()


def test_export_draws_its_progress_bar_on_a_terminal(tmp_path):
    """The bar goes to stderr when a person watches it, and only then (see above)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"alma": {
            "project_id": "bar", "data_dir": str(tmp_path / "data"), "allow_undeclared_agents": True,
            "embedding": {"model": "hash-64"},
        }}),
        encoding="utf-8",
    )
    from alma_mcp import ALMA
    from alma_mcp.config import load_config

    alma = ALMA(load_config(config))
    for port in (8001, 8002, 8003):
        alma.add_knowledge("victor", "ops", f"The billing service listens on port {port}")
    alma.close()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "export", "--out", str(tmp_path / "out.jsonl"), "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=cli_env(tmp_path), cwd=tmp_path,
    )
    os.close(slave)
    try:
        drawn = _read_until(master, b"3/3", timeout=120)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0
    assert json.loads(out)["count"] == 3
    assert b"export" in drawn and b"3/3" in drawn, drawn


@pytest.mark.slow
def test_a_one_shot_command_closes_its_store_so_its_writes_reach_chroma(tmp_path):
    """A one-shot command exits at once after its work (cli.entry), having closed the store it
    opened first: the writes it journaled are applied to Chroma by then, not left for the next
    process to open the store (as a plain interpreter exit left them), and its exit code is kept."""
    from alma_mcp.storage.journal import APPLIED, WRITTEN, JournalState

    config = str(write_config(tmp_path))
    memory = {
        "id": "knowledge-" + "0" * 32, "project": "cli", "agent": "helena", "type": "knowledge",
        "domain": "testing", "fact": "The staging database is rebuilt from a snapshot every night at two.",
    }
    backup = tmp_path / "in.jsonl"
    header = {"format": "alma-mcp-export", "version": 2, "project": "cli", "embedding_model": "all-MiniLM-L6-v2"}
    backup.write_text(json.dumps(header) + "\n" + json.dumps({"memory": memory}) + "\n", encoding="utf-8")

    started = time.monotonic()
    loaded = run_cli(tmp_path, "--config", config, "import", str(backup))
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["added"] == 1, loaded.stdout
    state = JournalState(tmp_path / "data" / "chroma" / "write-journal.state")
    try:
        assert state[WRITTEN] >= 1 and state[APPLIED] == state[WRITTEN], [state[i] for i in range(5)]
    finally:
        state.close()
    assert time.monotonic() - started < 60

    # The exit code of a command that fails after opening the store is still its own.
    missing = run_cli(tmp_path, "--config", config, "search", "nightly rebuild", "--agent", "nobody")
    assert missing.returncode == 2, (missing.returncode, missing.stderr)
    assert "nobody" in missing.stderr


@pytest.mark.slow
def test_the_readme_import_and_export_run_on_the_starter_config(tmp_path):
    """`init`, then import-from and export-to as the README writes them, --config after the command;
    the digest is a text file (it ends with a newline)."""
    assert run_cli(tmp_path, "init").returncode == 0
    config = tmp_path / ".alma" / "config.yaml"
    text = config.read_text(encoding="utf-8").replace("model: all-MiniLM-L6-v2", "model: hash-64")
    config.write_text(text.replace("data_dir: .alma/data", f"data_dir: {tmp_path / 'data'}"), encoding="utf-8")
    (tmp_path / "CLAUDE.md").write_text("# Testing\n\n- The login form is tested with Playwright.\n", encoding="utf-8")

    loaded = run_cli(tmp_path, "import-from", "claude-code", "./CLAUDE.md", "--agent", "helena", "--config", ".alma/config.yaml")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["added"] == 1

    out = tmp_path / "digest" / "CLAUDE.md"
    dumped = run_cli(tmp_path, "export-to", "claude-md", str(out), "--agent", "helena", "--max-chars", "4000", "--config", ".alma/config.yaml")
    assert dumped.returncode == 0, dumped.stderr
    digest = out.read_text(encoding="utf-8")
    assert "- The login form is tested with Playwright.\n" in digest and digest.endswith("\n"), digest


@pytest.mark.slow
def test_serve_http_says_it_serves_once_listening_and_warns_once(tmp_path):
    """A short token is warned about once; a port in use ends the start without a claim to serve
    on it; a server that listens says so once."""
    from serving import serve_http, stop

    config = write_config(tmp_path)
    env = dict(cli_env(tmp_path), ALMA_MCP_TOKEN="short")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(
            [sys.executable, "-m", "alma_mcp", "serve", "--http", "--port", str(port), "--config", str(config)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    assert busy.returncode == 3, busy.stderr
    assert busy.stderr.count("is 5 characters long") == 1, busy.stderr
    assert "serving streamable HTTP" not in busy.stderr and "address already in use" in busy.stderr, busy.stderr
    assert "Traceback" not in busy.stderr, busy.stderr

    proc, url = serve_http(config, "short")
    stop(proc)
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    assert log.count("is 5 characters long") == 1, log
    assert log.count(f"serving streamable HTTP on {url}") == 1, log
