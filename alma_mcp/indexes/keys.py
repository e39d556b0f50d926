"""The similarity of memories' key fields to a task, from the key vectors stored with them or, for
memories stored without one, embedded once and kept."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import numpy as np

from ..embedding.embedder import Embedder
from ..models import MemoryBase, key_text


class KeyVectors:
    """Similarities of memories' key fields to a task.

    The store keeps a key vector with every memory written since key vectors existed (embedded
    with its text at write time), so a warm query costs a few dot products. A memory stored
    before then, or whose key text changed on a path that kept an old vector, has none: its key
    is embedded the first time it is a candidate and kept in an LRU keyed by (id, key text), so
    an edited memory gets a new entry and the old one ages out. `embedded` counts those.
    """

    def __init__(self, embedder: Embedder, capacity: int = 100_000) -> None:
        self.embedder = embedder
        self.capacity = capacity
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.embedded = 0

    def similarities(
        self,
        memories: Sequence[MemoryBase],
        query: np.ndarray,
        stored: Sequence[np.ndarray | None] | None = None,
    ) -> np.ndarray:
        """Cosine similarity of each memory's key field to `query`; `stored[i]`, when given and
        not None, is memory i's key vector as read from the store."""
        if not memories:
            return np.zeros(0, dtype=np.float32)
        rows: list[np.ndarray | None] = list(stored) if stored is not None else [None] * len(memories)
        need = [i for i, row in enumerate(rows) if row is None]
        if need:
            keys = [(memories[i].id, key_text(memories[i])) for i in need]
            with self._lock:
                found = {key: self._vectors.get(key) for key in keys}
            missing = list(dict.fromkeys(key for key, vector in found.items() if vector is None))
            if missing:
                vectors = self.embedder.embed([text for _, text in missing])
                with self._lock:
                    for key, vector in zip(missing, vectors):
                        self._vectors[key] = found[key] = vector
                    self.embedded += len(missing)
                    while len(self._vectors) > self.capacity:
                        self._vectors.popitem(last=False)
            for i, key in zip(need, keys):
                rows[i] = found[key]
        return np.stack(rows) @ query  # type: ignore[arg-type]
