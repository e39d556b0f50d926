"""The write journal (alma_mcp/storage/journal.py): a write is durable once journaled, seen at once
by the process that made it and by any other, replayed after a crash, and never lost or applied
twice when Chroma or the journal itself misbehaves.

Most tests hold the background applier back (QUIET_SECONDS and MAX_DELAY_SECONDS set to an hour),
so that what they check happens while the write is in the journal and not yet in Chroma.
"""

from __future__ import annotations

import signal
import time
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alma_mcp.errors import NotFound, StorageError
from alma_mcp.storage import journal
from alma_mcp.storage.store import collection_name
from helpers import server_env

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
HOLD_BACK = (
    "from alma_mcp.storage import journal\n"
    "journal.QUIET_SECONDS = journal.MAX_DELAY_SECONDS = 3600.0\n"
)


@pytest.fixture
def held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The applier of this process waits an hour: writes stay in the journal until flushed."""
    monkeypatch.setattr(journal, "QUIET_SECONDS", 3600.0)
    monkeypatch.setattr(journal, "MAX_DELAY_SECONDS", 3600.0)


def in_chroma(store, memory_type: str, agent: str, ids: list[str]) -> list[str]:
    """The ids Chroma itself holds, the journal's waiting entries aside."""
    raw = store.client.shared.get_collection(collection_name(store.project, memory_type, agent))
    return list(raw.get(ids=ids, include=[])["ids"])


def child(script: str, *args: str) -> subprocess.Popen:
    code = f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n" + HOLD_BACK + script
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=server_env()
    )


def test_a_write_acknowledged_then_killed_is_replayed_into_chroma_at_the_next_open(tmp_path, make_parts) -> None:
    data = tmp_path / "data"
    proc = child(
        "from pathlib import Path\n"
        "import time\n"
        "from helpers import build_config\n"
        "from alma_mcp.service import ALMA\n"
        "alma = ALMA(build_config(Path(sys.argv[1])))\n"
        "fact = alma.add_knowledge('helena', 'ops', 'The nightly backup job writes to /srv/backup on port 8873.')\n"
        "print(fact.id, alma.health()['write_journal']['waiting'], flush=True)\n"
        "time.sleep(600)\n",
        str(data),
    )
    try:
        line = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(line) == 2, "the child did not acknowledge its write"
    memory_id, waiting = line
    assert waiting == "1", "the write was acknowledged before it was in Chroma: only the journal held it"

    parts = make_parts(data_dir=data)
    assert in_chroma(parts.store, "knowledge", "helena", [memory_id]) == [memory_id]  # replayed at open
    assert parts.alma.get(memory_id).memory.fact.startswith("The nightly backup job")
    assert parts.alma.health()["write_journal"]["waiting"] == 0
    assert (data / "chroma" / journal.LOG_FILE).stat().st_size == 0
    assert (data / "chroma" / journal.LOG_FILE).stat().st_mode & 0o777 == 0o600


def test_reads_of_the_writing_process_see_its_writes_before_chroma_has_them(parts, held_back) -> None:
    alma, store = parts.alma, parts.store
    kept = alma.add_knowledge("helena", "payments", "Stripe test card 4242 4242 4242 4242 always succeeds.")
    gone = alma.add_knowledge("helena", "payments", "Stripe card 4000 0000 0000 0002 is always declined.")
    assert in_chroma(store, "knowledge", "helena", [kept.id, gone.id]) == []
    assert alma.health()["write_journal"]["waiting"] >= 2

    # Every kind of read the store makes: by id, a listing, a count, a nearest-neighbour search.
    assert store.get(kept.id).fact == kept.fact
    assert {m.id for m in store.list("knowledge", "helena")} == {kept.id, gone.id}
    assert store.count("knowledge", "helena") == 2
    vector = alma.embedder.embed_query("Which Stripe card always succeeds?")
    assert store.query("knowledge", "helena", vector, 1)[0].memory.id == kept.id
    assert kept.id in [item.memory.id for item in alma.retrieve("Which Stripe card always succeeds?", "helena").knowledge]

    # A metadata-only write and a removal over writes still waiting.
    alma.feedback(kept.id, "helpful", "helena")
    alma.forget([gone.id], dry_run=False, purge=True)
    assert store.get(kept.id).helpful == 1
    with pytest.raises(NotFound):
        store.get(gone.id)
    assert store.count("knowledge", "helena") == 1
    assert [hit.memory.id for hit in store.query("knowledge", "helena", vector, 5)] == [kept.id]

    store.flush_journal()
    assert in_chroma(store, "knowledge", "helena", [kept.id, gone.id]) == [kept.id]
    assert store.get(kept.id).helpful == 1
    assert alma.health()["write_journal"]["waiting"] == 0


