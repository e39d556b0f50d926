"""The CLI commands of the review page and of the transfer formats: `alma-mcp ui`,
`alma-mcp import-from FORMAT PATH` and `alma-mcp export-to FORMAT OUT`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

DEFAULT_PORT = 8766


def redirect_page(folder: Path, url: str) -> Path:
    """A page only its owner may read (0600) that sends the browser to `url`: what `ui --open`
    hands the browser, so that the key is on no command line (other local users can read those)."""
    import html

    path = Path(folder) / "review-page.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        target = html.escape(url, quote=True)
        out.write(f'<!doctype html><meta http-equiv="refresh" content="0;url={target}"><a href="{target}">alma-mcp review page</a>\n')
    return path


def add_review_commands(
    command: Callable[..., argparse.ArgumentParser],
    service: Callable[[argparse.Namespace], Any],
    port_number: Callable[[int], Callable[[str], int]],
) -> None:
    """Add the commands with the CLI's `command(name, func, summary, examples, more)`, which gives
    each the options every command takes (--config, -v, --log-level) and a help with examples."""
    from ...interop.exporters import DEFAULT_MAX_CHARS, EXPORT_FORMATS
    from ...interop.importers import IMPORT_FORMATS

    def cmd_ui(args: argparse.Namespace) -> int:
        from .app import KEY_ENV, launch_key, serve

        key = launch_key(os.environ.get(KEY_ENV) or None, args.host)  # refuses before any work
        alma = service(args)
        alma.warm_up()

        def announce(url: str) -> None:
            print(f"alma-mcp review page: open {url}", flush=True)
            if args.open:
                import webbrowser

                webbrowser.open(redirect_page(alma.config.data_dir, url).as_uri())

        try:
            serve(alma, args.host, args.port, key, announce)
        finally:
            alma.close()
        return 0

    def cmd_import_from(args: argparse.Namespace) -> int:
        report = service(args).import_from(args.format, Path(args.path), args.agent, args.user)
        for bad in report.rejected:
            where = f"line {bad.line}: " if bad.line else ""
            print(f"alma-mcp: {args.path}: {where}rejected: {bad.error}", file=sys.stderr)
        print(report.model_dump_json(indent=2))
        return 1 if report.rejected else 0

    def cmd_export_to(args: argparse.Namespace) -> int:
        print(service(args).export_to(args.format, args.agent, Path(args.out), args.max_chars).model_dump_json(indent=2))
        return 0

    ui = command(
        "ui", cmd_ui, "open the review page: browse, search, correct and trace memories (loopback)",
        """
alma-mcp ui
alma-mcp ui --config .alma/config.yaml --port 0 --open
""",
        "Prints the address to open, with the key API calls need. Ctrl-C stops it.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; another needs ALMA_UI_KEY)")
    ui.add_argument("--port", type=port_number(0), default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    ui.add_argument("--open", action="store_true", help="also open the page in the default browser")

    load = command(
        "import-from", cmd_import_from, "import memory kept by other tools (idempotent: importing twice adds nothing)",
        """
alma-mcp import-from claude-code ./CLAUDE.md --agent helena
alma-mcp import-from memory-dir ./memories --agent helena
alma-mcp import-from mcp-memory ./memory.jsonl --agent victor --config .alma/config.yaml
alma-mcp import-from jsonl ./notes.jsonl --agent helena --user sam
""",
        "Bad lines are reported by number on stderr and the good ones imported; the exit code is then 1.",
    )
    load.add_argument("format", choices=IMPORT_FORMATS, help=(
        "claude-code: a CLAUDE.md or a folder holding CLAUDE.md / an auto-memory MEMORY.md and topic files; "
        "memory-dir: a folder written by Anthropic's memory tool; mcp-memory: the MCP memory server's JSONL; "
        "jsonl: one text (or {\"text\": ...}) per line"))
    load.add_argument("path", help="the file or folder to read")
    load.add_argument("--agent", required=True, help="the agent the memories are for")
    load.add_argument("--user", default="default", help="the user id of imported preferences (default: default)")

    dump = command(
        "export-to", cmd_export_to, "write an agent's memory in another tool's form (CLAUDE.md digest, ...)",
        """
alma-mcp export-to claude-md ./CLAUDE.md --agent helena --max-chars 4000
alma-mcp export-to memory-dir ./memories --agent helena
alma-mcp export-to jsonl ./victor.jsonl --agent victor --config .alma/config.yaml
""",
        "The file is replaced only once it is complete.",
    )
    dump.add_argument("format", choices=EXPORT_FORMATS)
    dump.add_argument("out", help="the file to write (for memory-dir: the folder)")
    dump.add_argument("--agent", required=True, help="the agent whose memory is written")
    dump.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                      help=f"claude-md / memory-dir: the digest's size limit (default {DEFAULT_MAX_CHARS}); the most valuable memories go first")
