"""An exact nearest-neighbour index over one collection's vectors, held in memory.

Retrieval searches four or five collections per task. Asking Chroma costs about 2 ms a
collection on this kind of machine even for ids and distances only, and the calls mostly take
turns for the GIL; a matrix product over 10,000 normalised 384-dimensional vectors takes about
0.6 ms and is exact. The index is derived from the store and kept in step with it by the caller
(retrieval.SearchIndexes): Chroma stays the store of record.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np


class VectorIndex:
    """Unit vectors by id, searched by inner product (cosine similarity).

    `owners` tags each row with a value a search can be restricted to (the user of a
    preference, the strategy of an outcome); None matches only an unrestricted search. Owners
    are kept as small integer codes beside the matrix, so a restricted search at 100,000 rows
    costs a comparison of two arrays, not 100,000 string comparisons.
    """

    def __init__(self, dimension: int | None = None) -> None:
        self._dimension = dimension
        self._matrix = np.zeros((0, dimension or 0), dtype=np.float32)
        self._ids: list[str] = []
        self._owner_rows = np.zeros(0, dtype=np.int32)  # each row's owner, as a code
        self._codes: dict[str | None, int] = {None: 0}
        self._row: dict[str, int] = {}
        self._lock = threading.Lock()  # a search never sees a write half done

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc: str) -> bool:
        return doc in self._row

    def add_many(self, ids: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray], owners: Sequence[str | None] | None = None) -> None:
        """Insert or replace (by id)."""
        if not len(ids):
            return
        with self._lock:
            self._add_many(ids, vectors, owners)

    def _add_many(self, ids: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray], owners: Sequence[str | None] | None) -> None:
        block = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if self._dimension is None:
            self._dimension = block.shape[1]
            self._matrix = np.zeros((0, self._dimension), dtype=np.float32)
        if block.shape[1] != self._dimension:
            raise ValueError(f"vectors of dimension {block.shape[1]} in an index of dimension {self._dimension}")
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        block = block / np.where(norms > 0, norms, 1.0)  # cosine, as the store's collections measure it
        owners = list(owners) if owners is not None else [None] * len(ids)
        last = {doc: i for i, doc in enumerate(ids)}  # several rows with one id: the last wins, as in an upsert
        fresh = [i for doc, i in last.items() if doc not in self._row]
        for doc, i in last.items():
            row = self._row.get(doc)
            if row is not None:
                self._matrix[row] = block[i]
                self._owner_rows[row] = self._code(owners[i])
        if fresh:
            self._grow(len(fresh))
            start = len(self._ids)
            self._matrix[start : start + len(fresh)] = block[fresh]
            self._owner_rows[start : start + len(fresh)] = [self._code(owners[i]) for i in fresh]
            for offset, i in enumerate(fresh):
                self._row[ids[i]] = start + offset
                self._ids.append(ids[i])

    def _code(self, owner: str | None) -> int:
        return self._codes.setdefault(owner, len(self._codes))

    def set_owner(self, doc: str, owner: str | None) -> None:
        with self._lock:
            row = self._row.get(doc)
            if row is not None:
                self._owner_rows[row] = self._code(owner)

    def remove(self, ids: Sequence[str]) -> None:
        with self._lock:
            for doc in ids:
                self._remove(doc)

    def _remove(self, doc: str) -> None:
        row = self._row.pop(doc, None)
        if row is None:
            return
        last = len(self._ids) - 1
        if row != last:  # move the last row into the hole
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._owner_rows[row] = self._owner_rows[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()

    def search(self, vector: np.ndarray, n: int, owner: str | None = None, restrict: bool = False) -> tuple[list[str], list[float], bool]:
        """The n rows most similar to `vector`, most similar first: (ids, similarities, complete).
        With `restrict`, only rows whose owner equals `owner`. `complete` is true when every
        row allowed was returned (nothing less similar was left out)."""
        with self._lock:
            return self._search(np.asarray(vector, dtype=np.float32), n, owner, restrict)

    def _search(self, vector: np.ndarray, n: int, owner: str | None, restrict: bool) -> tuple[list[str], list[float], bool]:
        size = len(self._ids)
        if not size or n <= 0:
            return [], [], True
        # einsum, not `@`: numpy's own loop on this thread. A BLAS product is split across
        # OpenBLAS's threads, which then spin on both cores for a while after it and slowed the
        # query embedding that follows a scan (a new task at 100,000 memories: 47-52 ms p50
        # through the client with `@`, 35 with one BLAS thread); single-threaded, einsum is the
        # faster of the two (35,000 vectors: 2.0 ms against 2.7).
        scores = np.einsum("ij,j->i", self._matrix[:size], vector)
        if restrict:
            code = self._codes.get(owner)
            allowed = self._owner_rows[:size] == code if code is not None else np.zeros(size, dtype=bool)
            scores = np.where(allowed, scores, -np.inf)
            total = int(allowed.sum())
        else:
            total = size
        k = min(n, total)
        if k <= 0:
            return [], [], True
        top = np.argpartition(-scores, k - 1)[:k] if k < size else np.arange(size)
        top = top[np.argsort(-scores[top], kind="stable")][:k]
        return [self._ids[i] for i in top], [float(scores[i]) for i in top], k >= total

    def _grow(self, extra: int) -> None:
        needed = len(self._ids) + extra
        if needed <= self._matrix.shape[0]:
            return
        capacity = max(needed, 2 * self._matrix.shape[0], 64)
        grown = np.zeros((capacity, self._dimension or 0), dtype=np.float32)
        grown[: len(self._ids)] = self._matrix[: len(self._ids)]
        self._matrix = grown
        owners = np.zeros(capacity, dtype=np.int32)
        owners[: len(self._ids)] = self._owner_rows[: len(self._ids)]
        self._owner_rows = owners

