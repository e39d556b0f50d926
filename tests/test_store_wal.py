"""Chroma's SQLite database in write-ahead-log mode (store._write_ahead_log): one fsync per commit
instead of four, as durable, and what was written is there for the next process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from helpers import build_config

from alma_mcp.embedding.embedder import HashEmbedder
from alma_mcp.service import ALMA


def journal_mode(database) -> str:
    connection = sqlite3.connect(str(database))
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()


def test_the_store_writes_through_a_write_ahead_log_and_another_process_reads_it(tmp_path):
    config = build_config(tmp_path / "data")
    alma = ALMA(config, embedder=HashEmbedder(64))
    try:
        fact = alma.add_knowledge(agent="helena", domain="ops", fact="The deploy script lives in tools/deploy.sh")
    finally:
        alma.close()
    database = tmp_path / "data" / "chroma" / "chroma.sqlite3"
    assert journal_mode(database) == "wal"
    assert (database.stat().st_mode & 0o777) == 0o600
    script = (
        "import sys; from alma_mcp.service import ALMA; from alma_mcp.embedding.embedder import HashEmbedder; "
        "from alma_mcp.config import parse_config; "
        f"a = ALMA(parse_config({{'alma': {{'data_dir': {str(tmp_path / 'data')!r}, 'allow_undeclared_agents': True}}}}), embedder=HashEmbedder(64)); "
        f"print(a.get({fact.id!r}).memory.fact); a.close()"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "The deploy script lives in tools/deploy.sh"


def test_sqlite3_never_opens_a_database_this_process_gave_to_chroma(tmp_path, monkeypatch):
    """Python's sqlite3 and Chroma's SQLite are two copies of the library in one process: a sqlite3
    connection opened after Chroma's can truncate the shared-memory file Chroma has mapped (a bus
    error). A reopened client (after a close, or another process's write) must not open one."""
    import alma_mcp.storage.store as store

    config = build_config(tmp_path / "data")
    alma = ALMA(config, embedder=HashEmbedder(64))
    try:
        alma.add_knowledge(agent="helena", domain="ops", fact="The deploy script lives in tools/deploy.sh")
        alma.close()
        opened: list[str] = []
        real_connect = sqlite3.connect

        def connect(database, *args, **kwargs):
            opened.append(str(database))
            return real_connect(database, *args, **kwargs)

        monkeypatch.setattr(sqlite3, "connect", connect)
        assert alma.stats("helena")["total"] == 1  # opens Chroma's client again
        assert opened == [], "sqlite3 opened a database Chroma has had open in this process"
    finally:
        alma.close()
    database = (tmp_path / "data" / "chroma" / "chroma.sqlite3").resolve()
    assert database in store._opened_by_chroma
    assert store._in_wal_mode(database)
