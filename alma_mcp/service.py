"""`ALMA`: the memory service. The MCP tools, the CLI and the Python harness all call this.

Every method validates its arguments, checks the agent's scope, and raises an `AlmaError`
subclass with a message the caller can act on. Writes happen under one lock per data
directory (threads and processes), and a bad call never reaches the store.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Literal, Sequence, TypeVar, get_args

import anyio
import numpy as np
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from .storage.audit import AuditEntry, AuditLog, audit_visible, entry_for, open_audit_log
from .config import AgentSettings, AlmaConfig, RetrievalSettings, load_config
from .embedding.embedder import Embedder, create_embedder
from .errors import AlmaError, InvalidInput, NotFound, ScopeDenied
from .learning.learner import Learner, LearnReport, apply_feedback, memory_vectors
from .learning.lifecycle import MERGEABLE, ConsolidateResult, Lifecycle, RestoreResult, SweepResult
from .models import (
    FEEDBACK_SIGNALS,
    MEMORY_TYPES,
    AntiPattern,
    AnyMemory,
    Category,
    DomainKnowledge,
    Heuristic,
    Memory,
    MemoryBase,
    MemoryId,
    MemoryRef,
    Name,
    Outcome,
    Text,
    UserId,
    UserPreference,
    new_id,
    utcnow,
)
from .indexes import snapshot
from .indexes.follower import SearchIndexes
from .prompt.handles import is_handle
from .prompt.results import MemorySlice
from .ranking.candidates import Mode
from .ranking.explain import Explanation
from .ranking.quick import QuickSearch
from .ranking.retriever import Retriever
from .scope import EVERYONE, Caller, can_read, check_can_learn, missing, visible
from .storage.store import PREFERENCES, MemoryStore, collection_name
from .storage.writelock import WriteLock

log = logging.getLogger("alma_mcp")
T = TypeVar("T")

FOLLOW_SECONDS = 1.0
"""How often a server's preloaded search indexes look for other processes' writes and catch up."""

SNAPSHOT_QUIET_SECONDS = 2.0
"""A server saves its index snapshots once no process has written to the store for this long."""
CHROMA_DEFER_SECONDS = 3.0
"""With current index snapshots saved, a server imports Chroma after its first retrieval (answered
from them) or after this long, whichever comes first: on two cores, Chroma's import beside the MCP
SDK's slows both, and the first retrieval waits for the slower."""
CHROMA_DEFER_EXPIRED = f"no retrieval within {CHROMA_DEFER_SECONDS:.0f} s of the start: Chroma is opened now"

MODES: tuple[Mode, ...] = get_args(Mode)
"""How `retrieve` may rank: both signals fused, or one alone."""

MAX_AGE_DAYS = 36_500
"""Longest age `forget(older_than_days=...)` accepts: a hundred years, far inside what dates can count."""



def _stop_at_exit(closing: threading.Event) -> None:
    """Set `closing` when the program ends, before the interpreter waits for non-daemon threads,
    so a follower sleeping on it wakes at once instead of holding the exit up."""
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9; concurrent.futures uses it
    if register is None:  # pragma: no cover - other interpreters: the follower sees the exit on its next wake
        return
    try:
        register(closing.set)
    except RuntimeError:  # the interpreter is already shutting down: nothing to start anyway
        closing.set()


