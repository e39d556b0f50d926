"""Retrieval answered from the saved index snapshots (indexes/snapshot.py) while they are current:
the same `Retriever`, over a `SnapshotStore` instead of the store, so that the answer is the
store's and no Chroma is imported."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Sequence

from ..config import AlmaConfig
from ..embedding.embedder import Embedder
from ..indexes.snapshot import FOLDER, Snapshot, SnapshotStore, path_of, read, saved_agents, saved_generation
from ..models import MEMORY_TYPES
from ..storage.store import PREFERENCES, collection_name
from .retriever import Retriever, read_scopes

log = logging.getLogger("alma_mcp")


class QuickSearch:
    """Retrieval from the saved snapshots, for as long as they are current.

    `retriever(scopes)` gives a Retriever over snapshots of those collections when every one of
    them has a snapshot whose write count is the store's current one (the counters are read
    from `counters`, a function returning the data directory's `ChangeCounters`), else None.
    Snapshots are read from disk when first needed and again when the store has moved on."""

    def __init__(self, config: AlmaConfig, embedder: Embedder, counters: Callable[[], Any]) -> None:
        self.config = config
        self.embedder = embedder
        self.folder = config.data_dir / FOLDER
        self._counters = counters
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        self._missing: dict[str, int] = {}  # collections found with no usable snapshot, at this write count
        self._retriever: Retriever | None = None
        self._retriever_stale = False
        self.calibration: Any = None  # shared with the service's retriever (share_calibration)
        self.served = 0
        """Retrievals answered from snapshots."""

    def available(self) -> bool:
        """Whether some saved snapshot of this project is current (cheap: a directory listing and
        the headers), i.e. whether the first retrievals may well be answered from them."""
        project = self.config.project
        names = [collection_name(project, PREFERENCES, None)] + [
            collection_name(project, kind, agent) for agent in saved_agents(self.folder, project) for kind in MEMORY_TYPES if kind != PREFERENCES
        ]
        counters = None
        for name in names:
            saved = saved_generation(self.folder, name, self.embedder.name)
            if saved is None:
                continue
            counters = counters or self._counters()
            if saved == counters.of(name):
                return True
        return False

    def scopes(self, agent: str, memory_types: Sequence[str] | None, user_id: str | None) -> list[tuple[str, str | None]]:
        """The collections a retrieval for `agent` may read (as `Retriever.scopes`), of every type
        when `memory_types` is None: all must be current for a snapshot to answer."""
        return read_scopes(self.config, agent, MEMORY_TYPES if memory_types is None else memory_types, user_id)

    def discard(self, name: str) -> None:
        """Delete the saved snapshot of collection `name` (its records were purged from the store)."""
        try:
            path_of(self.folder, name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not delete the index snapshot of %s: %s", name, exc)

    def saved(self, snapshot: Snapshot) -> None:
        """A snapshot this process has just written: used from now on without reading it back."""
        with self._lock:
            self._missing.pop(snapshot.name, None)
            held = self._snapshots.get(snapshot.name)
            if held is None or held.generation != snapshot.generation:
                self._snapshots[snapshot.name] = snapshot
                self._retriever_stale = True

    def retriever(self, scopes: Sequence[tuple[str, str | None]]) -> Retriever | None:
        names = [collection_name(self.config.project, kind, agent) for kind, agent in scopes]
        if not self.folder.is_dir():
            return None
        counters = self._counters()
        current = {name: counters.of(name) for name in names}
        with self._lock:
            changed, self._retriever_stale = self._retriever_stale, False
            for name in names:
                held = self._snapshots.get(name)
                if held is not None and held.generation == current[name]:
                    continue
                if self._missing.get(name) == current[name]:
                    return None
                found = read(self.folder, name, self.embedder.name)
                if found is None or found.generation != current[name]:
                    self._missing[name] = current[name]
                    return None
                self._snapshots[name] = found
                changed = True
            if changed or self._retriever is None:
                self._retriever = self._build()
            return self._retriever

    def _build(self) -> Retriever:
        if self._retriever is not None:
            self._retriever.close()
        retriever = Retriever(SnapshotStore(self.config.project, dict(self._snapshots)), self.embedder, self.config)  # type: ignore[arg-type]
        self.share_calibration(retriever)
        return retriever

    def share_calibration(self, retriever: Retriever) -> None:
        """One feedback calibration for the retrievers over snapshots and the service's own: the
        ratings of what either served move the same floors."""
        if self.calibration is None:
            self.calibration = retriever.calibration
        retriever.calibration = self.calibration

    def close(self) -> None:
        with self._lock:
            if self._retriever is not None:
                self._retriever.close()
            self._retriever = None
            self._snapshots.clear()
            self._missing.clear()
