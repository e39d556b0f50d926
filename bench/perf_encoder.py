"""The encoder's two ONNX graphs side by side: ONNX Runtime's fused BERT operators (what the
server runs, embedding/bert_onnx.py `model_bytes`) against the plain operators (the fallback,
`plain_model_bytes`), alternated in one process so that both meet the same load.

    python bench/perf_encoder.py [--rounds 3] [--queries 100]

Per graph: one task embedded alone (a retrieval's query) and two texts in one batch (what
`alma_add_knowledge` embeds: the fact with its domain, and the fact alone), p50, p25 and minimum
in milliseconds, on the session options the server uses (up to two threads, not spinning).
Figures go to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_tasks  # noqa: E402

from alma_mcp.embedding import bert, bert_onnx  # noqa: E402
from alma_mcp.embedding.embedder import bundled_model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two graphs")
    parser.add_argument("--queries", type=int, default=100, help="tasks embedded per graph and round (half as many pairs)")
    args = parser.parse_args()
    import onnxruntime as ort

    encoder = bert.load(bundled_model_path())
    options = ort.SessionOptions()
    options.intra_op_num_threads = bert_onnx.THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    graphs = {
        "fused operators": bert_onnx.Layers(ort.InferenceSession(bert_onnx.model_bytes(encoder), options, providers=["CPUExecutionProvider"]), True),
        "plain operators": bert_onnx.Layers(ort.InferenceSession(bert_onnx.plain_model_bytes(encoder), options, providers=["CPUExecutionProvider"]), False),
    }
    encoder.layers = []
    tasks = [t.task for t in load_tasks()][: args.queries]
    samples: dict[tuple[str, str], list[float]] = {(g, k): [] for g in graphs for k in ("one task", "two texts")}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, layers in graphs.items():
            encoder.session = layers
            for task in tasks:
                started = time.perf_counter()
                encoder.encode([task])
                samples[(name, "one task")].append((time.perf_counter() - started) * 1000)
            for task in tasks[: len(tasks) // 2]:
                started = time.perf_counter()
                encoder.encode([f"ops: Fact 1: {task}", f"Fact 1: {task}"])
                samples[(name, "two texts")].append((time.perf_counter() - started) * 1000)
    print(f"load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} CPUs\n")
    print("| graph | input | p50 ms | p25 ms | min ms | calls |")
    print("|---|---|---:|---:|---:|---:|")
    for (name, kind), values in samples.items():
        values.sort()
        print(f"| {name} | {kind} | {values[len(values) // 2]:.2f} | {values[len(values) // 4]:.2f} | {values[0]:.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