def private_dir(path: Path) -> None:
    """Make `path` a folder only its owner can enter: memories are plain text inside (Chroma's
    SQLite file, the audit log, the lock files), whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o700)
    except (OSError, AttributeError):  # not ours to change, or no uids (Windows)
        pass


def private_files(folder: Path) -> None:
    """Take group and other permissions off the files directly in `folder` (Chroma's SQLite file)."""
    try:
        for entry in folder.iterdir():
            if entry.is_file() and entry.stat().st_mode & 0o077:
                entry.chmod(0o600)
    except OSError:
        pass


def _validated(adapter: TypeAdapter[Any], value: Any, what: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {_message(exc.errors()[0])}") from None


_name = TypeAdapter(Name)
_user = TypeAdapter(UserId)
_category = TypeAdapter(Category)
_memory_id = TypeAdapter(MemoryId)
_memory_ref = TypeAdapter(MemoryRef)
_Taught = TypeVar("_Taught", Heuristic, AntiPattern, DomainKnowledge, UserPreference)
"""A memory a caller teaches directly: stored as given, or merged into its near-duplicate of the same type."""


def _build(model: type[T], what: str, **fields: Any) -> T:
    try:
        return model(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or what}: {_message(e)}" for e in exc.errors())
        raise InvalidInput(f"invalid {what}: {problems}") from None


def _message(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


class LearnResult(BaseModel):
    outcome_id: str
    heuristics_created: list[str] = Field(default_factory=list)
    heuristics_updated: list[str] = Field(default_factory=list)
    heuristics_retired: list[str] = Field(default_factory=list)
    anti_patterns_created: list[str] = Field(default_factory=list)
    anti_patterns_updated: list[str] = Field(default_factory=list)
    anti_patterns_retired: list[str] = Field(default_factory=list)
    lessons_merged: list[str] = Field(
        default_factory=list, description="Lessons found to be the same lesson as another and folded into it."
    )
    message: str


class ForgetResult(BaseModel):
    dry_run: bool
    action: Literal["archive", "purge"] = Field(
        "archive", description="archive: kept, out of service, restorable; purge: deleted (a copy stays in the audit log)."
    )
    count: int
    memories: list[dict[str, str]] = Field(description="id, type, agent and title of each memory concerned.")
    message: str


class MemoryDetail(BaseModel):
    memory: Memory
    provenance: list[Memory] = Field(
        default_factory=list, description="The outcomes this lesson was learned from (for heuristics and anti-patterns)."
    )


def _async_twin(method: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`await alma.aNAME(...)`: NAME run on a worker thread, so async agents never block their loop."""

    @functools.wraps(method)
    async def twin(self: "ALMA", *args: Any, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(method, self, *args, **kwargs))

    twin.__name__ = twin.__qualname__ = f"a{method.__name__}"
    twin.__doc__ = f"Async variant of `{method.__name__}` (runs it on a worker thread).\n\n{method.__doc__ or ''}"
    return twin


class ALMA:
    """The memory service for one project."""

    def __init__(
        self,
        config: AlmaConfig,
        embedder: Embedder | None = None,
        store: MemoryStore | None = None,
        retriever: Retriever | None = None,
    ) -> None:
        """Builds nothing that runs: no thread starts and no file or client opens until first use
        (`warm_up` starts the background work; `close` ends it and lets go of everything).
        The service keeps a copy of `config`: what it changes in it (`adopt_agent`) is its own.

        `store`, or a `retriever` (which brings its store), are the caller's parts to build the
        service on: a store on another backend, or parts a test or a benchmark watches at work.
        The service uses them and never closes them; the caller does, after `close`. With a
        retriever, the service shares the retriever's config (equal to `config`) instead of a copy,
        so that both rank by the same settings whatever is changed later."""
        if retriever is not None:
            if store is not None and store is not retriever.store:
                raise InvalidInput("give a store or a retriever (which has its own store), not two different stores")
            if retriever.config != config:
                raise InvalidInput("the retriever was built with another config: build it with this one")
            store = retriever.store
        self.config = config.model_copy(deep=True) if retriever is None else retriever.config
        config = self.config
        settings = config.alma
        self.embedder = embedder or create_embedder(
            settings.embedding.model,
            settings.embedding.device,
            onnx=settings.embedding.onnx,
            backend=settings.embedding.backend,
        )
        # The parts, made on first use under one lock (reentrant: the retriever is made under it
        # and opens the store), and dropped by close: the next call makes them again.
        self._parts_lock = threading.RLock()
        self._given_store = store  # the caller's, never closed here
        self._given_retriever = retriever  # likewise, and its indexes keep following the store
        self._made_store: MemoryStore | None = store
        self._made_retriever: Retriever | None = retriever
        self._made_learner: Learner | None = None
        self._made_audit: AuditLog | None = None
        self._made_lifecycle: Lifecycle | None = None
        lock_dir = config.data_dir if settings.storage == "chroma" else None
        if lock_dir is not None:
            private_dir(lock_dir)
        self.write_lock = WriteLock(lock_dir)
        self._writes = 0  # this process's writes, to run the decay sweep every N of them
        self._writes_lock = threading.Lock()
        self._preloader: threading.Thread | None = None
        self._preloaded: tuple[int, int] | None = None  # (collections read, to read), once it knows
        self._preload_failed: str | None = None
        self._closing = threading.Event()  # stops the preload and the follower
        # Retrieval from saved index snapshots, before Chroma is loaded (indexes/snapshot.py): for
        # the embedded store searched in memory, where a snapshot holds all a retrieval reads.
        self._quick: QuickSearch | None = None
        if store is None and settings.storage == "chroma" and settings.vector_search != "chroma":
            self._quick = QuickSearch(config, self.embedder, lambda: self._counters())
        self._quick_served = threading.Event()  # a retrieval was answered from snapshots
        self._chroma_wanted = threading.Event()  # ends the preload's wait before it opens Chroma
        self._saved: dict[str, int | None] = {}  # write count of the snapshot on disk, by collection, as this process knows it
        self._keeps_snapshots = False  # a server (warm_up) saves them as the store changes
        self._snapshot_scopes: list[tuple[str, str | None]] = []  # what it saves: the preloaded collections
        self._writes_seen = (-1, 0.0)  # the store's write count when last looked at, and since when
        self._deferring = False  # the preload waits before it opens Chroma (see CHROMA_DEFER_SECONDS)

    @classmethod
    def from_config(cls, path: str | Path | None = None, **kwargs: Any) -> "ALMA":
        return cls(load_config(path), **kwargs)

    def adopt_agent(self, name: str, settings: AgentSettings) -> AgentSettings:
        """Declare an agent the config leaves undeclared, for this service only: its rules are
        enforced on every write from now on, whoever makes it. A declared agent keeps the config's
        settings, which are returned."""
        name = _validated(_name, name, "agent")
        agents = self.config.alma.agents
        if name not in agents and not self.config.alma.allow_undeclared_agents:
            self.config.agent(name)  # raises NotFound, saying how to declare it
        return agents.setdefault(name, settings)

    # -- lazily opened parts ---------------------------------------------------------
    @property
    def _store(self) -> MemoryStore:
        with self._parts_lock:
            if self._made_store is None:
                self._chroma_wanted.set()  # opened by a call: the preload need not wait any longer
                self._made_store = self._open_store()
            return self._made_store

    def _open_store(self) -> MemoryStore:
        settings = self.config.alma
        if settings.storage == "chroma-http":
            return MemoryStore.http(settings.chroma_http, self.config.project, self.embedder)
        folder = self.config.data_dir / "chroma"
        private_dir(folder)
        # Created here, empty (a valid empty SQLite database), so that Chroma
        # opens a file only the owner can read rather than one made with the umask.
        database = folder / "chroma.sqlite3"
        if not database.exists():
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
        store = MemoryStore.embedded(folder, self.config.project, self.embedder)
        private_files(folder)
        if self._quick is not None:
            store.add_write_listener(self._drop_snapshot_on_delete)
        return store

    def _drop_snapshot_on_delete(self, name: str, memories: Sequence[Any], deleted: bool, *_: Any) -> None:
        """A purge deletes memories from the store: their copy in the collection's snapshot goes at
        once too (a stale snapshot is never served, but it would keep their text on disk)."""
        if deleted and self._quick is not None:
            self._quick.discard(name)
            self._saved.pop(name, None)

    @property
    def _retriever(self) -> Retriever:
        with self._parts_lock:  # one retriever, also when the preload and a first call race
            if self._made_retriever is None:
                retriever = Retriever(self._store, self.embedder, self.config)
                if self._quick is not None:
                    self._quick.share_calibration(retriever)
                self._made_retriever = retriever
            return self._made_retriever

    @property
    def _learner(self) -> Learner:
        with self._parts_lock:
            if self._made_learner is None:
                self._made_learner = Learner(self._store, self.config, self._retriever.indexes)
            return self._made_learner

    @property
    def _audit(self) -> AuditLog:
        """Where every removal is recorded: a JSONL file (embedded) or a Chroma collection (chroma-http)."""
        with self._parts_lock:
            if self._made_audit is None:
                self._made_audit = open_audit_log(
                    self.config.alma.storage, self.config.data_dir, self._store.client, self.config.project
                )
            return self._made_audit

    @property
    def _lifecycle(self) -> Lifecycle:
        with self._parts_lock:
            if self._made_lifecycle is None:
                self._made_lifecycle = Lifecycle(self._store, self.config, self._audit, self._retriever.indexes)
            return self._made_lifecycle

    def warm_up(self) -> None:
        """Start loading the embedding model in the background and, unless `preload_indexes` is
        off, reading the declared agents' collections into the search indexes, then following
        other processes' writes to them, until `close` (a server calls this in its lifespan).
        Idempotent while running; after `close` it starts afresh."""
        start = getattr(self.embedder, "start", None)
        if start is not None:
            start()
        self._keeps_snapshots = self._quick is not None  # saved at close; also when quiet, with the preload
        if not self.config.alma.preload_indexes:
            return
        with self._parts_lock:
            if self._preloader is not None and self._preloader.is_alive():
                return
            self._closing.clear()
            self._preloaded = None
            self._preload_failed = None
            # Not a daemon (see SearchIndexes.prepare): at exit it stops after the collection it is
            # reading; `_stop_at_exit` wakes it when the program ends without closing the service.
            self._preloader = threading.Thread(target=self._preload, name="alma-preload")
            _stop_at_exit(self._closing)
            self._preloader.start()

    def _preload(self) -> None:
        """Read the search indexes of `_preload_scopes`, one after another, until closed or the
        program exits; `_preloaded` tells how far it got (see health)."""
        if self._quick is not None and self._quick.available():
            # Saved snapshots can answer the first retrievals: Chroma waits for the first of them
            # to be answered (and its answer sent), or for CHROMA_DEFER_SECONDS.
            self._deferring = True
            if not self._chroma_wanted.wait(CHROMA_DEFER_SECONDS):
                log.info("%s", CHROMA_DEFER_EXPIRED)
            if self._quick_served.is_set():
                self._closing.wait(0.2)
            self._deferring = False
            if self._stopping():
                return
        try:  # the store is opened here too, off the thread that answers initialize
            indexes = self._retriever.indexes
            scopes = self._preload_scopes()
            self._snapshot_scopes = scopes
            for done, (memory_type, agent) in enumerate(scopes):
                self._preloaded = (done, len(scopes))
                if self._stopping():
                    return
                # A search that needs this collection meanwhile waits for this reader, not reads it again.
                indexes.get(memory_type, agent)
            self._preloaded = (len(scopes), len(scopes))
        except Exception as exc:  # noqa: BLE001 - a background thread: whatever stopped it is reported in health, and each collection is read when first searched
            if self._stopping():
                return  # cut short by close or exit (Chroma refuses work then): not a failure
            self._preload_failed = f"{type(exc).__name__}: {exc}"
            log.warning("could not preload the search indexes (they are read on first use): %s", exc)
            return
        self._follow_other_writers(indexes, scopes)

    def _stopping(self) -> bool:
        """Closed, or the program is exiting: the background threads stop."""
        return self._closing.is_set() or not threading.main_thread().is_alive()

    def _follow_other_writers(self, indexes: SearchIndexes, scopes: list[tuple[str, str | None]]) -> None:
        """Until closed: every FOLLOW_SECONDS, catch the preloaded indexes up with what other
        processes wrote (a read of the shared write counters when nothing was written), so that
        the first call after another process's write finds them current instead of catching up
        itself (0.5-0.7 s at 100,000 memories; bench/follow.py --pause)."""
        interval = FOLLOW_SECONDS
        if self.config.alma.storage == "chroma-http":  # the server's change tokens are read no more often than this
            interval = max(interval, self.config.alma.chroma_http.change_check_seconds)
        # Sleeps on the event: close (or the end of the program, see _stop_at_exit) wakes it at once.
        while not (self._closing.wait(interval) or self._stopping()):
            stale = [scope for scope in scopes if indexes.ready(*scope) is None]
            steps: list[tuple[Callable[[str, str | None], object], tuple[str, str | None]]]
            steps = [(indexes.prepare, scope) for scope in stale]  # a catch-up here, or a read in the background
            if stale and self.config.alma.storage == "chroma":
                # After another process's write, an embedded store's client is reopened, and Chroma's
                # first touch of each collection then costs about 150 ms at 100,000 memories: the
                # collections not caught up are touched (counted) here too, not in the next call.
                steps += [(self._store.count, scope) for scope in scopes if scope not in stale]
            for step, (memory_type, agent) in steps:
                if self._stopping():
                    return
                try:
                    step(memory_type, agent)
                except Exception as exc:  # noqa: BLE001 - a background thread: the next search catches up or reads it, and reports the failure
                    log.debug("could not follow %s of %s: %s", memory_type, agent, exc)
            self._save_snapshots(scopes, when_quiet=True)

    # -- index snapshots (indexes/snapshot.py) -------------------------------------------
    def _counters(self) -> Any:
        """The data directory's shared write counters (read without opening Chroma)."""
        lock = self.write_lock.directory_lock
        assert lock is not None  # the embedded store, the only one with snapshots
        return lock.counters

    def _save_snapshots(self, scopes: Sequence[tuple[str, str | None]], when_quiet: bool) -> int:
        """Save the snapshot of each of these collections whose saved one is not current; with
        `when_quiet`, only once no process has written for SNAPSHOT_QUIET_SECONDS (a server saves
        them between bursts of writes, not after each). Returns how many were saved; a failure
        is logged, never raised (snapshots are a cache)."""
        quick = self._quick
        if quick is None or not scopes:
            return 0
        counters = self._counters()
        if when_quiet:
            total, now = counters.total(), time.monotonic()
            if total != self._writes_seen[0]:
                self._writes_seen = (total, now)
                return 0
            if now - self._writes_seen[1] < SNAPSHOT_QUIET_SECONDS:
                return 0
        saved = 0
        for memory_type, agent in scopes:
            name = collection_name(self.config.project, memory_type, agent)
            if name not in self._saved:
                self._saved[name] = snapshot.saved_generation(quick.folder, name, self.embedder.name)
            if self._saved[name] == counters.of(name):
                continue
            if when_quiet and self._stopping():
                break
            try:
                saved += self._save_snapshot(memory_type, agent, name)
            except Exception as exc:  # noqa: BLE001 - a cache: the store still answers; tried again later
                log.warning("could not save the index snapshot of %s: %s", name, exc)
        return saved

    def _save_snapshot(self, memory_type: str, agent: str | None, name: str) -> int:
        quick = self._quick
        assert quick is not None
        if self._store.count(memory_type, agent) > snapshot.LIMIT:
            quick.discard(name)  # too large to be worth it (see snapshot.LIMIT): the store answers
            self._saved[name] = self._counters().of(name)
            return 0
        read = self._store.consistent_read(memory_type, agent)
        if read is None:
            return 0
        count, rows = read
        vectors = np.stack([vector for _, vector in rows]) if rows else np.zeros((0, 0), dtype=np.float32)
        saved = snapshot.Snapshot(name, self.embedder.name, count, [meta for meta, _ in rows], vectors)
        snapshot.write(quick.folder, saved)
        self._saved[name] = count
        quick.saved(saved)
        return 1

    def save_snapshots(self, agent: str | None = None) -> int:
        """Save the index snapshots that are not current, of the collections `agent` reads (every
        collection the store holds when None), so that the next process answers retrievals from
        them before Chroma is loaded (a one-shot `alma-mcp search` does this after it had to open
        Chroma). Opens the store. Returns how many were written."""
        if self._quick is None:
            return 0
        if agent is not None:
            agents = [self._agent(agent)]
        else:
            agents = list(dict.fromkeys([*self.config.alma.agents, *self._store.agents()]))
        # Collections never written to as well: a retrieval reads them too, and finds them empty.
        scopes = [scope for name in agents for scope in self._quick.scopes(name, None, "any user")]
        return self._save_snapshots(list(dict.fromkeys(scopes)), when_quiet=False)

    def preload(self, agents: Sequence[str] | None = None) -> int:
        """Read the search indexes of every collection these agents read (default: the agents
        `warm_up` preloads) now, waiting until they are read: what `warm_up` does in the
        background, for a process that wants its first calls to wait for no index (a benchmark
        timing retrievals, a batch job). Returns the number of collections read."""
        names = None if agents is None else [self._agent(a) for a in ([agents] if isinstance(agents, str) else agents)]
        scopes = self._preload_scopes(names)
        indexes = self._retriever.indexes
        for memory_type, agent in scopes:
            indexes.get(memory_type, agent)
        return len(scopes)

    def _preload_scopes(self, agents: list[str] | None = None) -> list[tuple[str, str | None]]:
        """Every collection an agent reads (the declared ones, and with allow_undeclared_agents
        those with memories stored): what retrieval reads by default first, then the outcomes
        learning groups, so that the first retrieval waits for as little as it can."""
        if agents is None:
            agents = list(self.config.alma.agents)
            if self.config.alma.allow_undeclared_agents:
                agents += [a for a in self._store.agents() if a not in agents]
        scopes: list[tuple[str, str | None]] = [(PREFERENCES, None)]
        for kinds in ([t for t in MEMORY_TYPES if t not in ("outcome", PREFERENCES)], ["outcome"]):
            for agent in agents:
                scopes += self._retriever.scopes(agent, kinds, user_id=None)
        return list(dict.fromkeys(scopes))

    def close(self) -> None:
        """Stop the background work (waiting for the preload to finish the collection it is
        reading) and let go of the store, its client and the lock files. The service stays
        usable: the next call opens what it needs again."""
        self._closing.set()
        self._chroma_wanted.set()
        preloader = self._preloader
        if preloader is not None and preloader is not threading.current_thread():
            preloader.join()
        if self._keeps_snapshots and self._made_store is not None:
            try:  # the next start answers from them
                self._save_snapshots(self._snapshot_scopes or self._preload_scopes(), when_quiet=False)
            except AlmaError as exc:
                log.warning("could not save the index snapshots: %s", exc)
        if self._quick is not None:
            self._quick.close()
        self._keeps_snapshots = False
        self._saved.clear()
        self._quick_served.clear()
        self._chroma_wanted.clear()
        self._snapshot_scopes = []
        with self._parts_lock:
            retriever, store = self._made_retriever, self._made_store
            self._made_retriever = self._given_retriever
            self._made_learner = self._made_lifecycle = self._made_audit = None
            self._preloader = None
            if store is not self._given_store:
                self._made_store = None
        if retriever is not None and retriever is not self._given_retriever:
            retriever.close()
            retriever.indexes.close()
        if store is not None and store is not self._given_store:
            store.close()
        elif store is not None and self._given_retriever is None:
            store.remove_write_listeners()  # kept for the next use: the parts made next listen to it afresh
        self.write_lock.close()

    def __enter__(self) -> "ALMA":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ----------------------------------------------------------------------
    def _agent(self, agent: str) -> str:
        agent = _validated(_name, agent, "agent")
        self.config.agent(agent)  # raises NotFound for an undeclared agent
        return agent

    def _types(self, memory_types: Sequence[str] | None) -> list[str] | None:
        if memory_types is None:
            return None
        if isinstance(memory_types, str):
            memory_types = [memory_types]
        unknown = [t for t in memory_types if t not in MEMORY_TYPES]
        if unknown:
            raise NotFound(f"unknown memory type(s) {unknown}: use any of {list(MEMORY_TYPES)}")
        if not memory_types:
            raise InvalidInput(f"memory_types is empty: omit it for all types or name some of {list(MEMORY_TYPES)}")
        return list(dict.fromkeys(memory_types))

    # -- retrieval -------------------------------------------------------------------
    def retrieve(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        task_type: str | None = None,
        settings: RetrievalSettings | None = None,
        mode: Mode = "hybrid",
    ) -> MemorySlice:
        """The memories to inject for `task`, ranked, with the prompt that renders them.

        `settings` ranks this call with other retrieval settings than the agent's (the config's
        `retrieval`, its per-agent overrides and its floors moved by feedback: see
        `retrieval_settings`), e.g. to try a floor before writing it into the config; `mode`
        ranks by `dense` similarity or `lexical` coverage alone instead of both (`hybrid`)."""
        task, agent, user_id, task_type = self._query(task, agent, top_k, user_id, task_type)
        if settings is not None and not isinstance(settings, RetrievalSettings):
            raise InvalidInput("settings must be a RetrievalSettings (e.g. alma.retrieval_settings(agent).model_copy(update={...}))")
        if mode not in MODES:
            raise InvalidInput(f"mode {mode!r} is not one of {', '.join(MODES)}")
        types = self._types(memory_types)
        if settings is None and mode == "hybrid":
            quick = self._snapshot_answer(task, agent, top_k, user_id, types, task_type)
            if quick is not None:
                return quick
        return self._retriever.retrieve(task, agent, top_k, user_id, types, settings, mode, task_type=task_type)

    def retrieval_settings(self, agent: str) -> RetrievalSettings:
        """The retrieval settings `retrieve` uses for `agent`: the config's, with the agent's
        overrides and its floors as its feedback moved them (`calibrate_from_feedback`)."""
        return self._retriever.settings_for(self._agent(agent))

    def clear_cache(self) -> None:
        """Forget the cached retrieval results, so that the next `retrieve` of a task ranks it
        afresh (timing a retrieval; a store changed behind the service's back). Writes through
        any service already invalidate what they change."""
        self._retriever.clear_cache()

    def retrieve_from_snapshots(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        task_type: str | None = None,
    ) -> MemorySlice | None:
        """`retrieve`, when the saved index snapshots answer it (indexes/snapshot.py); None when
        they cannot (missing or stale, or the store's own indexes are ready), without opening the
        store. What a stdio server answers before its MCP SDK is imported (frontends/handshake.py)."""
        task, agent, user_id, task_type = self._query(task, agent, top_k, user_id, task_type)
        return self._snapshot_answer(task, agent, top_k, user_id, self._types(memory_types), task_type)

    def _snapshot_answer(
        self, task: str, agent: str, top_k: int | None, user_id: str | None, types: list[str] | None, task_type: str | None
    ) -> MemorySlice | None:
        quick = self._quick_retriever(agent, user_id, types)
        if quick is None:
            return None
        result = quick.retrieve(task, agent, top_k, user_id, types, task_type=task_type)
        self._served_quickly()
        return result

    def _quick_retriever(self, agent: str, user_id: str | None, types: Sequence[str] | None) -> Retriever | None:
        """The retriever over saved index snapshots, for a retrieval the store's own indexes are
        not ready for (Chroma still loading in a server, or never opened by a one-shot command),
        when every collection it may read has a current snapshot; else None (the normal path)."""
        quick = self._quick
        if quick is None:
            return None
        scopes = quick.scopes(agent, types, user_id)
        warm = self._made_retriever
        if warm is not None and all(warm.indexes.ready(*scope) is not None for scope in scopes):
            return None
        try:
            return quick.retriever(scopes)
        except Exception as exc:  # noqa: BLE001 - a cache: whatever went wrong, the store answers
            log.warning("index snapshots not used: %s", exc)
            return None

    def _served_quickly(self) -> None:
        quick = self._quick
        assert quick is not None
        quick.served += 1
        if not self._quick_served.is_set():
            self._quick_served.set()
            self._chroma_wanted.set()
            log.info(
                "first retrieval answered from the saved index snapshots (chromadb imported: %s)",
                "yes" if "chromadb" in sys.modules else "no",
            )

    def _query(
        self, task: str, agent: str, top_k: int | None, user_id: str | None, task_type: str | None
    ) -> tuple[str, str, str | None, str | None]:
        """A retrieval's arguments, checked: the task, agent, user and task type to use."""
        agent = self._agent(agent)
        task = _build(_TaskText, "task", task=task).task
        if top_k is not None and not (1 <= top_k <= 50):
            raise InvalidInput(f"top_k is {top_k}: use a number from 1 to 50")
        if user_id is not None:
            user_id = _validated(_user, user_id, "user_id")
        if task_type is not None:
            task_type = _validated(_category, task_type, "task_type")
        return task, agent, user_id, task_type

    def explain(
        self,
        task: str,
        agent: str,
        top_k: int | None = None,
        user_id: str | None = None,
        memory_types: Sequence[str] | None = None,
        task_type: str | None = None,
        n: int = 10,
    ) -> Explanation:
        """`retrieve`'s choice for this task spelled out: each injected memory and the nearest
        others with their evidence against the floors (`alma-mcp search --explain`)."""
        task, agent, user_id, task_type = self._query(task, agent, top_k, user_id, task_type)
        if not (1 <= n <= 100):
            raise InvalidInput(f"n is {n}: explain from 1 to 100 candidates")
        types = self._types(memory_types)
        retriever = self._quick_retriever(agent, user_id, types) or self._retriever
        return retriever.explain(task, agent, top_k, user_id, types, task_type, n)

    # -- learning --------------------------------------------------------------------
    def learn(
        self,
        agent: str,
        task: str,
        outcome: str,
        strategy_used: str,
        task_type: str | None = None,
        duration_ms: int | None = None,
        error_message: str | None = None,
        feedback: str | None = None,
        user_id: str | None = None,
    ) -> LearnResult:
        agent = self._agent(agent)
        record = _build(
            Outcome,
            "outcome",
            id=new_id("outcome"),
            project=self.config.project,
            agent=agent,
            task=task,
            task_type=task_type,
            outcome=outcome,
            strategy_used=strategy_used,
            duration_ms=duration_ms,
            error_message=error_message or None,
            feedback=feedback or None,
            user_id=user_id,
        )
        check_can_learn(self.config, agent, task_type, "outcomes")
        # An outcome is indexed by its task alone: learning groups outcomes of one strategy by
        # how similar their tasks are, and the strategy is already matched exactly.
        vector = self.embedder.embed_query(record.task)
        self._current_indexes([("outcome", agent), ("heuristic", agent), ("anti_pattern", agent)])
        with self.write_lock:
            # Its key field is its task too: the one vector serves as both.
            self._store.put([record], vector[None, :], key_embeddings=vector[None, :])
            report = self._learner.apply(record, vector)
            self._audit_retired(report)
        self._after_write(agent, ["outcome", "heuristic", "anti_pattern"])
        return _learn_result(record.id, report)

    def _current_indexes(self, scopes: list[tuple[str, str | None]]) -> None:
        """Ask for the in-memory indexes a write will search (learning's grouping, merge on write)
        before the write lock is taken. Under it they are used only if current, never waited for
        (retrieval.SearchIndexes.nearest); until one is read (in the background, seconds at
        100,000 memories), the write asks Chroma's approximate index, as it always did."""
        for memory_type, agent in scopes:
            self._retriever.indexes.prepare(memory_type, agent)

    def _audit_retired(self, report: LearnReport) -> None:
        """Learning archives lessons the evidence turned against; the audit log must say so too."""
        retired = [*report.heuristics_retired, *report.anti_patterns_retired]
        if not retired and not report.lessons_merged:
            return
        memories = [self._store.get(memory_id) for memory_id in retired]
        self._audit.append(
            [entry_for(m, "archive", "learn", m.archived_reason or "retired by learning") for m in memories]
            + [entry_for(self._store.get(i), "merge", "learn", "same lesson") for i in report.lessons_merged]
        )

    def _add(self, memory: _Taught, category: str | None, what: str) -> _Taught:
        check_can_learn(self.config, memory.agent, category, what)
        stored = self._store_new(memory, f"merge on write (add {what})")
        self._after_write(memory.agent, [memory.type])
        return stored

    def _store_new(self, memory: _Taught, call: str) -> _Taught:
        """Store a taught memory, or merge it into a near-duplicate; returns the one that stays active."""
        vector = self._store.embed([memory])  # with its key field, in one batch, for the put below
        self._current_indexes([(memory.type, None if isinstance(memory, UserPreference) else memory.agent)])
        with self.write_lock:
            merged = self._lifecycle.merge_on_write(memory, vector[0], call)
            if merged is None:
                self._store.put([memory], vector)
        return merged or memory

    def add_heuristic(
        self,
        agent: str,
        condition: str,
        strategy: str,
        task_type: str | None = None,
        confidence: float = 0.7,
    ) -> Heuristic:
        agent = self._agent(agent)
        memory = _build(
            Heuristic,
            "heuristic",
            id=new_id("heuristic"),
            project=self.config.project,
            agent=agent,
            condition=condition,
            strategy=strategy,
            task_type=task_type,
            confidence=confidence,
        )
        return self._add(memory, task_type, "heuristics")

    def add_anti_pattern(
        self,
        agent: str,
        pattern: str,
        why_bad: str,
        better_alternative: str | None = None,
        task_type: str | None = None,
    ) -> AntiPattern:
        agent = self._agent(agent)
        memory = _build(
            AntiPattern,
            "anti-pattern",
            id=new_id("anti_pattern"),
            project=self.config.project,
            agent=agent,
            pattern=pattern,
            why_bad=why_bad,
            better_alternative=better_alternative or None,
            task_type=task_type,
            confidence=0.7,
        )
        return self._add(memory, task_type, "anti-patterns")

    def add_knowledge(
        self, agent: str, domain: str, fact: str, source: str = "agent", confidence: float = 0.8
    ) -> DomainKnowledge:
        agent = self._agent(agent)
        memory = _build(
            DomainKnowledge,
            "knowledge",
            id=new_id("knowledge"),
            project=self.config.project,
            agent=agent,
            domain=domain,
            fact=fact,
            source=source,
            confidence=confidence,
        )
        return self._add(memory, memory.domain, "knowledge")

    def add_preference(
        self,
        user_id: str,
        category: str,
        preference: str,
        source: str = "user",
        confidence: float = 0.9,
        agent: str | None = None,
    ) -> UserPreference:
        recorded_by = self._agent(agent) if agent else "user"
        memory = _build(
            UserPreference,
            "preference",
            id=new_id("preference"),
            project=self.config.project,
            agent=recorded_by,
            user_id=user_id,
            category=category,
            preference=preference,
            source=source,
            confidence=confidence,
        )
        if agent:
            check_can_learn(self.config, recorded_by, memory.category, "preferences")
        stored = self._store_new(memory, "merge on write (add preference)")
        self._after_write(None, [])
        return stored

    def feedback(
        self, memory_id: str, signal: str, agent: str | None = None, users: frozenset[str] | None = None
    ) -> AnyMemory:
        """Count a feedback signal on a memory: helpful, harmful, used or ignored. With `agent`,
        only on a memory that agent may read (and a preference of one of `users`, when given)."""
        if signal not in FEEDBACK_SIGNALS:
            raise InvalidInput(f"signal {signal!r} is not one of {', '.join(FEEDBACK_SIGNALS)}")
        reader = self._agent(agent) if agent is not None else None
        memory_id = self._resolved(memory_id, "memory_id", reader, users)
        with self.write_lock:
            memory = self._reachable(memory_id, reader, users)
            # By models.FEEDBACK_STEPS, within the bounds learning.feedback_offset keeps.
            retired = apply_feedback(memory, signal, self.config.alma.learning.retire_below_confidence)
            if retired:  # the audit entry goes first, like every archive
                self._audit.append([entry_for(memory, "archive", "feedback", memory.archived_reason or "harmful")])
            self._store.update_metadata([memory])
        self._after_write(memory.agent, [memory.type])
        self._retriever.rate(reader or memory.agent, memory_id, signal)  # the agent's floors learn from it too
        return memory

    # -- corrections by a person (the review page): each one audited before it is written --
    def edit(self, memory_id: str, changes: dict[str, Any], reason: str = "edited by hand") -> AnyMemory:
        """Rewrite a memory's wording (the fields of `EDITABLE` for its type); the memory keeps its
        id, counters and provenance and is re-embedded. The audit entry keeps the old and new text."""
        memory_id = _validated(_memory_id, memory_id, "memory_id")
        reason = _build(_Reason, "reason", reason=reason).reason
        with self.write_lock:
            memory = self._store.get(memory_id)
            allowed = EDITABLE.get(memory.type, ())
            unknown = sorted(set(changes) - set(allowed))
            if not allowed or unknown:
                raise InvalidInput(f"a {memory.type} can have {list(allowed) or 'nothing'} edited, not {unknown}")
            before = {k: getattr(memory, k) for k in changes}
            if all(before[k] == v for k, v in changes.items()):
                raise InvalidInput("nothing changed: send a new wording")
            edited = _build(type(memory), memory.type, **(memory.model_dump() | changes | {"updated_at": utcnow()}))
            vectors = memory_vectors(self._store, [edited])
            self._audit.append([entry_for(memory, "edit", "edit", reason, {"before": before, "after": dict(changes)})])
            self._store.put([edited], vectors)
        return edited

    def mark_wrong(self, memory_id: str, reason: str) -> AnyMemory:
        """Harmful feedback with the reason a person gave, kept in the audit log (with the
        confidence before and after; `feedback` alone records only a retirement)."""
        memory_id = _validated(_memory_id, memory_id, "memory_id")
        reason = _build(_Reason, "reason", reason=reason).reason
        with self.write_lock:
            memory = self._store.get(memory_id)
            before = getattr(memory, "confidence", None)
            entry = entry_for(memory, "feedback", "mark wrong", reason, {"signal": "harmful", "confidence_before": before})
            retired = apply_feedback(memory, "harmful", self.config.alma.learning.retire_below_confidence)
            entry.details["confidence_after"] = getattr(memory, "confidence", None)
            entries = [entry]
            if retired:
                entries.append(entry_for(memory, "archive", "mark wrong", memory.archived_reason or "harmful"))
            self._audit.append(entries)
            self._store.update_metadata([memory])
        return memory

    def merge(self, survivor_id: str, other_id: str, reason: str = "merged by hand") -> AnyMemory:
        """Fold `other` into `survivor` (its counters, provenance and confidence; the survivor's
        wording stays) and archive `other`, as consolidation does for near-duplicates."""
        from .learning.lifecycle import compatible, merge_into

        survivor_id = _validated(_memory_id, survivor_id, "survivor_id")
        other_id = _validated(_memory_id, other_id, "other_id")
        reason = _build(_Reason, "reason", reason=reason).reason
        with self.write_lock:
            survivor, other = self._store.get(survivor_id), self._store.get(other_id)
            if survivor.archived or other.archived:
                raise InvalidInput("restore an archived memory before merging it")
            if not compatible(survivor, other):
                raise InvalidInput(
                    "these two cannot be merged: they must differ and be of one mergeable type "
                    "(no outcomes), one agent (one user for preferences) and compatible task types"
                )
            merge_into(survivor, other)
            now = utcnow()
            survivor.updated_at = now
            self._audit.append([entry_for(other, "merge", "merge", reason, {"survivor": survivor.id})])
            other.archived, other.archived_reason, other.updated_at = True, f"merged into {survivor.id}: {reason}"[:500], now
            self._store.put([survivor], memory_vectors(self._store, [survivor]))  # its outcomes changed: so may its vector
            self._store.update_metadata([other])
        return survivor

    # -- reading single memories -----------------------------------------------------
    def _resolved(
        self, ref: str, what: str, agent: str | None, users: frozenset[str] | None, write: bool = False
    ) -> str:
        """The id that `ref` names: an id as it is, or a handle (how the prompt names a memory,
        prompt/handles.py) resolved among the memories `agent` may read (change, with `write`).
        A handle that names none is reported like a missing id; one that names several, with their
        ids, so the caller can pick."""
        ref = _validated(_memory_ref, ref, what)
        if not is_handle(ref):
            return ref
        named = []
        for memory_id in self._retriever.with_handle(ref, agent):
            try:
                memory = self._store.get(memory_id)
            except NotFound:
                continue
            if visible(self.config, memory, agent, users, write):
                named.append(memory_id)
        if not named:
            raise missing(self.config, ref)
        if len(named) > 1:
            raise InvalidInput(f"{what}: handle {ref!r} names {len(named)} memories ({', '.join(named)}): give the full id")
        return named[0]

    def _reachable(
        self, memory_id: str, agent: str | None, users: frozenset[str] | None, write: bool = False
    ) -> AnyMemory:
        """The memory, if `agent` (serving `users`) may read it, or change it with `write`; else
        NotFound worded exactly as for an id that does not exist, so scope tells nothing."""
        try:
            memory = self._store.get(memory_id)
        except NotFound:
            raise missing(self.config, memory_id) from None
        if not visible(self.config, memory, agent, users, write):
            raise missing(self.config, memory_id)
        return memory

    def get(self, memory_id: str, agent: str | None = None, users: frozenset[str] | None = None) -> MemoryDetail:
        """One memory and the outcomes behind it. With `agent`, only if that agent may read it
        (otherwise it is reported missing, as if it did not exist); a preference only if its user
        is one of `users` (None: any)."""
        reader = self._agent(agent) if agent is not None else None
        memory_id = self._resolved(memory_id, "memory_id", reader, users)
        memory = self._reachable(memory_id, reader, users)
        provenance: list[MemoryBase] = []
        supporting = getattr(memory, "supporting_outcomes", None)
        # Another agent's lesson is shown without the raw outcomes behind it (their ids stay in
        # supporting_outcomes): outcomes are never shared.
        if supporting and (reader is None or can_read(self.config, reader, memory.agent, "outcome")):
            found = self._store.fetch_with_vectors("outcome", memory.agent, supporting)
            provenance = [found[i][0] for i in supporting if i in found]
        return MemoryDetail(memory=memory, provenance=provenance)

    def list_memories(
        self,
        agent: str,
        memory_type: str,
        limit: int = 100,
        include_archived: bool = False,
        user_id: str | None = None,
    ) -> list[AnyMemory]:
        """The memories of a type that `agent` reads, newest first; preferences of `user_id` only
        when one is given (the MCP layer always gives one)."""
        agent = self._agent(agent)
        (kind,) = self._types([memory_type]) or [memory_type]
        if user_id is not None:
            user_id = _validated(_user, user_id, "user_id")
        memories: list[AnyMemory] = []
        sources = self.config.readable_agents(agent, kind) if kind != "preference" else [None]
        for source in sources:
            memories += self._store.list(kind, source, include_archived=include_archived)
        if kind == "preference" and user_id is not None:
            memories = [m for m in memories if getattr(m, "user_id", None) == user_id]
        memories.sort(key=lambda m: m.updated_at, reverse=True)
        return memories[:limit]

    def agents(self) -> list[dict[str, Any]]:
        declared = self.config.alma.agents
        stored = set(self._store.agents())
        out = []
        for name in sorted(set(declared) | stored):
            settings = declared.get(name)
            out.append(
                {
                    "name": name,
                    "declared": settings is not None,
                    "domain": settings.domain if settings else None,
                    "description": settings.description if settings else None,
                    "can_learn": settings.can_learn if settings else [],
                    "cannot_learn": settings.cannot_learn if settings else [],
                    "reads_from": self.config.readable_agents(name),
                }
            )
        return out

    # -- the stored records as they are: every agent's, no scope (an operator's view) ----
    def memories(
        self, memory_type: str | None = None, agent: str | None = None, include_archived: bool = False
    ) -> list[AnyMemory]:
        """Every stored memory, of one type and one agent when given (a preference counts as the
        agent's that recorded it), archived ones too with `include_archived`. Unlike
        `list_memories` nothing is scoped or capped: this is the whole store, for inspection,
        checks and tools that process it (a serving agent reads through `retrieve` and `get`)."""
        kinds = self._types([memory_type] if memory_type is not None else None) or list(MEMORY_TYPES)
        if agent is not None:
            agent = _validated(_name, agent, "agent")
            if memory_type not in (None, PREFERENCES):  # one collection
                return self._store.list(kinds[0], agent, include_archived=include_archived)
        found: list[AnyMemory] = []
        for owner, kind in self._store.scopes():
            if kind not in kinds:
                continue
            if kind == PREFERENCES:
                found += [m for m in self._store.list(kind, None, include_archived=include_archived) if agent in (None, m.agent)]
            elif agent in (None, owner):
                found += self._store.list(kind, owner, include_archived=include_archived)
        return found

    def count(self, memory_type: str | None = None, agent: str | None = None, include_archived: bool = False) -> int:
        """How many memories `memories` would return, without reading them (but preferences of one agent)."""
        kinds = self._types([memory_type] if memory_type is not None else None) or list(MEMORY_TYPES)
        if agent is not None:
            agent = _validated(_name, agent, "agent")
            if memory_type not in (None, PREFERENCES):  # one collection: counted, or 0 if it was never written
                return self._store.count(kinds[0], agent, include_archived=include_archived)
        total = 0
        for owner, kind in self._store.scopes():
            if kind not in kinds:
                continue
            if kind == PREFERENCES:
                if agent is None:
                    total += self._store.count(kind, None, include_archived=include_archived)
                else:
                    total += len(self.memories(kind, agent, include_archived))
            elif agent in (None, owner):
                total += self._store.count(kind, owner, include_archived=include_archived)
        return total

    def put(
        self,
        memories: Sequence[AnyMemory],
        vectors: np.ndarray | None = None,
        key_vectors: np.ndarray | None = None,
    ) -> None:
        """Store memories exactly as given, each new or replacing the stored one with its id:
        no merge, no learning, no scope check, no upkeep (`add_*` and `learn` do those). For
        loading memories built elsewhere, e.g. a benchmark's filler. `vectors` (one row per
        memory, the model's dimension) are used instead of embedding the text, `key_vectors`
        instead of embedding the key fields. They must be the configured model's: a collection
        keeps the dimension of its first vectors and refuses others (a `StorageError`)."""
        memories = list(memories)
        wrong = [type(m).__name__ for m in memories if not isinstance(m, (Heuristic, AntiPattern, Outcome, DomainKnowledge, UserPreference))]
        if wrong:
            raise InvalidInput(f"put stores memories (alma_mcp.models), not {sorted(set(wrong))}")
        for given, name in ((vectors, "vectors"), (key_vectors, "key_vectors")):
            # Rows only: the model's dimension would wait for the model, which a load with vectors never needs.
            if given is not None and (np.ndim(given) != 2 or len(given) != len(memories)):
                raise InvalidInput(f"{name} has shape {np.shape(given)}: give one row (a vector) per memory ({len(memories)})")
        with self.write_lock:
            self._store.put(memories, vectors, key_vectors)

    # -- forgetting ------------------------------------------------------------------
    def forget(
        self,
        memory_ids: Sequence[str] | None = None,
        agent: str | None = None,
        older_than_days: float | None = None,
        below_confidence: float | None = None,
        dry_run: bool = True,
        purge: bool = False,
        users: frozenset[str] | None = None,
        call: str = "forget",
    ) -> ForgetResult:
        """Take memories out of service. By default they are archived (kept, restorable with
        `restore`); `purge=True` deletes them, keeping a copy in the audit log. Either way every
        memory concerned is written to the audit log first. `dry_run` (the default) only lists.
        `call` names the caller in the audit log (the review page says so)."""
        if memory_ids is None and older_than_days is None and below_confidence is None:
            # An agent alone is not a criterion: one call without criteria would take out all of its
            # memories. older_than_days=0 says so on purpose.
            raise InvalidInput(
                "say what to forget: memory_ids, or agent with older_than_days and/or below_confidence "
                "(older_than_days=0 takes every memory of the agent)"
            )
        if older_than_days is not None and not (0 <= older_than_days <= MAX_AGE_DAYS):
            raise InvalidInput(f"older_than_days is {older_than_days}: use 0 to {MAX_AGE_DAYS}")
        if below_confidence is not None and not (0 <= below_confidence <= 1):
            raise InvalidInput("below_confidence must be between 0 and 1")
        if memory_ids:
            if agent is not None and not (older_than_days is None and below_confidence is None):
                raise InvalidInput("give either memory_ids or criteria (agent, older_than_days, below_confidence), not both")
            if agent is not None:
                agent = self._agent(agent)
            ids = list(dict.fromkeys(self._resolved(i, "memory_ids", agent, users, write=True) for i in memory_ids))
            # Only the owner forgets a memory (a preference: an agent working for its user); any
            # other id is answered like a missing one.
            targets = [self._reachable(i, agent, users, write=True) for i in ids]
        elif memory_ids is not None and older_than_days is None and below_confidence is None:
            if agent is not None:
                self._agent(agent)
            targets = []  # an empty list of ids: nothing
        else:
            if agent is None:
                raise InvalidInput("criteria need an agent: name the agent whose memories to forget")
            agent = self._agent(agent)
            cutoff = utcnow() - timedelta(days=older_than_days) if older_than_days is not None else None
            targets = []
            for kind in MEMORY_TYPES:
                if kind == "preference":
                    continue
                for memory in self._store.list(kind, agent, include_archived=purge):
                    if cutoff is not None and memory.updated_at > cutoff:
                        continue
                    if below_confidence is not None and getattr(memory, "confidence", 1.0) >= below_confidence:
                        continue
                    targets.append(memory)
        action: Literal["archive", "purge"] = "purge" if purge else "archive"
        if not purge:
            targets = [m for m in targets if not m.archived]  # archiving twice would change nothing
        listing = [{"id": m.id, "type": m.type, "agent": m.agent, "title": m.title()} for m in targets]
        verb = "delete" if purge else "archive"
        if dry_run:
            return ForgetResult(
                dry_run=True,
                action=action,
                count=len(targets),
                memories=listing,
                message=f"would {verb} {len(targets)} memories; call again with dry_run=false to do it",
            )
        if memory_ids:
            reason = "forgotten by id"
        else:
            rules = [f"older than {older_than_days:g} days" if older_than_days is not None else "",
                     f"confidence below {below_confidence:g}" if below_confidence is not None else ""]
            reason = "forgotten: " + ", ".join(r for r in rules if r)
        call = f"{call} (purge)" if purge else call
        with self.write_lock:
            if purge:
                removed = self._lifecycle.purge(targets, call, reason)
            else:
                self._lifecycle.archive([(m, reason, {}) for m in targets], call)
                removed = len(targets)
        done = (
            f"deleted {removed} memories (copies are in the audit log; restore brings one back)"
            if purge
            else f"archived {removed} memories (restore brings them back)"
        )
        return ForgetResult(dry_run=False, action=action, count=removed, memories=listing, message=done)

    # -- life cycle: restore, consolidate, sweep, audit ------------------------------
    def restore(
        self, memory_ids: Sequence[str], agent: str | None = None, users: frozenset[str] | None = None
    ) -> RestoreResult:
        """Bring archived memories back into service. With `agent`, only that agent's own (and
        preferences of `users`); any other id is answered like a missing one. Purged memories
        are erased and cannot come back."""
        if isinstance(memory_ids, str):
            memory_ids = [memory_ids]
        if not memory_ids:
            raise InvalidInput("memory_ids is empty: name the archived memories to restore")
        ids = [_validated(_memory_id, i, "memory_ids") for i in dict.fromkeys(memory_ids)]
        owner = self._agent(agent) if agent is not None else None
        with self.write_lock:
            if owner is not None or users is not None:
                for memory_id in ids:
                    self._reachable(memory_id, owner, users, write=True)
            return self._lifecycle.restore(ids, "restore")

    def consolidate(
        self,
        agent: str | None,
        memory_type: str | None = None,
        similarity_threshold: float | None = None,
        dry_run: bool = True,
        users: frozenset[str] | None = None,
    ) -> ConsolidateResult:
        """Merge near-duplicates among an agent's memories of a type (all lesson and fact types when
        None; preferences are per user, so `agent` may be None for them)."""
        if memory_type is not None and memory_type not in MERGEABLE:
            if memory_type == "outcome":
                raise InvalidInput("outcomes are raw records and the evidence lessons are learned from: they are never merged")
            self._types([memory_type])
        if similarity_threshold is not None and not (0 < similarity_threshold <= 1):
            raise InvalidInput(f"similarity_threshold is {similarity_threshold}: use a cosine similarity above 0 and at most 1")
        if memory_type != "preference":
            if agent is None:
                raise InvalidInput("name the agent whose memories to consolidate (only preferences need none)")
            agent = self._agent(agent)
        elif agent is not None:
            agent = self._agent(agent)
        if memory_type == "preference" and users is not None:
            raise ScopeDenied(
                "consolidating preferences merges those of every user: it needs a connection that "
                "serves every user (stdio, or a token with users: ['*'])"
            )
        kinds = [memory_type] if memory_type else ["heuristic", "anti_pattern", "knowledge"]
        with self.write_lock:
            return self._lifecycle.consolidate(kinds, agent, similarity_threshold, dry_run, "consolidate")

    def sweep(self, agent: str | None = None, dry_run: bool = True) -> SweepResult:
        """Archive memories whose strength decayed below the floor, and those past an agent's cap."""
        if agent is not None:
            agent = self._agent(agent)
        with self.write_lock:
            return self._lifecycle.sweep(agent, dry_run, "sweep")

    def audit_log(
        self,
        limit: int = 100,
        memory_id: str | None = None,
        action: str | None = None,
        agent: str | None = None,
        reader: str | None = None,
        users: frozenset[str] | None = None,
    ) -> list[AuditEntry]:
        """The newest audit entries, newest first. With `reader`, only entries about memories that
        agent may read (and preferences of `users`), as the memories themselves are scoped."""
        if not 1 <= limit <= 10000:
            raise InvalidInput(f"limit is {limit}: use 1 to 10000")
        if memory_id is not None:
            memory_id = _validated(_memory_id, memory_id, "memory_id")
        if agent is not None:
            agent = _validated(_name, agent, "agent")
        if reader is None and users is None:
            return self._audit.read(limit, memory_id, action, agent)
        reader = self._agent(reader) if reader is not None else None
        return self._audit.read(
            limit, memory_id, action, agent, keep=lambda e: audit_visible(self.config, e, reader, users)
        )

    def _after_write(self, agent: str | None, kinds: Sequence[str]) -> None:
        """Automatic upkeep: the agent's caps after each write; the whole sweep on the first write of
        this process and every `lifecycle.sweep_every_writes` writes. Never fails the write itself."""
        every = self.config.alma.lifecycle.sweep_every_writes
        with self._writes_lock:
            self._writes += 1
            due = every > 0 and (self._writes == 1 or self._writes % every == 0)
        try:
            with self.write_lock:
                if due:
                    self._lifecycle.sweep(None, dry_run=False, call="automatic sweep")
                elif agent is not None and self._lifecycle.cap(agent) is not None:
                    for kind in kinds:
                        self._lifecycle.enforce_cap(agent, kind, "cap")
        except AlmaError as exc:
            log.warning("automatic life-cycle upkeep failed (the write itself succeeded): %s", exc)

    # -- backup ------------------------------------------------------------------------
    def export(self, path: str | Path, with_embeddings: bool = False, progress: bool = False) -> Any:
        """Write every memory (archived too) to a JSONL file; see `backup.export_memories`."""
        from .backup import export_memories

        return export_memories(_Parts(self), Path(path), with_embeddings=with_embeddings, progress=progress)

    def import_memories(self, path: str | Path, progress: bool = False) -> Any:
        """Load an export file, idempotently; see `backup.import_memories`."""
        from .backup import import_memories

        return import_memories(_Parts(self), Path(path), progress=progress)

    def import_from(self, fmt: str, path: str | Path, agent: str, user_id: str = "default") -> Any:
        """Import memory from where another tool keeps it (interop/importers.py: Claude Code's
        files, a memory folder, the MCP memory server's graph, JSONL); nothing the agent already
        holds is stored twice. Returns the ImportReport."""
        from .interop.importers import import_from

        return import_from(_Parts(self), fmt, Path(path), self._agent(agent), _validated(_user, user_id, "user"))

    def export_to(self, fmt: str, agent: str, out: str | Path, max_chars: int | None = None) -> Any:
        """Write the agent's memory in a form another tool reads (interop/exporters.py: a CLAUDE.md
        digest, a memory folder, the MCP memory server's graph, JSONL). Returns the DigestReport."""
        from .interop.exporters import export_to

        return export_to(self, fmt, self._agent(agent), Path(out), max_chars)

    def reindex(self, force: bool = False, progress: bool = False, batch: int | None = None) -> Any:
        """Re-embed every memory with the configured model, `batch` memories at a time (default
        `backup.BATCH`; each batch is embedded and written before the next, so an interrupted run
        resumes after the last one written); see `backup.reindex`."""
        from .backup import BATCH, reindex

        if batch is not None and not 1 <= batch <= 100_000:
            raise InvalidInput(f"batch is {batch}: use 1 to 100000 memories at a time")
        return reindex(_Parts(self), force=force, progress=progress, batch=batch or BATCH)

    # -- overview --------------------------------------------------------------------
    def stats(self, agent: str | None = None, caller: Caller = EVERYONE) -> dict[str, Any]:
        """Counts by agent and type; a caller bound to some agents and users sees only theirs
        (preferences counted only for a caller serving every user)."""
        if agent is not None:
            agent = self._agent(agent)
        per_agent: dict[str, dict[str, int]] = {}
        for declared in self.config.alma.agents:  # listed with zeros before they store anything
            if (agent is None or declared == agent) and caller.may_act_as(declared):
                per_agent[declared] = {t: 0 for t in MEMORY_TYPES if t != "preference"}
        for owner, kind in self._store.scopes():
            if kind == "preference" or (agent is not None and owner != agent) or not caller.may_act_as(owner):
                continue
            per_agent.setdefault(owner, {t: 0 for t in MEMORY_TYPES if t != "preference"})[kind] = self._store.count(
                kind, owner, include_archived=False
            )
        preferences = self._store.count("preference", None, include_archived=False) if caller.users is None else 0
        total = sum(sum(c.values()) for c in per_agent.values()) + (preferences if agent is None else 0)
        return {
            "project": self.config.project,
            "storage": self._store.description,
            "agents": per_agent,
            "preferences": preferences,
            "total": total,
        }

    def health(self) -> dict[str, Any]:
        """Storage and model state, without waiting: a model still loading is not a fault, one
        that failed to load is (every retrieval and write would fail with its reason)."""
        model = str(getattr(self.embedder, "status", "ready"))
        problems = []
        if not self._store.heartbeat():
            problems.append("storage unreachable")
        if model.startswith("failed"):
            problems.append("embedding model failed to load")
        journal = self._store.journal_status()
        if journal is not None and journal["apply_error"]:
            problems.append(f"{journal['waiting']} journaled writes not applied to Chroma yet (retrying): {journal['apply_error']}")
        if journal is not None and journal["damaged_entries_skipped"]:
            problems.append(f"{journal['damaged_entries_skipped']} damaged write journal entries were skipped (their writes are lost; see the log)")
        return {
            "status": "; ".join(problems) or "ok",
            "project": self.config.project,
            "storage": self._store.description,
            "embedding_model": self.embedder.name,
            "embedding_model_ready": model == "ready",
            "embedding_model_status": model,
            "config_file": str(self.config.source) if self.config.source else None,
            "search_indexes": self._preload_status(),
            "snapshot_retrievals": self._quick.served if self._quick is not None else 0,
            "write_journal": journal,
        }

    def _preload_status(self) -> str:
        """How far the start-up read of the search indexes is (see warm_up)."""
        if self._preloader is None:
            if self.config.alma.preload_indexes:  # a library user or a one-off command: no warm_up
                return "read when first searched (this process did not preload them; a server does at start)"
            return "read when first searched"
        if self._preload_failed is not None:
            return f"preload failed, read when first searched ({self._preload_failed})"
        if self._deferring:
            return "preloading (the store opens after the first retrieval, answered from the saved index snapshots)"
        if self._preloaded is None:
            return "preloading (opening the store)"
        done, total = self._preloaded
        return f"preloaded ({total} collections)" if done == total else f"preloading ({done} of {total} collections read)"

    # -- async variants, for use inside async agents: the same calls on a worker thread --
    aretrieve = _async_twin(retrieve)
    aexplain = _async_twin(explain)
    alearn = _async_twin(learn)
    aadd_heuristic = _async_twin(add_heuristic)
    aadd_anti_pattern = _async_twin(add_anti_pattern)
    aadd_knowledge = _async_twin(add_knowledge)
    aadd_preference = _async_twin(add_preference)
    aforget = _async_twin(forget)
    arestore = _async_twin(restore)
    aconsolidate = _async_twin(consolidate)
    asweep = _async_twin(sweep)
    astats = _async_twin(stats)
    afeedback = _async_twin(feedback)
    aget = _async_twin(get)
    alist_memories = _async_twin(list_memories)
    aimport_from = _async_twin(import_from)
    aexport_to = _async_twin(export_to)
    amemories = _async_twin(memories)
    acount = _async_twin(count)
    aput = _async_twin(put)


class _Parts:
    """The service's store and audit log beside its config, model and write lock: what backup and
    the importers work on (their `Service` protocol), handed to them by the service's own methods
    and to no caller."""

    def __init__(self, alma: ALMA) -> None:
        self._alma = alma
        self.config = alma.config
        self.embedder = alma.embedder
        self.write_lock = alma.write_lock

    @property
    def store(self) -> MemoryStore:
        return self._alma._store

    @property
    def audit(self) -> AuditLog:
        return self._alma._audit


class _TaskText(BaseModel):
    task: Text


class _Reason(BaseModel):
    reason: Annotated[Text, Field(max_length=500)]


EDITABLE: dict[str, tuple[str, ...]] = {
    "heuristic": ("condition", "strategy"),
    "anti_pattern": ("pattern", "why_bad", "better_alternative"),
    "knowledge": ("domain", "fact"),
    "preference": ("category", "preference"),
}
"""The wording a person may correct, by memory type. Outcomes are records of what happened: never edited."""




def _learn_result(outcome_id: str, report: LearnReport) -> LearnResult:
    parts = [f"recorded outcome {outcome_id}"]
    for label, ids in (
        ("created heuristic", report.heuristics_created),
        ("updated heuristic", report.heuristics_updated),
        ("retired heuristic", report.heuristics_retired),
        ("created anti-pattern", report.anti_patterns_created),
        ("updated anti-pattern", report.anti_patterns_updated),
        ("retired anti-pattern", report.anti_patterns_retired),
        ("merged duplicate lesson", report.lessons_merged),
    ):
        if ids:
            parts.append(f"{label} {', '.join(ids)}")
    return LearnResult(outcome_id=outcome_id, message="; ".join(parts), **report.__dict__)


