"""Inference latency and throughput of one MLP and one LSTM across backends, measured side by side in one run.

For each model: batch-1 p50 and p99 and batch-256 throughput for torch eager (under torch.inference_mode), TorchScript,
onnxruntime FP32 and onnxruntime dynamic INT8, alternating backends A B C D / D C B A over several rounds. Prints one
JSON line per figure; the goal lines are `ort_vs_torch_p50_mlp` and `ort_vs_torch_p50_lstm` (onnxruntime batch-1 p50 over
torch eager p50, goal <= 0.5). Uses qtnb's model registry when it is there, else equivalent small nn.Modules.

Run from the repo root: `.venv/bin/python tests/bench/bench_inference.py [--rounds 7] [--n 300]`.
"""
import argparse, json, os, platform, sys, time

import torch
from torch import nn

from qtnb.export import compare_backends

SEQ_LEN, N_FEATURES = 64, 16


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SEQ_LEN * N_FEATURES, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
    def forward(self, x): return self.net(x)


class LSTM(nn.Module):
    def __init__(self):
        super().__init__(); self.lstm = nn.LSTM(N_FEATURES, 64, num_layers=2, batch_first=True); self.head = nn.Linear(64, 1)
    def forward(self, x): return self.head(self.lstm(x)[0][:, -1])


def model(name: str):
    "The registry's model when qtnb.models is installed, else the stand-in above (said in the output)."
    try:
        from qtnb.models.core import create_model
        return create_model(name, n_features=N_FEATURES, seq_len=SEQ_LEN).eval(), "qtnb.models"
    except Exception:
        return {"mlp": MLP, "lstm": LSTM}[name]().eval(), "standin"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--n", type=int, default=300, help="batch-1 calls per backend per round")
    ap.add_argument("--batch", type=int, default=256)
    a = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    print(json.dumps({"info": "bench_inference", "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                      "ort_threads": 1, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                      "seq_len": SEQ_LEN, "n_features": N_FEATURES, "rounds": a.rounds, "n": a.n}))
    for name in ("mlp", "lstm"):
        m, source = model(name)
        df, _ = compare_backends(m, seq_len=SEQ_LEN, n_features=N_FEATURES, rounds=a.rounds, n=a.n, throughput_batch=a.batch,
                                 n_throughput=5, threads=1)
        for backend, r in df.iterrows():
            print(json.dumps({"model": name, "source": source, "backend": backend, "p50_ms": round(r.p50_ms, 4),
                              "p99_ms": round(r.p99_ms, 4), f"throughput_b{a.batch}": round(r.throughput, 1),
                              "p50_vs_torch": round(r.p50_vs_torch, 3)}))
        print(json.dumps({"figure": f"ort_vs_torch_p50_{name}", "value": round(float(df.loc["onnxruntime", "p50_vs_torch"]), 3), "goal": "<= 0.5"}))
        print(json.dumps({"figure": f"ort_int8_vs_torch_p50_{name}", "value": round(float(df.loc["onnxruntime_int8", "p50_vs_torch"]), 3)}))
    print(json.dumps({"info": "done", "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    sys.exit(main())
