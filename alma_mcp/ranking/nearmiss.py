"""The near-miss test: a question about a subject the store knows, asking an attribute it does not.

"what does Miso take for his joints" comes close to the one fact about Miso's car-sickness
medication: the same dog, the same kind of thing, and that fact stands out from the other facts
about him, so neither the evidence nor the runner-up gap (`candidates.stands_out`) holds it back.
What is missing is one content word of the question that nothing in the fact matches. Here each
word of the task and of its best memory is the mean of its word pieces' last-layer vectors (the
embedding model's own encoder, `BertEncoder.token_states`), each content word of the task is
matched to its most similar word of the memory, and the task's *alignment* is the weakest of those
matches. When the task reads as a question (`asks`), its best candidate is a fact or a preference
answered by evidence (not by the lexical door) and its alignment is below `align_floor`, no
evidence clears the floor: the task's candidates are weak matches instead (still served, one line
each).

A question whose best candidate is a lesson or an outcome is held to the standout test, which
`fuse` applies to facts and preferences alone: a lesson is keyed on a situation, and a task in
that situation is given the family of close ones; a question that only names the situation's
subject is not answered by them unless one stands out, however close they come: a question can
name the situation in nearly its words ("who is Lukas's cello teacher at the academy" against
finding him a cello teacher, 0.93) and still not be answered, so `sure_floor` does not apply here.

It costs one forward pass of the encoder over the best memory alone (about 8 ms on a quiet 2-core
machine, against 13 ms when the task was encoded with it), only on the tasks it can change:
questions answered by evidence, their best a fact or a preference. The task's token vectors are
those its embedding just computed, and a memory among the last texts the encoder kept
(`BertEncoder.token_states`) costs no pass at all. Under an encoder that gives no token vectors
(sentence-transformers in torch) the test is skipped. Measured on the development
sets (bench/nearmiss.py, docs/retrieval-tiers.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..config import RetrievalSettings
from ..indexes.lexical import STOPWORDS
from .candidates import SUBJECT_TYPES, Candidate, runner_up_gap

QUESTION_WORDS = frozenset(
    """where who whom whose why anything something anyone someone please tell know remind remember
    re ll ve s t d m""".split()
)
"""Words of a request that ask rather than say what is asked about (with the lexical index's
STOPWORDS, which hold 'what', 'how', 'when' and the like), and the tails of contractions."""


@dataclass
class Words:
    """A text's words, lower-cased, with one unit vector each (the mean of its word pieces)."""

    words: list[str]
    vectors: np.ndarray

    def content(self) -> list[int]:
        """The positions of the words that say what a request is about."""
        return [i for i, w in enumerate(self.words) if is_content(w)]


def is_content(word: str) -> bool:
    return any(ch.isalnum() for ch in word) and word not in STOPWORDS and word not in QUESTION_WORDS


def words_of(encoder: Any, texts: Sequence[str]) -> list[Words]:
    """Each text's words and their contextual vectors, from `encoder`'s token vectors (a
    `BertEncoder`: the texts it saw last from memory, the others in one forward pass)."""
    out = []
    for state in encoder.token_states(texts):
        text, e, vectors_of = state.text, state.encoding, state.vectors
        pieces: dict[int, list[int]] = {}
        spans: dict[int, tuple[int, int]] = {}
        for position, word in enumerate(e.word_ids):
            if word is None:  # [CLS], [SEP]
                continue
            pieces.setdefault(word, []).append(position)
            start, end = e.offsets[position]
            first, _ = spans.get(word, (start, end))
            spans[word] = (first, end)
        words = [text[spans[w][0] : spans[w][1]].lower() for w in pieces]
        vectors = (
            np.stack([vectors_of[positions].mean(axis=0) for positions in pieces.values()])
            if pieces
            else np.zeros((0, encoder.dim), np.float32)
        )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        out.append(Words(words, vectors / np.where(norms == 0, 1.0, norms)))
    return out


def weakest_match(task: Words, memory: Words) -> tuple[float, str]:
    """The lowest, over the task's content words, of each word's best match in `memory` (cosine),
    and that word; (1.0, "") when the task has no content word."""
    content = task.content()
    if not content:
        return 1.0, ""
    if not len(memory.words):
        return 0.0, task.words[content[0]]
    best = (task.vectors[content] @ memory.vectors.T).max(axis=1)
    low = int(np.argmin(best))
    return float(best[low]), task.words[content[low]]


def alignment(encoder: Any, task: str, memory_text: str) -> float:
    """How well the weakest content word of `task` is matched by some word of `memory_text`."""
    task_words, memory_words = words_of(encoder, [task, memory_text])
    return weakest_match(task_words, memory_words)[0]


QUESTION_START = re.compile(
    r"\s*(what|which|who|whom|whose|when|where|why|how|is|are|was|were|does|do|did|can|could|has|have)\b", re.IGNORECASE
)


def asks(task: str) -> bool:
    """Whether the task reads as a question (a question word or an auxiliary first, or a question
    mark last): what asks for an attribute of a subject. A task to do ("book the boiler's yearly
    service", "deploy the billing service") is given what is known about its subject, whatever its
    verb: its verb is rarely in the memory ("book" against the fact about the boiler's service,
    0.21), and on the field learning benchmark, whose tasks are tickets, judging them too lost
    0.010 ± 0.004 of the expected success over 200 episodes (20 seeds, docs/retrieval-tiers.md)."""
    return task.rstrip().endswith("?") or QUESTION_START.match(task) is not None


def near_miss(task: str, candidates: Sequence[Candidate], settings: RetrievalSettings, encoder: Any) -> float | None:
    """Take the task's confident verdict back (in place: no candidate clears by evidence) when it is a
    near miss: a question (`asks`) answered by evidence, not through the lexical door, its best
    candidate a fact or a preference (SUBJECT_TYPES) whose alignment with the task is below
    `align_floor`; or its best a lesson or an outcome that does not stand out (`standout`, at any
    evidence), which needs no token vectors and is not turned off with `align_floor`. A
    preference over its own `preference_floor` is admitted all the same (`choose`). Returns the
    alignment when it was measured (None: the test did not apply), so that only the tasks it can
    change pay for it."""
    if not candidates or not asks(task):
        return None
    if any(c.lexical_ok for c in candidates) or not any(c.dense_ok for c in candidates):
        return None
    best = max(candidates, key=lambda c: c.evidence)
    if best.memory.type not in SUBJECT_TYPES:
        # A lesson or an outcome is keyed on a situation, and `fuse` does not hold it to the
        # standout test: a task in that situation is given the family of close ones. A question
        # that names the situation's subject ("who is Lukas's cello teacher" against finding him
        # a summer teacher) is held to it at any evidence: it can come that close in nearly the
        # situation's words and not be answered, so sure_floor does not let it through.
        if runner_up_gap(candidates, settings) < settings.standout:
            for c in candidates:
                c.dense_ok = False
        return None
    if settings.align_floor <= 0 or encoder is None:
        return None
    aligned = alignment(encoder, task, best.memory.text())
    if aligned < settings.align_floor:
        for c in candidates:
            c.dense_ok = False
    return aligned