def test_another_process_reads_a_write_still_in_the_journal(tmp_path, make_parts, held_back) -> None:
    data = tmp_path / "data"
    reader = child(
        "from pathlib import Path\n"
        "from helpers import build_config\n"
        "from alma_mcp.service import ALMA\n"
        "alma = ALMA(build_config(Path(sys.argv[1])))\n"
        "print(alma.count(), flush=True)\n"  # its store is open before the write
        "memory_id = sys.stdin.readline().strip()\n"
        "print(alma.get(memory_id).memory.fact, flush=True)\n"
        "alma.close()\n",
        str(data),
    )
    try:
        parts = make_parts(data_dir=data)
        assert reader.stdout.readline().strip() == "0"
        fact = parts.alma.add_knowledge("helena", "ops", "Deploys to the eu-west cluster need the VPN profile ops-2.")
        assert parts.alma.health()["write_journal"]["waiting"] == 1
        reader.stdin.write(fact.id + "\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == fact.fact
        assert reader.wait(timeout=60) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
    # The reader applied it (it was not in Chroma when asked); the writer sees it applied and still reads it.
    assert in_chroma(parts.store, "knowledge", "helena", [fact.id]) == [fact.id]
    assert parts.alma.health()["write_journal"]["waiting"] == 0
    assert parts.store.get(fact.id).fact == fact.fact


def test_a_damaged_entry_is_reported_skipped_and_never_applied(parts, held_back) -> None:
    alma, store = parts.alma, parts.store
    facts = [alma.add_knowledge("helena", "ops", f"Runbook step {i}: restart the {word} worker first.")
             for i, word in enumerate(["billing", "search", "mailer"])]
    log_file = store.client.path
    data = bytearray(log_file.read_bytes())
    parsed = journal.parse(bytes(data), 0)
    ends = [end for end, entry in parsed.entries if entry.op == "upsert" and entry.ids[0] in {f.id for f in facts}]
    assert len(ends) == 3
    data[ends[0] + 40] ^= 0x01  # a bit flipped inside the second entry's payload
    log_file.write_bytes(bytes(data))

    store.flush_journal()
    assert in_chroma(store, "knowledge", "helena", [f.id for f in facts]) == [facts[0].id, facts[2].id]
    health = alma.health()
    assert health["write_journal"]["damaged_entries_skipped"] == 1 and health["write_journal"]["waiting"] == 0
    assert "1 damaged write journal entries were skipped" in health["status"]
    with pytest.raises(NotFound):
        store.get(facts[1].id)
    assert log_file.stat().st_size == 0

    store.flush_journal()  # nothing left: the damaged entry is neither reported nor applied again
    assert alma.health()["write_journal"]["damaged_entries_skipped"] == 1
    assert store.count("knowledge", "helena") == 2


def test_a_failing_apply_is_kept_retried_and_reported_in_health(parts, held_back, monkeypatch) -> None:
    import chromadb.api.models.Collection as chroma_collection

    alma, store = parts.alma, parts.store
    alma.add_knowledge("helena", "ops", "The staging database is rebuilt every Sunday at 03:00.")
    store.flush_journal()  # the collection exists and holds a record: only the next write fails
    real_upsert = chroma_collection.Collection.upsert

    def broken(self, *args, **kwargs):
        raise RuntimeError("database disk image is malformed")

    monkeypatch.setattr(chroma_collection.Collection, "upsert", broken)
    fact = alma.add_knowledge("helena", "ops", "The VPN gateway rotates its certificate on the first of the month.")
    with pytest.raises(StorageError, match="kept and retried"):
        store.flush_journal()
    health = alma.health()
    assert "not applied to Chroma" in health["status"] and "malformed" in health["status"]
    assert health["write_journal"]["waiting"] == 1
    assert store.get(fact.id).fact == fact.fact  # still read from the journal

    monkeypatch.setattr(chroma_collection.Collection, "upsert", real_upsert)
    store.flush_journal()
    assert in_chroma(store, "knowledge", "helena", [fact.id]) == [fact.id]
    health = alma.health()
    assert health["status"] == "ok" and health["write_journal"]["apply_error"] is None


def test_the_background_applier_brings_writes_to_chroma_without_a_flush(parts, monkeypatch) -> None:
    monkeypatch.setattr(journal, "QUIET_SECONDS", 0.0)
    monkeypatch.setattr(journal, "MAX_DELAY_SECONDS", 0.0)
    alma, store = parts.alma, parts.store
    fact = alma.add_knowledge("helena", "ops", "Log rotation keeps fourteen days of nginx access logs.")
    applied = store.client.applied_event
    assert applied.wait(timeout=30), "the applier never applied the write"
    assert in_chroma(store, "knowledge", "helena", [fact.id]) == [fact.id]


def test_a_write_chroma_would_refuse_is_refused_before_it_is_journaled(parts) -> None:
    store = parts.store
    parts.alma.add_knowledge("helena", "ops", "Backups are encrypted with the ops age key.")
    memory = store.list("knowledge", "helena")[0]
    waiting = parts.alma.health()["write_journal"]["waiting"]
    with pytest.raises(StorageError, match="dimension"):
        store.put([memory], np.ones((1, 7), dtype=np.float32), key_embeddings=np.ones((1, 7), dtype=np.float32))
    assert parts.alma.health()["write_journal"]["waiting"] == waiting
    store.flush_journal()
    assert parts.alma.health()["status"] == "ok"


def test_a_stream_of_writes_slower_than_the_quiet_pause_is_applied_together(parts, monkeypatch) -> None:
    """Writes every 120 ms (a session's calls on a busy machine) are not one apply each: the applier
    waits for twice their spacing without a write, within MAX_DELAY_SECONDS, so the calls of the
    stream do not each wait for Chroma's apply of the one before (Chroma holds the GIL)."""
    from alma_mcp.models import DomainKnowledge, new_id

    monkeypatch.setattr(journal, "QUIET_SECONDS", 0.05)
    monkeypatch.setattr(journal, "MAX_DELAY_SECONDS", 5.0)
    alma, store, _ = parts
    applies: list[str] = []
    real_apply_group = store.client._apply_group

    def counting(entries):  # noqa: ANN001 - journal.Entry
        applies.append(entries[0].collection)
        return real_apply_group(entries)

    monkeypatch.setattr(store.client, "_apply_group", counting)
    vector = store.embedder.embed(["a fact"])
    ids = []
    for i in range(8):
        memory = DomainKnowledge(id=new_id("knowledge"), project=store.project, agent="victor", domain="ops", fact=f"Fact {i}")
        store.put([memory], vector, key_embeddings=vector)
        ids.append(memory.id)
        time.sleep(0.12)  # longer than QUIET_SECONDS: the previous rule applied in each of these pauses
    assert len(applies) <= 2, f"{len(applies)} applies for a stream of 8 writes"
    deadline = time.monotonic() + 10
    while sorted(in_chroma(store, "knowledge", "victor", ids)) != sorted(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(in_chroma(store, "knowledge", "victor", ids)) == sorted(ids), "applied once the stream stopped"


def test_a_count_is_right_when_the_applier_runs_between_its_reads_of_chroma(parts, held_back) -> None:
    """A count adds the journal's waiting entries to what Chroma holds; entries applied while it
    reads (by this process's applier or another's) must be counted once, not twice or not at all."""
    alma, store = parts.alma, parts.store
    for i in range(3):
        alma.add_knowledge("helena", "ops", f"Backup job {i} writes to /srv/backup-{i} every night at {i + 1} am.")
    collection = store._collection("knowledge", "helena", create=False)
    raw = collection._col
    applied = []

    class ApplyingAfterEachRead:
        """Chroma's collection, with the journal applied right after the first read of it."""

        def __getattr__(self, name):
            method = getattr(raw, name)
            if name not in ("count", "get"):
                return method

            def read(*args, **kwargs):
                result = method(*args, **kwargs)
                if not applied:
                    applied.append(name)
                    store.flush_journal()
                return result

            return read

    collection._col = ApplyingAfterEachRead()
    try:
        assert collection.count() == 3
    finally:
        collection._col = raw
    assert applied, "the journal was applied while counting"
    assert in_chroma(store, "knowledge", "helena", [m.id for m in store.list("knowledge", "helena")]) != []
    assert store.count("knowledge", "helena") == 3
