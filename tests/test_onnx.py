"""Small inputs through ONNX Runtime: same vectors as torch, a bad file never used, stdout clean.

The sentence-transformers path (backend 'torch', from alma-mcp[models]); skipped without it.
The real model throughout. This module's embedder prepares its ONNX copy in the cache folder
that conftest.py points ALMA_MCP_CACHE_DIR at; tests that need an export of their own point it
at an empty folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="needs alma-mcp[models]")

from alma_mcp.embedding import onnx_encoder  # noqa: E402
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder, resolve_model  # noqa: E402
from alma_mcp.embedding.onnx_encoder import OnnxEncoder, prepare  # noqa: E402
from helpers import ONNX_CACHE, server_env, write_config  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.models]


@pytest.fixture(scope="module")
def real_embedder() -> SentenceTransformerEmbedder:
    """The default model through sentence-transformers, with its ONNX copy settled."""
    embedder = SentenceTransformerEmbedder(backend="torch")
    embedder.wait(timeout=300)
    embedder.wait_small(timeout=600)
    return embedder

TEXTS = [
    "Flaky Playwright test: the Save button is clicked before the dialog has rendered",
    "ERR_CONNECTION_REFUSED 127.0.0.1:8443",
    "the user prefers short reports",
    "Run the migration in small batches during a low-traffic window with a lock timeout",
    "a fifth text, so that this batch goes to torch",
]


def torch_vectors(embedder: SentenceTransformerEmbedder, texts: list[str]) -> np.ndarray:
    return np.asarray(embedder._model.encode(texts, normalize_embeddings=True, show_progress_bar=False))  # type: ignore[union-attr]


def test_small_inputs_go_through_onnx_with_the_same_vectors(real_embedder: SentenceTransformerEmbedder):
    assert real_embedder.wait_small(timeout=600) == "onnx"
    for n in (1, 2, 4):
        got = real_embedder.embed(TEXTS[:n])
        assert got.dtype == np.float32 and got.shape == (n, real_embedder.dim)
        assert np.abs(got - torch_vectors(real_embedder, TEXTS[:n])).max() < 1e-5
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # A query goes the same way (and is cached as before).
    assert np.abs(real_embedder.embed_query(TEXTS[1]) - torch_vectors(real_embedder, TEXTS[1:2])[0]).max() < 1e-5


def test_onnx_is_used_and_bulk_stays_on_torch(real_embedder: SentenceTransformerEmbedder, monkeypatch):
    assert real_embedder.wait_small(timeout=600) == "onnx"
    calls: list[int] = []
    small = real_embedder._small
    original = small.encode  # type: ignore[union-attr]
    monkeypatch.setattr(small, "encode", lambda texts: calls.append(len(texts)) or original(texts))
    real_embedder.embed(TEXTS[:3])
    real_embedder.embed(TEXTS)  # five texts: a bulk call
    assert calls == [3]


def test_threads_at_once_get_the_right_vectors(real_embedder: SentenceTransformerEmbedder):
    """Small calls on many threads, with a bulk torch call in the middle (they share a tokenizer
    unless the ONNX path keeps its own copy)."""
    assert real_embedder.wait_small(timeout=600) == "onnx"
    expected = torch_vectors(real_embedder, TEXTS)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(10):
                k = (i + j) % len(TEXTS)
                if i == 0 and j == 5:
                    assert np.abs(real_embedder.embed(TEXTS * 4)[:5] - expected).max() < 1e-5
                assert np.abs(real_embedder.embed([TEXTS[k]])[0] - expected[k]).max() < 1e-5
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


def test_a_broken_cached_file_is_exported_again(real_embedder: SentenceTransformerEmbedder, tmp_path, monkeypatch):
    monkeypatch.setenv("ALMA_MCP_CACHE_DIR", str(tmp_path))
    target = resolve_model(real_embedder.name)
    path = tmp_path / "onnx" / f"{onnx_encoder._fingerprint(real_embedder._model, target)}.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx file")
    # Files of other models or an older torch: one unused for 40 days goes, one used yesterday
    # stays; so does an export of another server still being written, but not one that died.
    now = time.time()
    stale, recent = path.parent / "stale-model.onnx", path.parent / "recent-model.onnx"
    dead, live = path.parent / "x.onnx1234.part", path.parent / "y.onnx5678.part"
    for sibling, days in ((stale, 40), (recent, 1), (dead, 2), (live, 0)):
        sibling.write_bytes(b"x")
        os.utime(sibling, (now - days * 86400, now - days * 86400))
    encoder = prepare(real_embedder._model, target, "cpu")
    assert isinstance(encoder, OnnxEncoder) and encoder.path == path
    assert path.stat().st_size > 1_000_000  # the real export replaced it
    assert np.abs(encoder.encode(TEXTS[:2]) - torch_vectors(real_embedder, TEXTS[:2])).max() < 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, recent.name, live.name])
    assert now - path.stat().st_mtime < 60  # marked as in use


def test_vectors_that_differ_from_torch_are_never_used(real_embedder: SentenceTransformerEmbedder, tmp_path, monkeypatch, caplog):
    """The file is checked against torch before use: a copy that pools differently (here: told the
    wrong pooling) fails, is exported once more, fails again, and torch stays in charge."""
    monkeypatch.setenv("ALMA_MCP_CACHE_DIR", ONNX_CACHE)
    monkeypatch.setattr(onnx_encoder, "_pooling", lambda model: "cls")
    exports: list[str] = []
    monkeypatch.setattr(onnx_encoder, "_export_in_child", lambda target, out: exports.append(target) or None)
    target = resolve_model(real_embedder.name)
    cached = Path(ONNX_CACHE) / "onnx" / f"{onnx_encoder._fingerprint(real_embedder._model, target)}.onnx"
    assert cached.is_file()  # the session embedder's own, valid for mean pooling
    kept = cached.read_bytes()
    try:
        assert prepare(real_embedder._model, target, "cpu") is None
        assert len(exports) == 1
        assert "staying on torch" in caplog.text
    finally:
        cached.write_bytes(kept)  # the session embedder's file, for later tests


def test_onnx_off_or_another_device_keeps_torch(make_alma):
    alma = make_alma()
    assert alma.config.alma.embedding.onnx is True
    off = SentenceTransformerEmbedder(onnx=False, backend="torch")
    assert off.wait_small(timeout=300) == "torch"
    assert off.small_backend == "torch"
    assert prepare(object(), "any", "cuda") is None


def test_stdout_stays_protocol_only_while_the_model_is_exported(tmp_path):
    """A stdio server on an empty cache exports the model in a child process while it serves:
    nothing of that reaches stdout, and it answers throughout."""
    config = write_config(tmp_path)
    config.write_text(config.read_text(encoding="utf-8") + "  embedding:\n    backend: torch\n", encoding="utf-8")
    cache = tmp_path / "cache"
    env = server_env() | {"ALMA_MCP_CACHE_DIR": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "alma_mcp", "--config", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def call(message: dict) -> dict:
        proc.stdin.write((json.dumps(message) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        while True:
            reply = json.loads(proc.stdout.readline())  # type: ignore[union-attr]  # must be JSON-RPC
            assert reply["jsonrpc"] == "2.0"
            if reply.get("id") == message["id"]:
                return reply

    retrieve = {"name": "alma_retrieve", "arguments": {"agent": "helena", "task": "test the signup form"}}
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(line.decode() for line in proc.stderr), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        call({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw-test", "version": "0"}}})
        proc.stdin.write(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n')
        assert call({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": retrieve})["result"]["isError"] is False
        deadline = time.monotonic() + 300
        n = 3
        while not any("small inputs through ONNX Runtime" in line for line in stderr):
            assert time.monotonic() < deadline, "the export never finished: " + "".join(stderr)
            assert call({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": retrieve})["result"]["isError"] is False
            n += 1
            time.sleep(1)
        assert list((cache / "onnx").glob("*.onnx"))
        assert call({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": retrieve})["result"]["isError"] is False
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=60)
        reader.join(10)
    assert "Traceback" not in "".join(stderr)
    assert proc.returncode == 0


@pytest.mark.parametrize("linger", [0.0, 0.25, 0.5])
def test_a_process_that_exits_while_the_onnx_copy_loads_exits_cleanly(real_embedder, linger):
    """A script that embeds a text and ends at once exits while the background thread loads the
    ONNX file: onnxruntime used to abort it (SIGABRT); exit now waits for the load."""
    script = (
        "from alma_mcp.embedding.embedder import SentenceTransformerEmbedder as E; import time; "
        f"e = E(backend='torch'); e.wait(); e.embed(['x']); time.sleep({linger})"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300, env=server_env())
    assert done.returncode == 0, done.stderr.decode()[-500:]
    assert b"terminate called" not in done.stderr
