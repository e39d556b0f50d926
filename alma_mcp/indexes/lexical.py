"""BM25 over a collection's memory texts, so exact names, flags and error strings are found
even where embeddings blur them.

The tokenizer keeps identifiers whole as well as split (`UniqueViolation`, `users_email_key`,
`ERR_CERT_DATE_INVALID` are one token each and also their parts), because an agent quoting an
error message should find the memory that quotes it.

The index is incremental: a write to the collection adds, replaces or removes single documents
instead of rebuilding the whole index, which at 100,000 memories would cost seconds on every
write. Scoring is vectorised with numpy over the postings of the query's terms only.

Besides the BM25 score, a search reports each hit's *coverage*: the share of the query's
IDF mass that the document contains. BM25 scores are not comparable across queries; coverage
is (0-1), which is what lets the relevance floor accept a strong lexical match, such as an
error string quoted verbatim, that the embedding model scored low.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*[A-Za-z0-9]|[A-Za-z0-9]")
_PUNCT_RE = re.compile(r"[_.:/-]+")
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")

STOPWORDS = frozenset(
    """a an and are as at be but by for from has have how i if in into is it its of on or our so
    that the their then there these this to was we were what when which while will with you your
    do does did not no can should would could may might must just than too very also use using used
    my me they them he she his her us am been being get got make out up all any some""".split()
)


def _stem(word: str) -> str:
    """A deliberately light plural stripper: 'tests' and 'test' should meet, 'class' stay whole."""
    if len(word) > 4 and word.isalpha():
        if word.endswith("ies"):
            return word[:-3] + "y"
        if word.endswith("s") and not word.endswith(("ss", "us", "is")):
            return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Words, lower-cased and lightly stemmed; an identifier also yields its segments and parts.

    `psycopg2.errors.UniqueViolation` gives the whole, `psycopg2`, `error`, `uniqueviolation`,
    `unique` and `violation`, so a query quoting any of these spellings meets the memory.
    """
    tokens: list[str] = []
    for word in _WORD_RE.findall(text):
        tokens += _word_tokens(word) if len(word) <= CACHED_WORD_CHARS else _split_word(word)
    return tokens


CACHED_WORD_CHARS = 40
"""Longer words are split each time, not cached: a caller sending long unique identifiers would
otherwise fill the cache with big entries that are never used again (bounded now at about
CACHE_WORDS x a few hundred bytes)."""
CACHE_WORDS = 65_536


@functools.lru_cache(maxsize=CACHE_WORDS)
def _word_tokens(word: str) -> tuple[str, ...]:
    # Words repeat a great deal across memories, so each is split and stemmed once: building the
    # index of 100,000 memories spent most of its time here.
    return _split_word(word)


def _split_word(word: str) -> tuple[str, ...]:
    pieces = [word]
    segments = [s for s in _PUNCT_RE.split(word) if s]
    if len(segments) > 1:
        pieces += segments
    for segment in segments:
        camel = [c for c in _CAMEL_RE.split(segment) if c]
        if len(camel) > 1:
            pieces += camel
    tokens: list[str] = []
    seen: set[str] = set()
    for i, piece in enumerate(pieces):
        lower = piece.lower()
        if lower in STOPWORDS or lower in seen or (i > 0 and len(lower) < 2):
            continue
        seen.add(lower)
        tokens.append(_stem(lower))
    return tuple(tokens)


_IDENTIFIER_RE = re.compile(r"[_.:/]|\d|[a-z][A-Z]")


def identifiers(text: str) -> set[str]:
    """The identifier-shaped words of a text, as tokens: `users_email_key`, `ERR_CERT_DATE_INVALID`,
    `UniqueViolation`, `psycopg2.errors`, `4242`... An exact match on one of these is strong
    evidence that a memory is about the very thing the task quotes."""
    found = set()
    for word in _WORD_RE.findall(text):
        if len(word) >= 5 and _IDENTIFIER_RE.search(word) and not word.isdigit():
            found.add(_stem(word.lower()))
    return found


@dataclass
class LexicalHit:
    id: str
    score: float
    coverage: float
    """Share (0-1) of the query's IDF mass found in this document."""
    identifiers: int = 0
    """How many identifier-shaped words of the query the document contains verbatim."""


class _Postings:
    """The (slot, term frequency) pairs of one term, with a numpy copy rebuilt only after a change.

    Kept in typed arrays (8 bytes a pair) rather than lists of ints (about 44): the postings and
    the per-document term lists were most of the index's memory, about 2 KB a memory."""

    __slots__ = ("slots", "tfs", "_arrays")

    def __init__(self) -> None:
        self.slots = array("i")
        self.tfs = array("i")
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def append(self, slot: int, tf: int) -> None:
        self.slots.append(slot)
        self.tfs.append(tf)
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            # Copies: a view would pin the arrays' buffers, and they must stay free to grow.
            self._arrays = (
                np.frombuffer(self.slots, dtype=np.int32).astype(np.int64),
                np.frombuffer(self.tfs, dtype=np.int32).astype(np.float32),
            )
        return self._arrays


