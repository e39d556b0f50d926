"""The encoder layers of a `bert.BertEncoder` as an ONNX graph, run by ONNX Runtime.

For the few tokens of a query, numpy spends as long dispatching some 150 small operations as
multiplying; ONNX Runtime runs the same six layers about twice as fast on one thread, and faster
again on two. The graph is written here, from the weights already in memory, as ONNX protobuf
bytes: exporting needs torch, and the `onnx` package (31 MB) would only be used to spell a few
message types. It holds the layers alone; the word-embedding lookup, the pooling and the
normalisation stay in numpy, so the 47 MB embedding table is not copied. Without onnxruntime the
encoder simply stays in numpy.

Each layer is written with ONNX Runtime's fused operators for BERT (`Attention`,
`SkipLayerNormalization`, `BiasGelu`, of its `com.microsoft` domain, which every CPU build has):
seven operators a layer instead of about twenty-five. Its optimiser fuses only some of them from
plain ONNX operators (the fused attention comes from exporters' tools, not at run time), and with
threads that sleep between operators rather than spin, each operator of a call costs a wake-up:
a query embedded in about 5-7 ms against 7-10 on the plain graph (two threads, a busy 2-core
machine; bench/perf_breakdown.py). Same arithmetic as bert.py: vectors agree with it and with
sentence-transformers within 1e-6 (tests/test_bert.py). `plain_model_bytes` writes the graph of
plain operators, used where ONNX Runtime refuses the fused one.
"""

from __future__ import annotations

import atexit
import logging
import os
import struct
import threading
from typing import Any, Protocol, Sequence

import numpy as np

log = logging.getLogger("alma_mcp")


class BertEncoder(Protocol):
    """What this module reads of a `bert.BertEncoder` (bert.py imports this module, not the reverse)."""

    dim: int
    heads: int
    eps: float

    @property
    def layers(self) -> Sequence[Any]: ...

# ONNX's protobuf field numbers (onnx/onnx.proto) and the few enum values used.
_FLOAT, _INT32, _INT64 = 1, 6, 7  # TensorProto.DataType
_CONTRIB = "com.microsoft"
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType
IR_VERSION, OPSET = 8, 17  # LayerNormalization is opset 17


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _key(field, 2) + _varint(len(data)) + data


def _float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _message(field: int, parts: list[Any]) -> list[Any]:
    """A length-delimited field around `parts` (bytes or buffers), left in parts: a weight is
    copied once, by the single join that ends model_bytes, instead of once per enclosing message
    (concatenating the 42 MB at each level took half a second of the start-up, all of it holding
    the GIL)."""
    return [_key(field, 2) + _varint(sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)), *parts]


def _tensor(name: str, array: np.ndarray) -> list[Any]:
    kind = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}[array.dtype]
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).reshape(-1)  # a view where it already is
    return [dims + _int(2, kind) + _bytes(8, name), *_message(9, [raw.data.cast("B")])]


def _attribute(name: str, value: float | int | tuple[int, ...]) -> bytes:
    if isinstance(value, float):
        return _bytes(1, name) + _float(2, value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, int):
        return _bytes(1, name) + _int(3, value) + _int(20, _ATTR_INT)
    return _bytes(1, name) + b"".join(_int(8, v) for v in value) + _int(20, _ATTR_INTS)


def _value_info(name: str, dims: tuple[int | str, ...], kind: int = 1) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor_type = _int(1, kind) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


class _Graph:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.nodes: list[bytes] = []
        self.initializers: list[Any] = []  # message parts: bytes, and the weights as buffers
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers += _message(5, _tensor(name, array))
        return name

    def op(self, op_type: str, inputs: list[str], domain: str = "", **attributes: Any) -> str:
        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        body = b"".join(_bytes(1, i) for i in inputs) + _bytes(2, output) + _bytes(3, output) + _bytes(4, op_type)
        body += b"".join(_bytes(5, _attribute(k, v)) for k, v in attributes.items())
        if domain:
            body += _bytes(7, domain)
        self.nodes.append(_bytes(1, body))
        return output

    def model(self, last: str, inputs: list[bytes], domains: list[tuple[str, int]]) -> bytes:
        """The model: this graph, its `inputs` (value infos), output `last` as `last`."""
        self.nodes.append(_bytes(1, _bytes(1, last) + _bytes(2, "last") + _bytes(3, "output") + _bytes(4, "Identity")))
        dim = self.dim
        graph = [b"".join(self.nodes) + _bytes(2, "bert_layers"), *self.initializers,
                 b"".join(_bytes(11, i) for i in inputs) + _bytes(12, _value_info("last", ("batch", "tokens", dim)))]
        head = _int(1, IR_VERSION) + _bytes(2, "alma-mcp")
        imports = b"".join(_bytes(8, _bytes(1, domain) + _int(2, version)) for domain, version in domains)
        return b"".join([head, *_message(7, graph), imports])


