"""BM25 over a collection's memory texts, so exact names, flags and error strings are found
even where embeddings blur them.

The tokenizer keeps identifiers whole as well as split (`UniqueViolation`, `users_email_key`,
`ERR_CERT_DATE_INVALID` are one token each and also their parts), because an agent quoting an
error message should find the memory that quotes it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*[A-Za-z0-9]|[A-Za-z0-9]")
_SPLIT_RE = re.compile(r"[_.:/-]+|(?<=[a-z])(?=[A-Z])")

STOPWORDS = frozenset(
    """a an and are as at be but by for from has have how i if in into is it its of on or our so
    that the their then there these this to was we were what when which while will with you your
    do does did not no can should would could may might must just than too very also use using used""".split()
)


def tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    for word in _WORD_RE.findall(text):
        lower = word.lower()
        parts = [p.lower() for p in _SPLIT_RE.split(word) if p]
        if lower not in STOPWORDS:
            tokens.append(lower)
        if len(parts) > 1:
            tokens += [p for p in parts if p not in STOPWORDS and len(p) > 1]
    return tokens


class BM25Index:
    """Okapi BM25 (k1=1.2, b=0.75) over a fixed set of documents."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.ids = list(ids)
        self.k1 = k1
        self.b = b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths: list[int] = []
        for doc, text in enumerate(texts):
            counts = Counter(tokenize(text))
            self.lengths.append(sum(counts.values()))
            for term, tf in counts.items():
                self.postings[term].append((doc, tf))
        n = len(self.ids)
        self.avg_len = (sum(self.lengths) / n) if n else 0.0
        self.idf = {
            term: math.log(1.0 + (n - len(p) + 0.5) / (len(p) + 0.5)) for term, p in self.postings.items()
        }

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, n: int) -> list[tuple[str, float]]:
        """The n best (id, score) pairs with a positive score, best first."""
        if not self.ids:
            return []
        scores: dict[int, float] = defaultdict(float)
        for term in set(tokenize(query)):
            postings = self.postings.get(term)
            if not postings:
                continue
            idf = self.idf[term]
            for doc, tf in postings:
                norm = self.k1 * (1 - self.b + self.b * self.lengths[doc] / (self.avg_len or 1))
                scores[doc] += idf * tf * (self.k1 + 1) / (tf + norm)
        best = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [(self.ids[doc], score) for doc, score in best]
