"""Small inputs through ONNX Runtime: the same model, exported once, run on up to two threads.

A retrieval for a new task embeds one short text, and a write embeds one or two. With
sentence-transformers that costs about 12 ms on one torch thread of this machine's CPU; the
same network exported to ONNX and run by onnxruntime (already installed with chromadb) costs
about 6.5 ms and gives the same vector (largest difference about 1e-7). So the embedder sends
calls of a few texts here once it is ready, and keeps torch for bulk work.

- The export runs once per model, in a child process (`python -m alma_mcp.embedding.onnx_encoder export`),
  so that nothing it prints can reach the stdio protocol's stdout and a crash in it cannot take
  the server down. The file goes to the cache folder (`ALMA_MCP_CACHE_DIR`, else
  `$XDG_CACHE_HOME/alma-mcp`, else `~/.cache/alma-mcp`), written under a temporary name and
  renamed, so concurrent servers never read half a file.
- Only models this module can reproduce exactly are exported: a transformer followed by mean
  or CLS pooling (and optionally normalisation), on the CPU. Anything else stays on torch.
- Before use, the ONNX vectors of a few probe texts are compared with torch's. A file that
  fails to load or to match (stale, truncated, another version) is exported again once; if that
  fails too, torch is used and the reason logged. A wrong vector is never served.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("alma_mcp")

THREADS = max(1, min(2, os.cpu_count() or 1))
"""Threads one call may use. One query on two threads took 5.5-7.4 ms here against 9.1 ms on one;
a retrieval embeds before it searches, so the second core is idle then. The threads sleep when
idle (no spin-waiting), so they take nothing from concurrent searches."""

STALE_DAYS = 30
"""An exported file no server has loaded for this long is deleted by the next server that loads
another one from the same folder (see `tidy`)."""

MAX_DIFFERENCE = 1e-4
"""Largest difference allowed between an ONNX vector and torch's for the same probe text."""
PROBES = (
    "retry",
    "Flaky end-to-end test: the Save button is clicked before the next screen has rendered.",
    "ERR_CONNECTION_REFUSED from the payments sandbox at 127.0.0.1:8443 after the TLS handshake; "
    "the client retried three times with exponential backoff and then gave up, leaving the order "
    "in a pending state that the nightly reconciliation job later marked as failed.",
)
EXPORT_TIMEOUT = 600
OPSET = 17

_NATIVE = threading.Lock()
"""Held while the background thread loads the ONNX file and compares it with torch. A process that
exits in the middle of that is aborted by onnxruntime ("terminate called without an active
exception", SIGABRT) when the interpreter finalises under it, so exit waits for this lock and
no new load starts once exit has begun."""
_closing = threading.Event()


@atexit.register
def _settle_at_exit() -> None:
    _closing.set()
    if _NATIVE.acquire(timeout=60):
        _NATIVE.release()