def model_bytes(encoder: "BertEncoder") -> bytes:
    """An ONNX model of the encoder's layers in ONNX Runtime's fused operators: inputs `hidden`
    (batch, tokens, dim), the embeddings after their layer norm, and `mask` (batch, tokens, int32),
    1 for a token and 0 for padding; output `last` (batch, tokens, dim). The attention's query,
    key and value weights are the layer's `qkv_w` as it stands (their columns in that order, as
    the operator wants them); its padding gets -10000 before the softmax, whose exp is exactly 0
    in float32, as the plain graph's most negative float is."""
    g = _Graph(encoder.dim)
    x = "hidden"
    for n, layer in enumerate(encoder.layers):
        w = {name: g.const(f"l{n}.{name}", getattr(layer, name)) for name in ("qkv_w", "qkv_b", "out_w", "out_b", "up_w", "up_b", "down_w", "down_b")}
        ln1 = [g.const(f"l{n}.ln1_{i}", a) for i, a in enumerate(layer.ln1)]
        ln2 = [g.const(f"l{n}.ln2_{i}", a) for i, a in enumerate(layer.ln2)]
        attended = g.op("Attention", [x, w["qkv_w"], w["qkv_b"], "mask"], _CONTRIB, num_heads=encoder.heads)
        x = g.op("SkipLayerNormalization", [g.op("MatMul", [attended, w["out_w"]]), x, *ln1, w["out_b"]], _CONTRIB, epsilon=encoder.eps)
        h = g.op("BiasGelu", [g.op("MatMul", [x, w["up_w"]]), w["up_b"]], _CONTRIB)
        x = g.op("SkipLayerNormalization", [g.op("MatMul", [h, w["down_w"]]), x, *ln2, w["down_b"]], _CONTRIB, epsilon=encoder.eps)
    inputs = [_value_info("hidden", ("batch", "tokens", encoder.dim)), _value_info("mask", ("batch", "tokens"), _INT32)]
    return g.model(x, inputs, [("", OPSET), (_CONTRIB, 1)])


