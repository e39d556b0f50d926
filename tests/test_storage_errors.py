"""A storage failure is an error the caller sees, never an empty memory."""

from __future__ import annotations

import errno

import pytest
from chromadb.errors import InternalError
from mcp import Client

from alma_mcp.errors import StorageError
from alma_mcp.frontends.server import create_server
from alma_mcp.storage.journal import JournaledClient
from alma_mcp.storage.writelock import SharedCollection


def break_collection_reads(store, monkeypatch) -> None:
    """Every attempt to open an existing collection fails as a locked or broken database would."""

    def failing(name, **kwargs):
        raise InternalError("database is locked")

    monkeypatch.setattr(store.client, "get_collection", failing)


def test_a_failing_read_is_not_an_empty_collection(parts, monkeypatch):
    break_collection_reads(parts.store, monkeypatch)
    with pytest.raises(StorageError, match="database is locked"):
        parts.alma.count("heuristic", "zed")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_client_sees_the_storage_error_instead_of_no_memories(parts, monkeypatch, mode):
    break_collection_reads(parts.store, monkeypatch)
    async with Client(create_server(alma=parts.alma), mode=mode) as client:
        result = await client.call_tool("alma_retrieve", {"task": "deploy the billing service", "agent": "zed"})
    assert result.is_error
    assert "database is locked" in result.content[0].text


def test_a_collection_never_written_is_still_empty(alma):
    assert alma.count("heuristic", "zed") == 0
    assert len(alma.retrieve("deploy the billing service", agent="zed")) == 0


def fail_every_write(monkeypatch) -> None:
    """Every write fails as on a full disk (reads keep working): the write journal's appends, where a
    write is acknowledged, and Chroma's own writes, where the journal applies it."""

    def failing(self, method, *args, **kwargs):
        raise InternalError("database or disk is full")

    def journal_full(self, fd, data, end):
        raise OSError(errno.ENOSPC, "No space left on device: database or disk is full")

    monkeypatch.setattr(SharedCollection, "_write", failing)
    monkeypatch.setattr(JournaledClient, "_write_entry", journal_full)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_failing_write_reaches_the_client_and_damages_nothing(alma, monkeypatch, mode):
    fact = alma.add_knowledge("zed", "billing", "The billing service deploys blue-green behind the canary gate.")
    outcomes = alma.count("outcome", "zed")
    fail_every_write(monkeypatch)
    async with Client(create_server(alma=alma), mode=mode) as client:
        result = await client.call_tool(
            "alma_learn",
            {"agent": "zed", "task": "deploy billing", "outcome": "success", "strategy_used": "blue-green"},
        )
        assert result.is_error
        assert "could not write" in result.content[0].text and "disk is full" in result.content[0].text
        result = await client.call_tool("alma_forget", {"memory_ids": [fact.id], "agent": "zed", "dry_run": False})
        assert result.is_error and "disk is full" in result.content[0].text
    monkeypatch.undo()
    assert alma.count("outcome", "zed") == outcomes
    assert alma.get(fact.id).memory == fact and not alma.get(fact.id).memory.archived
    found = alma.retrieve("how does billing deploy", "zed", memory_types=["knowledge"])
    assert [m.memory.id for m in found.knowledge] == [fact.id]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_store_that_cannot_list_its_collections_is_an_error_not_zero_memories(parts, monkeypatch, mode):
    alma = parts.alma
    alma.add_knowledge("zed", "billing", "The billing service deploys blue-green behind the canary gate.")

    def failing(*args, **kwargs):
        raise InternalError("database disk image is malformed")

    monkeypatch.setattr(parts.store.client, "list_collections", failing)
    async with Client(create_server(alma=alma), mode=mode) as client:
        result = await client.call_tool("alma_stats", {"agent": "zed"})
    assert result.is_error
    assert "could not list collections" in result.content[0].text and "malformed" in result.content[0].text
