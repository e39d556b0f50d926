"""The write journal's file format and its overlay rules, as pure functions (storage/journal.py)."""

from __future__ import annotations

import numpy as np
import pytest

from alma_mcp.storage.journal import Entry, _calls, _compose, _groups, _Pending, encode, parse

pytestmark = pytest.mark.fast


def entries() -> list[Entry]:
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    return [
        Entry(1, "alma.p.a.knowledge", "upsert", ["k1", "k2"], [{"n": 1, "s": "é"}, {"n": 2.5, "b": True}], ["one", "two"], vectors),
        Entry(2, "alma.p.a.knowledge", "update", ["k1"], [{"n": 3}]),
        Entry(3, "alma.p.a.outcome", "delete", ["o1"]),
    ]


def test_entries_come_back_exactly_as_written() -> None:
    data = b"".join(encode(e) for e in entries())
    parsed = parse(data, 100)
    assert parsed.damaged == 0 and parsed.whole_end == 100 + len(data)
    back = [entry for _, entry in parsed.entries]
    for got, want in zip(back, entries()):
        assert (got.seq, got.collection, got.op, got.ids, got.metadatas, got.documents) == (
            want.seq, want.collection, want.op, want.ids, want.metadatas, want.documents)
        assert (got.embeddings is None) == (want.embeddings is None)
    assert np.array_equal(back[0].embeddings, entries()[0].embeddings)  # float32, bit for bit


def test_a_tail_cut_short_is_not_an_entry_and_not_damage() -> None:
    whole = b"".join(encode(e) for e in entries()[:2])
    cut = encode(entries()[2])[:-3]
    parsed = parse(whole + cut, 0)
    assert [e.seq for _, e in parsed.entries] == [1, 2] and parsed.damaged == 0
    assert parsed.whole_end == len(whole)


def test_a_damaged_entry_is_counted_and_the_next_ones_still_read() -> None:
    parts = [bytearray(encode(e)) for e in entries()]
    parts[1][20] ^= 0xFF  # inside the payload: the CRC no longer matches
    parsed = parse(b"".join(bytes(p) for p in parts), 0)
    assert [e.seq for _, e in parsed.entries] == [1, 3] and parsed.damaged == 1
    parts[1][0] ^= 0xFF  # the marker itself: found again at the next entry
    parsed = parse(b"".join(bytes(p) for p in parts), 0)
    assert [e.seq for _, e in parsed.entries] == [1, 3] and parsed.damaged == 1


def test_the_overlay_follows_chromas_rules() -> None:
    stored = ({"n": 0, "old": "kept"}, "stored", np.ones(3, dtype=np.float32))
    pending: dict[str, _Pending] = {}
    _compose(pending, Entry(1, "c", "upsert", ["a"], [{"n": 1}], ["new"], np.zeros((1, 3), np.float32)))
    meta, document, vector = pending["a"].over(stored)
    assert meta == {"n": 1, "old": "kept"} and document == "new" and not vector.any()  # upsert merges metadata
    _compose(pending, Entry(2, "c", "update", ["missing"], [{"n": 5}]))
    assert pending["missing"].over(None) is None  # an update of a record Chroma lacks does nothing
    _compose(pending, Entry(3, "c", "delete", ["a"]))
    assert pending["a"].over(stored) is None
    _compose(pending, Entry(4, "c", "update", ["a"], [{"n": 9}]))
    assert pending["a"].over(stored) is None  # updating a deleted record does nothing either
    _compose(pending, Entry(5, "c", "upsert", ["a"], [{"n": 2}], ["again"], np.zeros((1, 3), np.float32)))
    assert pending["a"].over(stored)[0] == {"n": 2}  # deleted then written: nothing of the old record


def test_waiting_entries_become_a_few_calls_per_collection_with_their_net_effect() -> None:
    v = np.eye(3, dtype=np.float32)
    stream = [
        Entry(1, "outcome", "upsert", ["o1"], [{"a": 1}], ["t"], v[:1]),
        Entry(2, "lesson", "upsert", ["h1"], [{"a": 1}], ["t"], v[:1]),
        Entry(3, "outcome", "upsert", ["o2"], [{"a": 1}], ["t"], v[1:2]),
        Entry(4, "lesson", "update", ["h0"], [{"c": 3}]),
        Entry(5, "lesson", "upsert", ["h1"], [{"b": 2}], ["t2"], v[2:3]),
        Entry(6, "lesson", "update", ["h1"], [{"c": 3}]),
        Entry(7, "lesson", "delete", ["h2"]),
        Entry(8, "lesson", "upsert", ["h2"], [{"d": 4}], ["back"], v[:1]),
    ]
    groups = list(_groups(stream))
    assert [[e.seq for e in g] for g in groups] == [[1, 3], [2, 4, 5, 6, 7, 8]]
    assert [(op, ids) for op, ids, *_ in _calls(groups[0])] == [("upsert", ["o1", "o2"])]
    calls = _calls(groups[1])
    assert [(op, ids) for op, ids, *_ in calls] == [("delete", ["h2"]), ("upsert", ["h1", "h2"]), ("update", ["h0"])]
    _, _, vectors, documents, metas = calls[1]
    assert documents == ["t2", "back"] and metas == [{"a": 1, "b": 2, "c": 3}, {"d": 4}]
    assert np.array_equal(vectors, np.stack([v[2], v[0]]))
    assert calls[2][3] is None and calls[2][4] == [{"c": 3}]  # an update of metadata alone