class BM25Index:
    """Okapi BM25 (k1=1.2, b=0.75), incremental: `add`, `remove`, `search`. Thread-safe."""

    def __init__(
        self, ids: Sequence[str] = (), texts: Sequence[str] = (), k1: float = 1.2, b: float = 0.75
    ) -> None:
        self.k1 = k1
        self.b = b
        self._lock = threading.RLock()
        self._postings: dict[str, _Postings] = {}
        self._df: Counter[str] = Counter()
        self._slot_of: dict[str, int] = {}
        self._ids: list[str | None] = []
        # The terms of each slot and their frequencies, to undo df on removal and to compact.
        self._terms: list[tuple[tuple[str, ...], array]] = []
        self._lengths = np.zeros(64, dtype=np.float32)
        self._alive = np.zeros(64, dtype=np.float32)  # 1.0 live, 0.0 removed (multiplied into scores)
        self._total_length = 0.0
        self._dead = 0
        self.add_many(ids, texts)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._slot_of

    def ids(self) -> list[str]:
        """The ids indexed now (a handle is resolved among them, Retriever.with_handle)."""
        with self._lock:
            return list(self._slot_of)

    # -- writes --------------------------------------------------------------------------
    def add_many(self, ids: Iterable[str], texts: Iterable[str]) -> None:
        with self._lock:
            for doc_id, text in zip(ids, texts):
                self._add(doc_id, text)
            self._maybe_compact()

    def add(self, doc_id: str, text: str) -> None:
        """Index a document; a document with the same id is replaced."""
        self.add_many([doc_id], [text])

    def remove(self, doc_ids: Iterable[str]) -> None:
        with self._lock:
            for doc_id in doc_ids:
                self._remove(doc_id)
            self._maybe_compact()

    def _add(self, doc_id: str, text: str) -> None:
        if doc_id in self._slot_of:
            self._remove(doc_id)
        counts = Counter(tokenize(text))
        self._insert(doc_id, (tuple(counts), array("i", counts.values())))

    def _insert(self, doc_id: str, term_counts: tuple[tuple[str, ...], array]) -> None:
        slot = len(self._ids)
        if slot >= len(self._lengths):
            grown = max(64, 2 * len(self._lengths))
            self._lengths = np.resize(self._lengths, grown)
            self._alive = np.resize(self._alive, grown)
            self._lengths[slot:] = 0
            self._alive[slot:] = 0
        terms, tfs = term_counts
        length = float(sum(tfs))
        self._ids.append(doc_id)
        self._terms.append(term_counts)
        self._lengths[slot] = length
        self._alive[slot] = 1.0
        self._total_length += length
        self._slot_of[doc_id] = slot
        all_postings, df = self._postings, self._df
        for term, tf in zip(terms, tfs):  # inlined _Postings.append: this loop is most of a build
            postings = all_postings.get(term)
            if postings is None:
                postings = all_postings[term] = _Postings()
            postings.slots.append(slot)
            postings.tfs.append(tf)
            postings._arrays = None
            df[term] += 1

    def _remove(self, doc_id: str) -> None:
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            return
        self._alive[slot] = 0.0
        self._total_length -= float(self._lengths[slot])
        for term in self._terms[slot][0]:
            self._df[term] -= 1
        self._ids[slot] = None
        self._dead += 1

    def _maybe_compact(self) -> None:
        # Removed slots stay in the postings (masked out) until they are a third of the index;
        # then the live documents are re-slotted from their stored term counts (no re-tokenizing).
        if self._dead <= 64 or self._dead * 3 <= len(self._ids):
            return
        live = [(doc_id, self._terms[slot]) for doc_id, slot in self._slot_of.items()]
        self._postings, self._df, self._slot_of, self._ids, self._terms = {}, Counter(), {}, [], []
        self._lengths = np.zeros(max(64, len(live)), dtype=np.float32)
        self._alive = np.zeros(max(64, len(live)), dtype=np.float32)
        self._total_length, self._dead = 0.0, 0
        for doc_id, term_counts in live:
            self._insert(doc_id, term_counts)

    # -- reads ---------------------------------------------------------------------------
    def idf(self, term: str) -> float:
        n = len(self._slot_of)
        df = self._df.get(term, 0)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def search(self, query: str, n: int) -> list[LexicalHit]:
        """The n best documents with a positive score, best first, with their query coverage."""
        with self._lock:
            live = len(self._slot_of)
            if not live or n <= 0:
                return []
            terms = list(dict.fromkeys(tokenize(query)))
            if not terms:
                return []
            size = len(self._ids)
            scores = np.zeros(size, dtype=np.float32)
            matched_idf = np.zeros(size, dtype=np.float32)
            quoted = np.zeros(size, dtype=np.float32)
            query_identifiers = identifiers(query)
            avg_length = self._total_length / live if live else 1.0
            norm = self.k1 * (1.0 - self.b + self.b * self._lengths[:size] / (avg_length or 1.0))
            query_idf = 0.0
            for term in terms:
                idf = self.idf(term)
                query_idf += idf
                postings = self._postings.get(term)
                if postings is None or self._df.get(term, 0) <= 0:
                    continue
                slots, tfs = postings.arrays()
                alive = self._alive[slots]
                scores[slots] += alive * idf * tfs * (self.k1 + 1.0) / (tfs + norm[slots])
                matched_idf[slots] += alive * idf
                if term in query_identifiers:
                    quoted[slots] += alive
            positive = np.flatnonzero(scores > 0)
            if not len(positive):
                return []
            if len(positive) > n:
                top = positive[np.argpartition(-scores[positive], n - 1)[:n]]
            else:
                top = positive
            top = top[np.argsort(-scores[top], kind="stable")]
            return [
                LexicalHit(
                    self._ids[slot],
                    float(scores[slot]),
                    min(1.0, float(matched_idf[slot]) / (query_idf or 1.0)),
                    int(quoted[slot]),
                )
                for slot in top
            ]
