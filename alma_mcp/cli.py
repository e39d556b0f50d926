"""`alma-mcp`: serve over stdio (the default) or HTTP, and inspect memory from the terminal.

In stdio mode stdout belongs to the protocol: every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import DEFAULT_CONFIG_PATH, load_config, write_starter_config
from .errors import AlmaError

if TYPE_CHECKING:
    from .retrieval import Explanation

log = logging.getLogger("alma_mcp")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("alma-mcp %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("alma_mcp").setLevel(level)
    for noisy in ("chromadb", "httpx", "sentence_transformers", "transformers", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _service(args: argparse.Namespace) -> Any:
    """The service for a one-shot command. It embeds one text or one batch and exits, so the ONNX
    copy of the model (worth it for a server's many small calls) is not prepared."""
    from .service import ALMA

    config = load_config(args.config)
    config.alma.embedding.onnx = False
    return ALMA(config)


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import create_server

    config = load_config(args.config)
    mcp = create_server(config)
    if not args.http:
        mcp.run("stdio")
        return 0

    import anyio
    import uvicorn

    from .http import build_http_app

    settings = config.alma.http
    host = args.host or settings.host
    port = args.port or settings.port
    token = os.environ.get(settings.token_env) or None
    app = build_http_app(mcp, settings, host, port, token, allow_no_auth=args.no_auth)
    log.info("serving streamable HTTP on http://%s:%d%s", host, port, settings.path)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    anyio.run(server.serve)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    write_starter_config(path, project=args.project, force=args.force)
    print(f"wrote {path}; edit the agents, then run: alma-mcp stats --config {path}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    print(json.dumps(_service(args).stats(args.agent), indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    alma = _service(args)
    result = alma.retrieve(args.task, args.agent, args.top_k, args.user, task_type=args.task_type)
    explanation = alma.explain(args.task, args.agent, args.top_k, args.user, task_type=args.task_type, n=args.explain) if args.explain else None
    if args.json:
        if explanation is None:
            print(result.model_dump_json(indent=2))
        else:
            print(json.dumps({"result": result.model_dump(mode="json"), "explanation": explanation.model_dump(mode="json")}, indent=2))
        return 0
    if result.prompt:
        print(result.prompt)
    else:
        print(f"(nothing in memory is relevant enough to inject for this task; agent {args.agent})")
    if explanation is not None:
        _print_explanation(explanation)
    return 0


def _print_explanation(e: "Explanation") -> None:
    print(
        f"\nWhy: relevance_floor {e.relevance_floor}, floor_margin {e.floor_margin}, lexical_floor "
        f"{e.lexical_floor}, preference_floor {e.preference_floor}; "
        + ("a memory cleared the floor, so the task is answered" if e.answered else "no memory cleared the floor")
    )
    if not e.candidates:
        print("(the agent has no memories it may read of these types)")
        return
    print(f"{'evidence':>8} {'similar':>7} {'cover':>5}  {'type':<14} {'id':<44} verdict")
    for c in e.candidates:
        print(f"{c.evidence:8.3f} {c.similarity:7.3f} {c.coverage:5.2f}  {c.type:<14} {c.id:<44} {c.verdict}")
        print(f"{'':36}{c.text}")


def cmd_health(args: argparse.Namespace) -> int:
    """Unlike the MCP tool (which answers at once), wait for the model and embed a probe text:
    the exit code says whether a server started with this config could serve (0) or not (1)."""
    alma = _service(args)
    try:
        alma.embedder.wait(args.timeout)
        alma.embedder.embed(["health check"])
    except Exception as exc:  # the reason is in the report below, and on stderr
        log.error("%s", exc)
    report = alma.health()
    print(json.dumps(report, indent=2))
    return 0 if report["status"] == "ok" and report["embedding_model_ready"] else 1


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not args.quiet


def cmd_export(args: argparse.Namespace) -> int:
    report = _service(args).export(args.out, with_embeddings=args.embeddings, progress=_progress_wanted(args))
    print(report.model_dump_json(indent=2))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    report = _service(args).import_memories(args.file, progress=_progress_wanted(args))
    for bad in report.rejected:
        print(f"alma-mcp: {args.file} line {bad.line} rejected: {bad.error}", file=sys.stderr)
    print(report.model_dump_json(indent=2))
    return 1 if report.rejected else 0  # the good lines are in; the exit code says some were not


def cmd_reindex(args: argparse.Namespace) -> int:
    report = _service(args).reindex(force=args.force, progress=_progress_wanted(args))
    print(report.model_dump_json(indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    print(_service(args).sweep(args.agent, dry_run=not args.apply).model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alma-mcp",
        description="A learning memory for AI agents over MCP. With no command: serve MCP over stdio.",
    )
    parser.add_argument("--version", action="version", version=f"alma-mcp {__version__}")
    parser.add_argument(
        "--config", help=f"config file (default: $ALMA_CONFIG, else {DEFAULT_CONFIG_PATH}, else built-in defaults)"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve MCP (stdio by default)")
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    serve.add_argument("--host", help="HTTP host (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default from config: 8765)")
    serve.add_argument("--no-auth", action="store_true", help="allow HTTP without a token (loopback only)")
    serve.set_defaults(func=cmd_serve)

    init = sub.add_parser("init", help="write a commented starter .alma/config.yaml")
    init.add_argument("--path", default=str(DEFAULT_CONFIG_PATH))
    init.add_argument("--project", default="my-project")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    stats = sub.add_parser("stats", help="memory counts by agent and type")
    stats.add_argument("--agent")
    stats.set_defaults(func=cmd_stats)

    search = sub.add_parser("search", help="show what would be injected for a task")
    search.add_argument("task")
    search.add_argument("--agent", required=True)
    search.add_argument("--top-k", type=int, default=None)
    search.add_argument("--user", default=None, help="include this user's preferences")
    search.add_argument("--task-type", default=None, help="leave out lessons and outcomes filed under other task types")
    search.add_argument("--json", action="store_true", help="print the full result as JSON")
    search.add_argument(
        "--explain", type=int, nargs="?", const=10, default=0, metavar="N",
        help="also show why: the floors, and each injected memory and the N (10) with the most evidence, with their verdicts",
    )
    search.set_defaults(func=cmd_search)

    health = sub.add_parser("health", help="check storage and the embedding model (exit 1 if either fails)")
    health.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model to load")
    health.set_defaults(func=cmd_health)

    export = sub.add_parser("export", help="write every memory (archived too) to a JSONL file")
    export.add_argument("--out", required=True, help="the file to write (replaced only when the export completes)")
    export.add_argument(
        "--embeddings", action="store_true", help="include the vectors (bigger file; import skips re-embedding)"
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)

    load = sub.add_parser("import", help="load an export file (idempotent: importing twice adds nothing)")
    load.add_argument("file")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(func=cmd_import)

    reindex = sub.add_parser("reindex", help="re-embed every memory with the configured embedding model")
    reindex.add_argument("--force", action="store_true", help="also collections already on the configured model")
    reindex.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex.set_defaults(func=cmd_reindex)

    sweep = sub.add_parser("sweep", help="archive decayed and over-cap memories (dry run unless --apply)")
    sweep.add_argument("--agent")
    sweep.add_argument("--apply", action="store_true", help="archive them (default: only list)")
    sweep.set_defaults(func=cmd_sweep)

    from .ui.commands import add_review_commands  # ui, import-from, export-to

    add_review_commands(sub, _service)
    return parser




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command is None:
        args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "serve"])
    try:
        return int(args.func(args) or 0)
    except AlmaError as exc:
        print(f"alma-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alma-mcp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `alma-mcp stats | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
