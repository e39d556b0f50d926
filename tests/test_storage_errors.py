"""A storage failure is an error the caller sees, never an empty memory."""

from __future__ import annotations

import pytest
from chromadb.errors import InternalError
from mcp import Client

from alma_mcp.errors import StorageError
from alma_mcp.server import create_server


def break_collection_reads(alma, monkeypatch) -> None:
    """Every attempt to open an existing collection fails as a locked or broken database would."""

    def failing(name, **kwargs):
        raise InternalError("database is locked")

    monkeypatch.setattr(alma.store.client, "get_collection", failing)


def test_a_failing_read_is_not_an_empty_collection(alma, monkeypatch):
    break_collection_reads(alma, monkeypatch)
    with pytest.raises(StorageError, match="database is locked"):
        alma.store.count("heuristic", "zed")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_client_sees_the_storage_error_instead_of_no_memories(alma, monkeypatch, mode):
    break_collection_reads(alma, monkeypatch)
    async with Client(create_server(alma=alma), mode=mode) as client:
        result = await client.call_tool("alma_retrieve", {"task": "deploy the billing service", "agent": "zed"})
    assert result.is_error
    assert "database is locked" in result.content[0].text


def test_a_collection_never_written_is_still_empty(alma):
    assert alma.store.count("heuristic", "zed") == 0
    assert len(alma.retrieve("deploy the billing service", agent="zed")) == 0
