"""Several processes on one embedded store (Claude Desktop and Claude Code on one data directory).

Chroma's embedded store alone loses vectors and can corrupt its index files when two
processes write (README, "Several processes on one embedded store"); these tests prove the
coordination in writelock.py: every acknowledged write from concurrent writer processes is
found afterwards by a fresh process, and a long-lived process sees another's writes at once
(its caches and its in-memory vector index both follow).

This file is also the worker: `python tests/test_multiprocess.py write CONFIG AGENT N OUT`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORDS = (
    "invoice ledger webhook cursor gateway shard replica tenant quota token cache schema migration "
    "cron parser lexer socket buffer thread mutex kernel driver codec bitmap font glyph palette "
    "sensor drone harbor glacier orchard violin saddle lantern compass meadow canyon falcon walrus "
    "otter pepper basil saffron quartz cobalt nickel amber ivory velvet linen denim marble granite"
).split()


def write_config(root: Path, **extra: object) -> Path:
    config = root / ".alma" / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "alma:",
        "  project_id: multiproc",
        f"  data_dir: {root / 'data'}",
        "  allow_undeclared_agents: true",
        "  lifecycle:",
        "    merge_on_write: false   # every write is a new record, so every acknowledgement is countable",
        "    sweep_every_writes: 0",
    ]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def unique_fact(rng: random.Random, worker: str, i: int) -> str:
    words = " ".join(rng.sample(WORDS, 6))
    return f"Note {worker}-{i}: the {words} service listens on port {rng.randint(1024, 65535)}"


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "TOKENIZERS_PARALLELISM": "false"})
    return env


def run_writer(config: str, agent: str, count: int, out: str) -> None:
    """Write `count` memories as fast as possible, appending each acknowledged id to `out`."""
    from alma_mcp.service import ALMA

    alma = ALMA.from_config(config)
    rng = random.Random(f"{agent}-{os.getpid()}")
    with open(out, "a", encoding="utf-8") as acks:
        for i in range(count):
            if i % 4 == 3:
                memory_id = alma.add_anti_pattern(agent, unique_fact(rng, agent, i), f"It broke release {i}").id
            else:
                memory_id = alma.add_knowledge(agent, "ops", unique_fact(rng, agent, i)).id
            acks.write(memory_id + "\n")
            acks.flush()
            if i % 10 == 0:  # readers too: these load index files while the others write
                alma.retrieve(f"which port does the {rng.choice(WORDS)} service use", agent)


def run_verifier(config: str, acks: str) -> None:
    """In a fresh process: every acknowledged id is stored and found by vector search."""
    from alma_mcp.models import memory_type_of
    from alma_mcp.service import ALMA
    from alma_mcp.storage.store import MemoryStore

    alma = ALMA.from_config(config)
    store = MemoryStore.embedded(alma.config.data_dir / "chroma", alma.config.project, alma.embedder)  # searched directly
    ids = [line.strip() for line in open(acks, encoding="utf-8") if line.strip()]
    missing, unsearchable = [], []
    by_scope: dict[tuple[str, str], list[str]] = {}
    for memory_id in ids:
        try:
            memory = store.get(memory_id)
        except Exception:
            missing.append(memory_id)
            continue
        by_scope.setdefault((memory_type_of(memory_id), memory.agent), []).append(memory_id)
    for (kind, agent), members in by_scope.items():
        found = store.fetch_with_vectors(kind, agent, members)
        for memory_id in members:
            nearest = store.query(kind, agent, found[memory_id][1], 3)
            if memory_id not in [hit.memory.id for hit in nearest]:
                unsearchable.append(memory_id)
    print(json.dumps({"acknowledged": len(ids), "missing": missing, "unsearchable": unsearchable, "stats": alma.stats()}))


def seed(config: Path, real_embedder, count: int) -> list[str]:
    """`count` knowledge memories for helena, written in one batch (fast), as a starting store."""
    from alma_mcp.config import load_config
    from alma_mcp.models import DomainKnowledge, new_id
    from alma_mcp.service import ALMA

    alma = ALMA(load_config(config), embedder=real_embedder)
    rng = random.Random(7)
    memories = [
        DomainKnowledge(id=new_id("knowledge"), project="multiproc", agent="helena", domain="ops", fact=unique_fact(rng, "seed", i))
        for i in range(count)
    ]
    alma.put(memories, real_embedder.embed([m.text() for m in memories]))
    return [m.id for m in memories]


def test_concurrent_writer_processes_lose_nothing(tmp_path, real_embedder):
    """Three processes write (and read) one collection of the embedded store at once. The store
    starts with 960 memories so that the writes cross Chroma's index persistence threshold
    (1,000 records), where an uncoordinated store loses vectors (91 of 1,200 in our measurement)."""
    config = write_config(tmp_path)
    seeded = seed(config, real_embedder, 960)
    writers, per_writer = 3, 70
    acks = [tmp_path / f"acks-{n}.txt" for n in range(writers)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "write", str(config), "helena", str(per_writer), str(acks[n])],
            env=worker_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    errors = []
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        if proc.returncode != 0:
            errors.append(f"exit {proc.returncode}: {stderr[-2000:]}")
    assert not errors, errors

    written = [line for a in acks for line in a.read_text().split()]
    assert len(written) == writers * per_writer
    all_acks = tmp_path / "acks.txt"
    all_acks.write_text("\n".join(seeded + written) + "\n")
    # A fresh process opens the store (a corrupt index would crash it, so not in pytest itself).
    verify = subprocess.run(
        [sys.executable, __file__, "verify", str(config), str(all_acks)],
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert verify.returncode == 0, verify.stderr[-2000:]
    report = json.loads(verify.stdout.strip().splitlines()[-1])
    assert report["acknowledged"] == len(seeded) + writers * per_writer
    assert report["missing"] == []
    assert report["unsearchable"] == []
    helena = report["stats"]["agents"]["helena"]
    assert helena["knowledge"] + helena["anti_pattern"] == len(seeded) + writers * per_writer


def test_a_running_process_sees_another_process_write_at_once(tmp_path, real_embedder):
    """The long-lived server process has searched (its index is in memory, its result cached);
    another process then teaches a fact; the next retrieval here must return it."""
    from alma_mcp.config import load_config
    from alma_mcp.ranking.retriever import Retriever
    from alma_mcp.service import ALMA
    from alma_mcp.storage.store import MemoryStore

    config = write_config(tmp_path)

    settings = load_config(config)
    retriever = Retriever(MemoryStore.embedded(settings.data_dir / "chroma", settings.project, real_embedder), real_embedder, settings)
    alma = ALMA(settings, embedder=real_embedder, retriever=retriever)
    task = "Which port does the billing webhook gateway listen on?"
    alma.add_knowledge("helena", "ops", "The cron parser runs every night at 02:00")  # the collection exists
    before = alma.retrieve(task, "helena")
    assert [m.memory.fact for m in before.knowledge] == []
    generation = retriever.store.generation("knowledge", "helena")

    acks = tmp_path / "acks.txt"
    script = (
        "import sys; from alma_mcp.service import ALMA; "
        f"a = ALMA.from_config({str(config)!r}); "
        "m = a.add_knowledge('helena', 'ops', 'The billing webhook gateway listens on port 8443'); "
        f"open({str(acks)!r}, 'w').write(m.id)"
    )
    subprocess.run([sys.executable, "-c", script], env=worker_env(), check=True, timeout=300)
    taught = acks.read_text().strip()

    assert retriever.store.generation("knowledge", "helena") != generation
    indexes = retriever.indexes
    full_reads, catch_ups = indexes.full_reads, indexes.catch_ups
    after = alma.retrieve(task, "helena")
    assert taught in [m.memory.id for m in after.knowledge]
    # The index caught up with the other process's write; it did not read the collection again.
    assert (indexes.full_reads, indexes.catch_ups) == (full_reads, catch_ups + 1)
    assert "8443" in after.prompt
    # And the fact can be fed back on from here: the read-modify-write sees the other process's record.
    assert alma.feedback(taught, "helpful").helpful == 1
    alma.close()
    retriever.close()
    retriever.indexes.close()
    retriever.store.close()


def test_threads_reading_and_writing_at_once_do_not_deadlock(tmp_path, real_embedder):
    """The HTTP server runs handlers on many threads: retrievals (which hold the lexical index's
    lock while reading the store) and learns (which hold the write lock) interleave freely."""
    import threading

    from alma_mcp.config import load_config
    from alma_mcp.service import ALMA

    alma = ALMA(load_config(write_config(tmp_path)), embedder=real_embedder)
    tasks = [f"Fix the flaky {w} test in the checkout flow" for w in WORDS[:12]]
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(8):
                if (n + i) % 3 == 0:
                    alma.learn("helena", rng.choice(tasks), "success", f"Wait for the network to settle ({n % 2})")
                else:
                    alma.retrieve(rng.choice(tasks), "helena")
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 180
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still blocked after 180 s: a deadlock"
    assert failures == []
    assert alma.stats()["agents"]["helena"]["outcome"] == sum(1 for n in range(6) for i in range(8) if (n + i) % 3 == 0)


def test_write_lock_excludes_other_processes(tmp_path):
    """While one process holds the write lock, another cannot write; it waits, then proceeds."""
    from alma_mcp.storage.writelock import WriteLock

    data = tmp_path / "data"
    flag = tmp_path / "child-wrote"
    child = (
        "import sys, pathlib; from alma_mcp.storage.writelock import WriteLock; "
        f"lock = WriteLock(pathlib.Path({str(data)!r})); "
        f"lock.__enter__(); pathlib.Path({str(flag)!r}).write_text('x'); lock.__exit__(None, None, None)"
    )
    with WriteLock(data):
        proc = subprocess.Popen([sys.executable, "-c", child], env=worker_env())
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the child keeps waiting for as long as we hold the lock
            assert not flag.exists()
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None and not flag.exists()
    assert proc.wait(timeout=60) == 0
    assert flag.exists()


def uncoordinated() -> None:
    """Switch the protocol off in this worker (manual check that the test can fail):
    `MP_UNCOORDINATED=1 pytest tests/test_multiprocess.py -k lose_nothing` must fail."""
    from alma_mcp.storage import writelock

    writelock.SharedClient._stale = lambda self: self._raw is None  # type: ignore[method-assign]
    writelock.SharedClient._fresh = lambda self: self._raw if self._raw is not None else self._reopen_first()  # type: ignore[method-assign]
    writelock.SharedClient._reopen_first = lambda self: setattr(self, "_raw", self._open()) or self._raw  # type: ignore[attr-defined]
    writelock.DirectoryLock.acquire = lambda self, exclusive: None  # type: ignore[method-assign]
    writelock.DirectoryLock.release = lambda self, exclusive: None  # type: ignore[method-assign]
    writelock.DirectoryLock.holds_write = lambda self: False  # type: ignore[method-assign]
    writelock.DirectoryLock.holds_any = lambda self: False  # type: ignore[method-assign]


if __name__ == "__main__":
    if os.environ.get("MP_UNCOORDINATED"):
        uncoordinated()
    if sys.argv[1] == "write":
        run_writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "verify":
        run_verifier(sys.argv[2], sys.argv[3])
