"""The one timing helper every benchmark in tests/bench uses.

- `interleaved(contestants, rounds)`: every contestant is warmed up first (`warmup` calls each, not measured), then
  measured in `rounds` rounds, each round calling every contestant once, in an order that rotates from round to round
  (A B C, B C A, C A B, ...) so that no contestant always runs first or last and a drift in the machine's speed falls
  on all alike. A contestant returns the value it measured (a rate, a latency, a list of latencies), or None to have its
  wall time in seconds recorded.
- `Stats`: median and quartiles of what a contestant measured; `ratio(a, b)`: the ratio of the medians, with the
  quartiles of the per-round ratios (round r of a over round r of b), which is the spread of the comparison itself.
- `Bench(name, **settings)`: a context that prints one settings line first (`{"settings": {...}}`: the benchmark's own
  settings, torch's intra- and inter-op threads, OMP/MKL thread variables, CPU count, library versions, load average
  before) and one last line with the load average after and the seconds taken, and `emit(...)` for the figures, one
  JSON line each: {"figure": ..., "value": ..., "goal": ..., "kind": "matched" | "default" | ...}.

`_matched` figures give every contestant the same optimizer implementation, thread count, data path, dtype and batch
(they measure qtnb's own overhead); `_default` figures run each tool as its documentation shows its users.
"""
import importlib.metadata, json, os, platform, statistics, sys, time
from dataclasses import dataclass, field
from typing import Callable

LIBRARIES = ("torch", "numpy", "onnxruntime", "optuna", "pytorch-lightning", "xgboost", "papermill", "qtnb")


def load() -> list[float]:
    "The 1, 5 and 15 minute load averages."
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict:
    "Versions of the libraries that shape the figures (those installed)."
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try: out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError: pass
    return out


def threads() -> dict:
    "Thread settings in force: torch's (when imported) and the environment variables that set OpenMP/MKL pools."
    out = {"cpus": os.cpu_count()}
    try: out["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError: pass
    if "torch" in sys.modules:
        import torch
        out.update(torch_intra_op=torch.get_num_threads(), torch_inter_op=torch.get_num_interop_threads())
    for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "QTNB_BENCH_THREADS"):
        if v in os.environ: out[v] = os.environ[v]
    return out


def _round(x, nd=4):
    if isinstance(x, float): return round(x, nd)
    if isinstance(x, dict): return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, (list, tuple)): return [_round(v, nd) for v in x]
    return x


def emit(figure: str, value: float, goal: str | None = None, kind: str | None = None, **extra):
    "Print one figure as a JSON line."
    print(json.dumps({"figure": figure, "value": _round(float(value)), **({"goal": goal} if goal else {}),
                      **({"kind": kind} if kind else {}), **_round(extra)}), flush=True)


@dataclass
class Stats:
    "What one contestant measured, round by round (a round may hold several samples)."
    rounds: list = field(default_factory=list)       # one entry per round: a number or a list of samples

    @property
    def samples(self) -> list[float]:
        return [x for r in self.rounds for x in (r if isinstance(r, (list, tuple)) else [r])]
    @property
    def per_round(self) -> list[float]:
        "Each round's value (a round of several samples counts by its median)."
        return [statistics.median(r) if isinstance(r, (list, tuple)) else r for r in self.rounds]
    @property
    def median(self) -> float: return statistics.median(self.samples)
    def quantile(self, q: float) -> float:
        s = sorted(self.samples); i = q * (len(s) - 1); lo = int(i)
        return s[lo] if lo + 1 >= len(s) else s[lo] + (s[lo + 1] - s[lo]) * (i - lo)
    @property
    def quartiles(self) -> list[float]: return [self.quantile(0.25), self.quantile(0.75)]
    def summary(self) -> dict:
        return {"median": self.median, "q1": self.quartiles[0], "q3": self.quartiles[1], "n": len(self.samples)}


def ratio(a: Stats, b: Stats) -> tuple[float, list[float]]:
    "median(a) / median(b), and the quartiles of the per-round ratios a_r / b_r."
    pairs = [x / y for x, y in zip(a.per_round, b.per_round)]
    s = Stats([pairs])
    return a.median / b.median, s.quartiles


def interleaved(contestants: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1) -> dict[str, Stats]:
    "Warm up every contestant, then measure them side by side in `rounds` rotating rounds."
    names = list(contestants)
    for _ in range(warmup):
        for k in names: contestants[k]()
    out = {k: Stats() for k in names}
    for r in range(rounds):
        j = r % len(names)
        for k in names[j:] + names[:j]:
            t0 = time.perf_counter()
            v = contestants[k]()
            out[k].rounds.append(time.perf_counter() - t0 if v is None else v)
    return out


class Bench:
    "Prints the settings line on entry and the closing line (load after, seconds) on exit; `emit` prints figures."
    def __init__(self, name: str, **settings):
        self.name, self.settings = name, settings
    def __enter__(self):
        self.t0, self.load_before = time.time(), load()
        print(json.dumps({"settings": {"bench": self.name, **_round(self.settings), "threads": threads(),
                                       "versions": versions(), "machine": platform.machine(), "load_before": self.load_before}}),
              flush=True)
        return self
    def __exit__(self, *exc):
        print(json.dumps({"settings_end": {"bench": self.name, "threads": threads(), "load_before": self.load_before,
                                           "load_after": load(), "seconds": round(time.time() - self.t0, 1),
                                           "ok": exc[0] is None}}), flush=True)
        return False
    emit = staticmethod(emit)
