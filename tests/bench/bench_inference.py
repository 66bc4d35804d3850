"""Batch-1 inference latency: ONNX Runtime against eager PyTorch, for the registry's default MLP and LSTM.

Each model (qtnb's registry defaults, seq_len 64, 16 features) is served by eager PyTorch (qtnb's InferenceSession on
the module, under torch.inference_mode) and by ONNX Runtime (the FP32 export, qtnb's InferenceSession on the file).
A contestant's call makes N batch-1 predictions on one fixed window and returns their latencies; contestants are
measured side by side by tests/bench/_timing.py (a warm-up call each, then ROUNDS rotating rounds); p50 and p99 are
taken over all latencies of a contestant. Figures, defined before anything is measured:

  ort_vs_torch_p50_matched_mlp / _lstm              kind matched, goal <= 0.5: ONNX Runtime's batch-1 p50 over eager
                                                    PyTorch's, both runtimes at 1 intra-op thread.
  ort_vs_torch_p50_matched_mlp_all_cores / _lstm_…  kind matched, goal <= 0.5: the same with both at every core.
  ort_vs_torch_p50_default_mlp / _lstm              kind default, report only: each runtime at its own default threads
                                                    (torch's default intra-op pool; onnxruntime's default session).
  ort_int8_vs_torch_p50_matched_mlp / _lstm         report only: dynamically quantized INT8 ONNX at 1 thread.

Run from the repo root with no arguments: python tests/bench/bench_inference.py (about a minute on 2 cores).
"""
import os, tempfile, time
from pathlib import Path

import numpy as np
import torch

from _timing import Bench, emit, interleaved, ratio
from qtnb.export import InferenceSession, export_onnx, quantize_dynamic_int8
from qtnb.models.core import create_model

SEQ_LEN, N_FEATURES = 64, 16
ROUNDS = int(os.environ.get("QTNB_BENCH_ROUNDS", 6))
N = int(os.environ.get("QTNB_BENCH_N", 200))        # batch-1 calls per contestant per round
CORES = os.cpu_count() or 1
DEFAULT_TORCH_THREADS = torch.get_num_threads()    # torch's own default, read before anything changes it


def latencies(session, x):
    "N batch-1 predictions; their latencies in ms."
    out = []
    for _ in range(N):
        t0 = time.perf_counter()
        session.predict(x, record=False)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def group(name, sessions, torch_threads, x):
    "Measure `sessions` side by side with torch at `torch_threads`; {backend: Stats}."
    torch.set_num_threads(torch_threads)
    return interleaved({b: (lambda s=s: latencies(s, x)) for b, s in sessions.items()}, ROUNDS)


def main():
    x = np.random.default_rng(0).standard_normal((1, SEQ_LEN, N_FEATURES)).astype(np.float32)
    with Bench("bench_inference", seq_len=SEQ_LEN, n_features=N_FEATURES, rounds=ROUNDS, calls_per_round=N, cores=CORES,
               torch_default_threads=DEFAULT_TORCH_THREADS), tempfile.TemporaryDirectory() as d:
        for name in ("mlp", "lstm"):
            torch.manual_seed(0)
            model = create_model(name, n_features=N_FEATURES, seq_len=SEQ_LEN).eval()
            path = export_onnx(model, Path(d) / f"{name}.onnx", seq_len=SEQ_LEN, n_features=N_FEATURES)
            eager = InferenceSession(model, meta=InferenceSession(path).meta, device="cpu")
            settings = {"matched": (1, 1), "matched_all_cores": (CORES, CORES), "default": (DEFAULT_TORCH_THREADS, None)}
            for label, (tt, ot) in settings.items():
                sessions = {"torch": eager, "onnxruntime": InferenceSession(path, threads=ot, device="cpu")}
                if label == "matched": sessions["onnxruntime_int8"] = InferenceSession(quantize_dynamic_int8(path), threads=1, device="cpu")
                st = group(label, sessions, tt, x)
                kind = "default" if label == "default" else "matched"
                fig = f"ort_vs_torch_p50_{kind}_{name}" + ("_all_cores" if label == "matched_all_cores" else "")
                value, q = ratio(st["onnxruntime"], st["torch"])
                detail = {b: {"p50_ms": s.median, "p99_ms": s.quantile(0.99), "quartiles_ms": s.quartiles} for b, s in st.items()}
                emit(fig, value, None if kind == "default" else "<= 0.5", kind, model=name, torch_threads=tt,
                     ort_threads=ot if ot is not None else "onnxruntime default", round_ratio_quartiles=q, latency=detail)
                if "onnxruntime_int8" in st:
                    v8, q8 = ratio(st["onnxruntime_int8"], st["torch"])
                    emit(f"ort_int8_vs_torch_p50_matched_{name}", v8, None, "matched", model=name, threads=1, round_ratio_quartiles=q8)
        torch.set_num_threads(DEFAULT_TORCH_THREADS)


if __name__ == "__main__":
    main()