def plain_model_bytes(encoder: "BertEncoder") -> bytes:
    """An ONNX model of the encoder's layers: inputs `hidden` (batch, tokens, dim), the embeddings
    after their layer norm, and `mask_bias` (batch, 1, 1, tokens), 0 for a token and the most
    negative float for padding; output `last` (batch, tokens, dim)."""
    g = _Graph(encoder.dim)
    heads, size, dim = encoder.heads, encoder.dim // encoder.heads, encoder.dim
    split_heads = g.const("split_heads", np.array([0, 0, 3, heads, size], dtype=np.int64))
    merge_heads = g.const("merge_heads", np.array([0, 0, dim], dtype=np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(size), dtype=np.float32))
    one, half, root_half = (g.const(n, np.array(v, dtype=np.float32)) for n, v in (("one", 1.0), ("half", 0.5), ("root_half", 0.7071067811865476)))
    picks = [g.const(f"pick_{i}", np.array(i, dtype=np.int64)) for i in range(3)]
    x = "hidden"
    for n, layer in enumerate(encoder.layers):
        w = {name: g.const(f"l{n}.{name}", getattr(layer, name)) for name in ("qkv_w", "qkv_b", "out_w", "out_b", "up_w", "up_b", "down_w", "down_b")}
        ln1 = [g.const(f"l{n}.ln1_{i}", a) for i, a in enumerate(layer.ln1)]
        ln2 = [g.const(f"l{n}.ln2_{i}", a) for i, a in enumerate(layer.ln2)]
        qkv = g.op("Add", [g.op("MatMul", [x, w["qkv_w"]]), w["qkv_b"]])
        qkv = g.op("Transpose", [g.op("Reshape", [qkv, split_heads])], perm=(2, 0, 3, 1, 4))
        q, k, v = (g.op("Gather", [qkv, p], axis=0) for p in picks)
        scores = g.op("MatMul", [g.op("Mul", [q, scale]), g.op("Transpose", [k], perm=(0, 1, 3, 2))])
        probs = g.op("Softmax", [g.op("Add", [scores, "mask_bias"])], axis=-1)
        attended = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=(0, 2, 1, 3)), merge_heads])
        attended = g.op("Add", [g.op("Add", [g.op("MatMul", [attended, w["out_w"]]), w["out_b"]]), x])
        x = g.op("LayerNormalization", [attended, *ln1], axis=-1, epsilon=encoder.eps)
        h = g.op("Add", [g.op("MatMul", [x, w["up_w"]]), w["up_b"]])
        erf = g.op("Erf", [g.op("Mul", [h, root_half])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, one])]), half])
        out = g.op("Add", [g.op("Add", [g.op("MatMul", [h, w["down_w"]]), w["down_b"]]), x])
        x = g.op("LayerNormalization", [out, *ln2], axis=-1, epsilon=encoder.eps)
    inputs = [_value_info("hidden", ("batch", "tokens", dim)), _value_info("mask_bias", ("batch", 1, 1, "tokens"))]
    return g.model(x, inputs, [("", OPSET)])


THREADS = max(1, min(2, os.cpu_count() or 1))
"""Threads one embedding call may use (see `_session`)."""
_BUILDING = threading.Lock()
"""Held while a session is built (on the model's loading thread). onnxruntime aborts a process
(SIGABRT) whose interpreter finalises under a session being made, so exit waits for it, and no new
one starts once exit has begun (as onnx_encoder does for its own)."""
_closing = threading.Event()


class Exiting(RuntimeError):
    """No session is built once the process has begun to exit."""


@atexit.register
def _settle_at_exit() -> None:
    _closing.set()
    if _BUILDING.acquire(timeout=60):
        _BUILDING.release()


def session(encoder: "BertEncoder") -> Any:
    """An ONNX Runtime session of the encoder's layers on up to THREADS threads; ImportError without
    onnxruntime, Exiting once the process is exiting."""
    with _BUILDING:
        if _closing.is_set():
            raise Exiting("the process is exiting")
        return _session(encoder)


def padding_bias(mask: np.ndarray) -> np.ndarray:
    """What the attention scores get added, from `mask` (batch, tokens; 1 a token, 0 padding): 0 for
    a token and the most negative float for padding, whose exp in the softmax is exactly 0; shaped
    (batch, 1, 1, tokens) to broadcast over heads and queries."""
    return ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]


class Layers:
    """The encoder's layers in an ONNX Runtime session: `layers(hidden, mask)` gives the last hidden
    states, `mask` (batch, tokens) being 1 for a token and 0 for padding, whichever graph it runs."""

    def __init__(self, session: Any, fused: bool) -> None:
        self.session = session
        self.fused = fused

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.fused:
            feed = {"hidden": hidden, "mask": mask.astype(np.int32)}
        else:
            feed = {"hidden": hidden, "mask_bias": padding_bias(mask)}
        out: np.ndarray = self.session.run(None, feed)[0]
        return out


def _session(encoder: "BertEncoder") -> Layers:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Up to two threads, not spinning: on a quiet 2-core machine one query embeds in about 8.5 ms on
    # two against 12 ms on one (a retrieval embeds before it searches, so the second core is idle
    # then); under load the second thread gains little and, sleeping when idle, costs nothing.
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return Layers(ort.InferenceSession(model_bytes(encoder), options, providers=["CPUExecutionProvider"]), True)
    except Exception as exc:  # noqa: BLE001 - a build without the fused operators: the plain graph does the same
        log.info("ONNX Runtime refused the fused encoder layers (%s): plain operators instead", exc)
    return Layers(ort.InferenceSession(plain_model_bytes(encoder), options, providers=["CPUExecutionProvider"]), False)
