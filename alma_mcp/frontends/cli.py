"""`alma-mcp`: serve over stdio (the default) or HTTP, and inspect memory from the terminal.

In stdio mode stdout belongs to the protocol: every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..errors import AlmaError

if TYPE_CHECKING:
    from ..ranking.explain import Explanation

log = logging.getLogger("alma_mcp")

# config.DEFAULT_CONFIG_PATH, for the help texts: importing config (pydantic, yaml) takes a few
# hundred milliseconds that a stdio server spends better answering `initialize` (test_handshake
# checks that the two agree).
DEFAULT_CONFIG_PATH = Path(".alma") / "config.yaml"


def load_config(path: str | None) -> Any:
    from ..config import load_config as load

    return load(path)

# After Ctrl-C or SIGTERM, the time a server gets to finish what it is doing before it exits anyway:
# the SDK reads stdin in a worker thread that no cancellation can interrupt.
STOP_GRACE_SECONDS = 2.0
STOP_DRAIN_SECONDS = 10.0
"""A stdio server serving requests when a stop signal comes ends its input instead (as a client that
closes stdin does): it answers the requests it has read, then exits; after this long it exits anyway.
Interrupting them instead would leave writes stored and never answered, which a client then retries."""


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("alma-mcp %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("alma_mcp").setLevel(level)
    for noisy in ("chromadb", "httpx", "sentence_transformers", "transformers", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _own_process() -> None:
    """The settings of the whole process, which the library leaves to its host and this command,
    the host, makes (before numpy or the model is imported; a user's own values stand)."""
    # The model runs in numpy (embedding/bert.py) on small matrices. With OpenBLAS's default of one
    # thread per core, its worker spins while it waits: on a busy machine a bulk embedding that
    # needs 1.6 s of CPU on one thread took over 100 s of CPU on two.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _log_level(args: argparse.Namespace) -> str:
    """--log-level if given; else -v (INFO) or -vv (DEBUG); else INFO for a server, whose log is what
    a client shows, and WARNING for a one-shot command, whose output is its answer."""
    if args.log_level:
        return str(args.log_level)
    if args.verbose >= 2:
        return "DEBUG"
    if args.verbose == 1 or args.command == "serve":
        return "INFO"
    return "WARNING"


def _service(args: argparse.Namespace) -> Any:
    """The service for a one-shot command. It embeds one text or one batch and exits, so the ONNX
    copy of the model (worth it for a server's many small calls) is not prepared."""
    from ..service import ALMA

    config = load_config(args.config)
    config.alma.embedding.onnx = False
    alma = ALMA(config)
    _opened.append(alma)
    return alma


_opened: list[Any] = []
"""The services one-shot commands opened (`_service`), closed by `entry` before it exits."""


_stopped_by: int | None = None  # the exit code a stop signal asked for (130 or 143)
_stop_handlers_installed = threading.Event()
_end_input: Callable[[], None] | None = None  # a running stdio server's EarlyStdio.end_input


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM end a server promptly, with 130 / 143.

    The first signal unwinds the event loop as usual; a daemon thread then exits the process after
    STOP_GRACE_SECONDS in case the unwinding waits on the thread blocked reading stdin. A second
    signal exits at once."""
    if _stop_handlers_installed.is_set():
        return
    _stop_handlers_installed.set()
    stopping = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        global _stopped_by
        code = 128 + signum
        if stopping.is_set():
            os._exit(code)
        stopping.set()
        _stopped_by = code
        print(f"alma-mcp: stopping ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        end_input = _end_input
        grace = STOP_DRAIN_SECONDS if end_input is not None else STOP_GRACE_SECONDS

        def exit_after_grace() -> None:
            time.sleep(grace)  # a clean exit before then ends this daemon thread with the process
            sys.stderr.flush()
            os._exit(code)

        threading.Thread(target=exit_after_grace, name="alma-stop", daemon=True).start()
        if end_input is not None:
            # Off this handler: it takes a lock the reader thread holds for a moment.
            threading.Thread(target=end_input, name="alma-stop-input", daemon=True).start()
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _serves_stdio(argv: list[str]) -> bool:
    """Whether `argv` asks for an MCP server over stdio (no command, or `serve` without --http),
    judged before the parser is built: building it imports the exporters and importers, and a
    client is waiting for its `initialize` to be answered. Anything unusual counts as no."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("--config", "--log-level"):
            i += 2
        elif token.startswith(("--config=", "--log-level=")) or token == "--verbose" or (token.startswith("-v") and set(token[1:]) == {"v"}):
            i += 1
        elif token.startswith("-"):
            return False
        else:
            break
    if i < len(argv) and argv[i] != "serve":
        return False
    return not any(t.startswith("--h") or t == "-h" for t in argv[i + 1 :])


def cmd_serve(args: argparse.Namespace) -> int:
    early = getattr(args, "early_stdio", None)
    config = load_config(args.config)
    from ..embedding.embedder import own_process

    own_process()  # a server: its many small calls may run on one torch thread
    if args.http:
        return _serve_http(args, config)

    # The model, Chroma and the search indexes start loading on their threads now, while this one
    # imports the MCP SDK (about a second): the part of their work that runs outside the GIL (reading
    # the weights and the database, building the ONNX Runtime session) overlaps the import instead
    # of following it. The lifespan's warm_up then finds them under way.
    from ..service import ALMA

    service = ALMA(config)
    service.warm_up()
    if early is not None:
        from .handshake import retrieve_answerer

        # The first retrieval is answered now if saved index snapshots can answer it: the SDK's
        # import would otherwise take the CPU first.
        early.answer_early(retrieve_answerer(service))
    from .server import create_server

    mcp = create_server(config, alma=service)
    if sys.stdin.isatty():
        print(
            "alma-mcp: serving MCP over stdio: waiting for an MCP client on stdin.\n"
            "  A client (Claude Desktop, Claude Code, the MCP Inspector) starts this command itself; "
            "see README 'Connect a client'.\n"
            "  Press Ctrl-C to stop.",
            file=sys.stderr,
            flush=True,
        )
    _stop_on_signals()
    if early is not None:
        global _end_input
        _end_input = early.end_input  # a stop signal now ends the input: what was read is answered
        try:
            early.run(mcp)
        finally:
            _end_input = None
        return _stopped_by or 0
    mcp.run("stdio")
    return 0


def _serve_http(args: argparse.Namespace, config: Any) -> int:
    import anyio
    import uvicorn

    from .http import build_http_app, check_token
    from .server import create_server

    settings = config.alma.http
    host = args.host or settings.host
    port = args.port or settings.port
    token = os.environ.get(settings.token_env) or None
    tokens = check_token(settings, host, token, allow_no_auth=args.no_auth)  # before the server opens (and creates) the store
    mcp = create_server(config)
    app = build_http_app(mcp, settings, host, port, token, allow_no_auth=args.no_auth, tokens=tokens)
    url = f"http://{host}:{port}{settings.path}"

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            # Says it serves once the app has started and the port is bound: a port in use ends
            # the startup first (uvicorn logs why and exits 3).
            await super().startup(sockets)
            if self.started:
                log.info("serving streamable HTTP on %s", url)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    anyio.run(server.serve)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        # Set-up lines re-run `init`; an existing config is the user's and stays as it is.
        print(f"{path} already exists; left as it is (--force overwrites it). Check it with: alma-mcp config check --config {path}")
        return 0
    from ..config import write_starter_config

    write_starter_config(path, project=args.project, force=args.force)
    print(f"wrote {path}; edit the agents, then check it with: alma-mcp config check --config {path}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from .configcheck import describe

    config = load_config(args.config)
    if args.json:
        print(json.dumps(describe(config), indent=2))
        return 0
    print(_format_description(describe(config)))
    return 0


def _format_description(report: dict[str, Any]) -> str:
    lines = [
        f"config {report['source'] or '(none: built-in defaults)'} is valid",
        *(f"  to change: {notice}" for notice in report["notices"]),
        f"project {report['project']}; storage {report['storage']}"
        + (f", in {report['data_dir']}" if report["data_dir"] else ""),
    ]
    if report["allow_undeclared_agents"]:
        lines.append("agents not declared below may read and learn anything (allow_undeclared_agents: true)")
    if not report["agents"]:
        lines.append("no agents declared")
    for name, agent in report["agents"].items():
        lines.append(f"\n{name}" + (f" ({agent['description']})" if agent["description"] else ""))
        lines.append(f"  may learn: {', '.join(agent['can_learn']) or 'anything'}")
        if agent["cannot_learn"]:
            lines.append(f"  never learns: {', '.join(agent['cannot_learn'])}")
        others = [a for a in agent["reads"] if a != name]
        lines.append(f"  also reads the lessons and knowledge of: {', '.join(others)}" if others else "  reads only its own memories")
        if agent["read_by"]:
            lines.append(f"  its lessons and knowledge are read by: {', '.join(agent['read_by'])}")
        lines.append(f"  a heuristic after {agent['min_occurrences_for_heuristic']} successes")
        if agent["retrieval_override"]:
            lines.append("  retrieval: its own settings (agents." + name + ".retrieval)")
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    print(json.dumps(_service(args).stats(args.agent), indent=2))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    alma = _service(args)
    start = getattr(alma.embedder, "start", None)
    if start is not None:
        start()  # the model loads on its thread while the store (Chroma) is imported on this one
    result = alma.retrieve(args.task, args.agent, args.top_k, args.user, task_type=args.task_type)
    explanation = alma.explain(args.task, args.agent, args.top_k, args.user, task_type=args.task_type, n=args.explain) if args.explain else None
    if "chromadb" in sys.modules:  # the saved index snapshots were missing or stale: the next search uses fresh ones
        try:
            alma.save_snapshots(args.agent)
        except AlmaError as exc:
            log.warning("could not save the index snapshots: %s", exc)
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
        f"{e.lexical_floor}, preference_floor {e.preference_floor}, weak_floor {e.weak_floor}, weak_span "
        f"{e.weak_span}; crowding {e.crowding} taken off every evidence; the best stands {e.runner_up_gap} above "
        f"the runner-up (standout {e.standout}); "
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
    except Exception as exc:  # noqa: BLE001 - the reason is in the report below, and on stderr
        log.error("%s", exc)
    report = alma.health()
    print(json.dumps(report, indent=2))
    return 0 if report["status"] == "ok" and report["embedding_model_ready"] else 1


def _progress_wanted(args: argparse.Namespace) -> bool:
    """A bar only where someone watches it: written to a file or a CI log, each refresh is a line."""
    return not args.quiet and sys.stderr.isatty()


def cmd_export(args: argparse.Namespace) -> int:
    report = _service(args).export(args.out, with_embeddings=args.embeddings, progress=_progress_wanted(args))
    print(report.model_dump_json(indent=2))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    # Each rejected line is logged once on stderr as it is met (with its number and reason), and
    # listed in the report; the exit code says some were not imported.
    report = _service(args).import_memories(args.file, progress=_progress_wanted(args))
    print(report.model_dump_json(indent=2))
    return 1 if report.rejected else 0


def cmd_reindex(args: argparse.Namespace) -> int:
    report = _service(args).reindex(force=args.force, progress=_progress_wanted(args))
    print(report.model_dump_json(indent=2))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    print(_service(args).sweep(args.agent, dry_run=not args.apply).model_dump_json(indent=2))
    return 0


class _Help(argparse.RawDescriptionHelpFormatter):
    pass


def port_number(lowest: int = 1) -> Callable[[str], int]:
    """An argparse type: a TCP port from `lowest` (0 where the system may pick one) to 65535."""

    def parse(text: str) -> int:
        try:
            port = int(text)
        except ValueError:
            port = -1
        if not lowest <= port <= 65535:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number: use {lowest}-65535")
        return port

    return parse


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. Under a command they default to
    SUPPRESS so that a value given before the command is not reset by the command's parser."""
    default: Any = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=default,
        metavar="PATH",
        help=f"config file (default: $ALMA_CONFIG, else {DEFAULT_CONFIG_PATH}, else built-in defaults)",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0,
        help="more log lines on stderr: -v progress information, -vv debugging",
    )
    common.add_argument(
        "--log-level", default=default, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: INFO for serve, WARNING for other commands)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="alma-mcp",
        parents=[_common_options(suppress=False)],
        formatter_class=_Help,
        description="A learning memory for AI agents over MCP. With no command: serve MCP over stdio.",
        epilog=(
            "examples:\n"
            "  alma-mcp init                                  # write a commented .alma/config.yaml\n"
            "  alma-mcp config check                          # what each agent may learn and read\n"
            "  alma-mcp serve --config .alma/config.yaml      # what an MCP client runs\n"
            '  alma-mcp search "Test the login form" --agent helena --explain\n'
            "\n"
            "Every command takes --config, before or after its name; `alma-mcp COMMAND --help` for its options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"alma-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], summary: str, examples: str, more: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary[0].upper() + summary[1:] + "." + (f"\n\n{more}" if more else ""),
            epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
            formatter_class=_Help,
        )
        p.set_defaults(func=func)
        return p

    serve = command(
        "serve", cmd_serve, "serve MCP (stdio by default; streamable HTTP with --http)",
        """
alma-mcp serve --config /path/to/project/.alma/config.yaml
ALMA_MCP_TOKEN=$(openssl rand -hex 32) alma-mcp serve --http --port 8765
""",
        "Over stdio the server waits for an MCP client on stdin: clients start it themselves.\n"
        "Ctrl-C or SIGTERM stops it.",
    )
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    serve.add_argument("--host", help="HTTP host (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=port_number(), help="HTTP port, 1-65535 (default from config: 8765)")
    serve.add_argument("--no-auth", action="store_true", help="allow HTTP without a token (loopback only)")

    init = command(
        "init", cmd_init, "write a commented starter config (asks nothing)",
        """
alma-mcp init
alma-mcp init --project shop --path .alma/config.yaml
""",
        "An existing file is left as it is unless --force is given.",
    )
    init.add_argument("--path", default=str(DEFAULT_CONFIG_PATH), help=f"where to write it (default: {DEFAULT_CONFIG_PATH})")
    init.add_argument("--project", default="my-project", help="the project_id memories are scoped by")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    config = command(
        "config", cmd_config_check, "check a config file",
        """
alma-mcp config check
alma-mcp config check --config .alma/config.yaml --json
""",
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser(
        "check",
        parents=[common],
        help="validate it and print what each agent may learn and read",
        description="Validate the config and print what each agent may learn and whose lessons it reads.\n"
        "An invalid file exits 2 with each error's field and line.",
        epilog="examples:\n  alma-mcp config check\n  alma-mcp config check --config .alma/config.yaml --json",
        formatter_class=_Help,
    )
    check.add_argument("--json", action="store_true", help="print the description as JSON")
    check.set_defaults(func=cmd_config_check)

    stats = command("stats", cmd_stats, "memory counts by agent and type", "alma-mcp stats\nalma-mcp stats --agent helena")
    stats.add_argument("--agent", help="only this agent")

    search = command(
        "search", cmd_search, "show what would be injected for a task",
        """
alma-mcp search "Test the login form" --agent helena
alma-mcp search "Test the login form" --agent helena --explain 20
alma-mcp search "Fix the checkout bug" --agent victor --user ana --json
""",
    )
    search.add_argument("task", help="the task, in plain words")
    search.add_argument("--agent", required=True, help="the agent that would retrieve")
    search.add_argument("--top-k", type=int, default=None, help="memories per type (default from config)")
    search.add_argument("--user", default=None, help="include this user's preferences")
    search.add_argument("--task-type", default=None, help="leave out lessons and outcomes filed under other task types")
    search.add_argument("--json", action="store_true", help="print the full result as JSON")
    search.add_argument(
        "--explain", type=int, nargs="?", const=10, default=0, metavar="N",
        help="also show why: the floors, and each injected memory and the N (10) with the most evidence, with their verdicts",
    )

    health = command(
        "health", cmd_health, "check storage and the embedding model (exit 1 if either fails)",
        "alma-mcp health\nalma-mcp health --timeout 60",
    )
    health.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model to load")

    export = command(
        "export", cmd_export, "write every memory (archived too) to a JSONL file",
        "alma-mcp export --out backup.jsonl\nalma-mcp export --out backup.jsonl --embeddings",
    )
    export.add_argument("--out", required=True, help="the file to write (replaced only when the export completes)")
    export.add_argument(
        "--embeddings", action="store_true", help="include the vectors (bigger file; import skips re-embedding)"
    )
    export.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")

    load = command(
        "import", cmd_import, "load an export file (idempotent: importing twice adds nothing)",
        "alma-mcp import backup.jsonl",
        "Bad lines are reported by number on stderr and the good ones imported; the exit code is then 1.",
    )
    load.add_argument("file", help="a file written by alma-mcp export")
    load.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")

    reindex = command(
        "reindex", cmd_reindex, "re-embed every memory with the configured embedding model",
        "alma-mcp reindex\nalma-mcp reindex --force",
        "Stop the servers using this store first: they keep the old model's vectors.",
    )
    reindex.add_argument("--force", action="store_true", help="also collections already on the configured model")
    reindex.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")

    sweep = command(
        "sweep", cmd_sweep, "archive decayed and over-cap memories (dry run unless --apply)",
        "alma-mcp sweep\nalma-mcp sweep --agent helena --apply",
    )
    sweep.add_argument("--agent", help="only this agent")
    sweep.add_argument("--apply", action="store_true", help="archive them (default: only list)")

    from .ui.commands import add_review_commands  # ui, import-from, export-to

    add_review_commands(command, _service, port_number)
    return parser


def entry() -> None:
    """The `alma-mcp` command: `main`, then, after a one-shot command, a prompt exit. The services
    the command opened are closed first (their write journals applied to Chroma, their locks let
    go of: what a normal exit leaves to the next process), then the exit handlers run (`atexit`:
    logging's flush among them) and output is flushed; what is skipped is the interpreter's own
    teardown of its modules, Chroma's client and the model, which took 0.15-0.27 s of a 1.2-1.5 s
    `alma-mcp search` with nothing left to do. A server, and a command whose services fail to
    close, exit the usual way."""
    code = main()
    if not _opened:
        raise SystemExit(code)
    try:
        while _opened:
            _opened.pop().close()
    except Exception as exc:  # noqa: BLE001 - the usual exit then does what is left, and reports it
        log.warning("closing after the command: %s", exc)
        raise SystemExit(code) from None
    atexit._run_exitfuncs()  # as the interpreter would at exit; each handler's error is printed, not raised
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, or a stream closed by a handler: nothing more can be said
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    _own_process()
    try:
        early = None
        if _serves_stdio(sys.argv[1:] if argv is None else argv):
            # A client may stop the server as soon as it has its answer: the handlers come first.
            _stop_on_signals()
            from .handshake import EarlyStdio

            early = EarlyStdio.start()  # answers `initialize` while the rest is imported
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            args = parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "serve"])
        if early is not None and (args.command != "serve" or args.http):
            early.release()  # judged wrongly: the command gets its stdio back
            early = None
        args.early_stdio = early
        _setup_logging(_log_level(args))
        return int(args.func(args) or 0)
    except AlmaError as exc:
        print(f"alma-mcp: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alma-mcp: interrupted", file=sys.stderr)
        return _stopped_by or 130
    except BrokenPipeError:  # `alma-mcp stats | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
