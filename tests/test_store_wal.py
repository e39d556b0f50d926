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