def cache_dir() -> Path:
    explicit = os.environ.get("ALMA_MCP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alma-mcp"


def _pooling(model: Any) -> str | None:
    """'mean' or 'cls' when the model is transformer -> that pooling [-> normalize], else None."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if len(names) not in (2, 3) or names[0] != "Transformer" or names[1] != "Pooling":
        return None
    if len(names) == 3 and names[2] != "Normalize":
        return None
    config = modules[1].get_config_dict()
    mode = config.get("pooling_mode")  # sentence-transformers 6: one name
    if mode is None:  # older releases: one flag per mode
        modes = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
        mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(modes[0]) if len(modes) == 1 else None
    return mode if mode in ("mean", "cls") else None


def _fingerprint(model: Any, target: str) -> str:
    """Names the exported file: the model's identity and size, and the exporting library versions.
    (A stale file that slipped through would still fail the probe comparison.)"""
    import torch

    parts = [target, torch.__version__, str(OPSET)]
    folder = Path(target)
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                stat = path.stat()
                parts.append(f"{path.relative_to(folder)}:{stat.st_size}:{int(stat.st_mtime)}")
    else:
        params = list(model[0].auto_model.parameters())
        parts += [str(sum(p.numel() for p in params))]
        parts += [hashlib.sha1(p.detach().cpu().numpy().tobytes()).hexdigest() for p in params[:1] + params[-1:]]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


class OnnxEncoder:
    """A loaded ONNX Runtime session plus the tokenizer and pooling of the original model."""

    def __init__(self, path: Path, tokenizer: Any, max_length: int, pooling: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        # A copy of its own: a fast tokenizer changes its own padding state on every call, and two
        # threads calling one at once fail ("Already borrowed"); torch's path keeps the original.
        self.tokenizer = copy.deepcopy(tokenizer)
        self._tokenize_lock = threading.Lock()
        self.max_length = max_length
        self.pooling = pooling
        self.path = path

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._tokenize_lock:
            batch = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs}
        hidden = self.session.run(None, feed)[0]
        if self.pooling == "cls":
            vectors = hidden[:, 0]
        else:
            mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
            vectors = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _export_in_child(target: str, out: Path) -> str | None:
    """Run the export in a child process; None on success, else why it failed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "alma_mcp.embedding.onnx_encoder", "export", target, str(out)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=EXPORT_TIMEOUT,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        return f"exit code {done.returncode}: {tail[0]}"
    return None if out.is_file() else "no file was written"


def _matches(encoder: OnnxEncoder, model: Any) -> float:
    """Largest difference between the encoder's vectors and torch's on the probe texts."""
    reference = np.asarray(model.encode(list(PROBES), normalize_embeddings=True, show_progress_bar=False))
    return float(np.abs(encoder.encode(PROBES) - reference).max())


def prepare(model: Any, target: str, device: str) -> OnnxEncoder | None:
    """An encoder equivalent to `model` (loaded from `target`), or None to stay on torch."""
    if device != "cpu":
        return None
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        log.info("small inputs stay on torch: %s is not installed", exc.name)
        return None
    pooling = _pooling(model)
    if pooling is None:
        log.info("small inputs stay on torch: the model is not a plain transformer with mean or CLS pooling")
        return None
    path = cache_dir() / "onnx" / f"{_fingerprint(model, target)}.onnx"
    transformer = model[0]
    for attempt in ("cached", "exported"):
        if _closing.is_set():
            return None
        if attempt == "exported" or not path.is_file():
            why = _export_in_child(target, path)
            if why is not None:
                log.warning("small inputs stay on torch: exporting the model to ONNX failed (%s)", why)
                return None
        with _NATIVE:
            if _closing.is_set():
                return None
            try:
                encoder = OnnxEncoder(path, transformer.tokenizer, transformer.max_seq_length, pooling)
                difference = _matches(encoder, model)
            except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
                difference, reason = float("inf"), f"{type(exc).__name__}: {exc}"
            else:
                reason = f"its vectors differ from torch's by {difference:.1e}"
        if difference <= MAX_DIFFERENCE:
            log.info("small inputs through ONNX Runtime (%s, vectors within %.1e of torch's)", path, difference)
            tidy(path)
            return encoder
        log.warning("the ONNX file %s is not usable (%s); %s", path, reason, "exporting it again" if attempt == "cached" else "staying on torch")
        path.unlink(missing_ok=True)
    return None


def tidy(used: Path, now: float | None = None) -> list[Path]:
    """Mark `used` as in use (its mtime) and delete the other exported files of its folder that no
    server has used for STALE_DAYS: files of a model no longer configured, or of an older torch
    (the fingerprint changes with either), 90 MB each. Also leftover `.part` files of an export
    that died over a day ago. Returns what was deleted; a file another process deletes or uses
    at the same moment is left to it."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        os.utime(used, (now, now))
        siblings = list(used.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        if path == used:
            continue
        try:
            age = now - path.stat().st_mtime
            if (path.suffix == ".onnx" and age > STALE_DAYS * 86400) or (path.suffix == ".part" and age > 86400):
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("deleted %d ONNX file(s) unused for %d days from %s", len(removed), STALE_DAYS, used.parent)
    return removed


def export(target: str, out: Path) -> None:
    """Export the transformer of the sentence-transformers model at `target` to `out`."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(target, device="cpu")
    transformer = model[0]
    names = list(transformer.tokenizer(["a probe"], return_tensors="pt").keys())

    class Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    sample = transformer.tokenizer(["a probe", "a longer probe text"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "hidden"]}
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=out.name, suffix=".part", delete=False) as part:
        partial = Path(part.name)
    try:
        torch.onnx.export(
            Hidden(transformer.auto_model).eval(),
            tuple(sample[name] for name in names),
            str(partial),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "export":
        sys.exit("usage: python -m alma_mcp.embedding.onnx_encoder export MODEL OUT.onnx")
    export(sys.argv[2], Path(sys.argv[3]))
