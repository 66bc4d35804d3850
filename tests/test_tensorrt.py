"""qtnb.tensorrt's build and run logic against fake `tensorrt` modules for TensorRT 10 and 11, and its behaviour
without TensorRT. The fake parses the real ONNX, records what the builder was asked for (flags, strong typing,
calibration batches, profiles) and "executes" engines with onnxruntime through fake CUDA memory, so the session's
buffer handling is checked end to end against the model's real outputs. Real-engine tests are marked `trt`."""
import ctypes, enum, json, sys, types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from fastcore.test import test_eq as eq, test_close as close, test_fail as fails

from qtnb.errors import ExportError, TensorRTUnavailable
from qtnb.export import InferenceSession, export_onnx, ort_session, quantize_static_qdq, read_meta
import qtnb.tensorrt as qtrt


class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.lstm = nn.LSTM(4, 8, batch_first=True); self.head = nn.Linear(8, 2)
    def forward(self, x): return self.head(self.lstm(x)[0][:, -1])


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    torch.manual_seed(0)
    net = Net().eval()
    p = export_onnx(net, tmp_path_factory.mktemp("m") / "net.onnx", seq_len=12, n_features=4, dynamo=False)
    return p, net


# ---------------------------------------------------------------- fake CUDA runtime (cuda.bindings.runtime)
class FakeCuda:
    def __init__(self, gpu="NVIDIA H100 80GB HBM3"):
        self.gpu, self.mem, self.next, self.allocs = gpu, {}, 4096, 0
        rt = types.ModuleType("cuda.bindings.runtime")
        rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = self.malloc, self.free, self.memcpy
        rt.cudaStreamCreate = lambda: (0, 7)
        rt.cudaStreamSynchronize = lambda s: (0,)
        rt.cudaGetDeviceProperties = lambda i: (0, types.SimpleNamespace(name=self.gpu.encode()))
        self.rt = rt

    def malloc(self, n):
        p = self.next; self.next += n + 256; self.mem[p] = bytearray(n); self.allocs += 1
        return (0, p)
    def free(self, p): del self.mem[p]; return (0,)
    def memcpy(self, dst, src, n, kind, stream):
        if kind == 1: self.mem[dst][:n] = ctypes.string_at(src, n)
        else: ctypes.memmove(dst, bytes(self.mem[src][:n]), n)
        return (0,)
    def read(self, ptr, shape, dtype=np.float32):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.mem[ptr][:n]), dtype).reshape(shape)
    def write(self, ptr, a): self.mem[ptr][:a.nbytes] = a.tobytes()


# ---------------------------------------------------------------- fake tensorrt
def fake_tensorrt(version: str, cuda: FakeCuda, log: dict):
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt"); trt.__version__ = version

    class ILogger:
        def __init__(self): pass
    ILogger.Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NDCF", {"STRONGLY_TYPED": 1} if major >= 11 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "TF32": 2} if major < 11 else {"TF32": 2, "DIRECT_IO": 3})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1})
    trt.nptype = lambda d: {0: np.float32, 1: np.float16}[int(d)]
    if major < 11:
        class IInt8EntropyCalibrator2:
            def __init__(self): pass
        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Network:
        def __init__(self, flags): self.flags, self.onnx = flags, None
    class Parser:
        def __init__(self, network, logger): self.network, self.errors = network, []
        def parse(self, data):
            try: m = onnx.load_from_string(data)
            except Exception as e: self.errors = [f"ONNX parse failed: {e}"]; return False
            self.network.onnx = m
            return True
        @property
        def num_errors(self): return len(self.errors)
        def get_error(self, i): return self.errors[i]
    class Profile:
        def set_shape(self, name, mn, opt, mx): self.shape = (name, tuple(mn), tuple(opt), tuple(mx))
    class Config:
        def __init__(self): self.flags, self.profiles, self.int8_calibrator, self.pool, self.calib_profile = set(), [], None, {}, None
        def set_memory_pool_limit(self, pool, n): self.pool[pool] = n
        def set_flag(self, f): self.flags.add(f.name)
        def add_optimization_profile(self, p): self.profiles.append(p)
        def set_calibration_profile(self, p): self.calib_profile = p
    class Builder:
        def __init__(self, logger): self.logger = logger
        def create_network(self, flags): return Network(flags)
        def create_builder_config(self): return Config()
        def create_optimization_profile(self): return Profile()
        def build_serialized_network(self, network, config):
            log["builds"] = log.get("builds", 0) + 1
            strongly = bool(network.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
            if major >= 11 and not strongly: raise TypeError("TensorRT 11 networks are strongly typed")
            ops = {n.op_type for n in network.onnx.graph.node}
            fp16 = any(i.data_type == onnx.TensorProto.FLOAT16 for i in network.onnx.graph.initializer)
            batches = 0
            if config.int8_calibrator is not None:
                c = config.int8_calibrator
                while True:
                    ptrs = c.get_batch(["x"])
                    if ptrs is None: break
                    shape = (c.get_batch_size(), *config.calib_profile.shape[2][1:])
                    assert np.isfinite(cuda.read(ptrs[0], shape)).all()
                    batches += 1
            name, mn, opt, mx = config.profiles[0].shape
            head = dict(version=trt.__version__, gpu=cuda.gpu, flags=sorted(config.flags), strongly_typed=strongly,
                        qdq="QuantizeLinear" in ops, fp16_weights=fp16, calib_batches=batches, workspace=config.pool[trt.MemoryPoolType.WORKSPACE],
                        profile=[mn, opt, mx])
            log["last"] = head
            h = json.dumps(head).encode()
            return len(h).to_bytes(4, "little") + h + network.onnx.SerializeToString()

    class Context:
        def __init__(self, eng): self.eng, self.addr, self.shape = eng, {}, None
        def set_input_shape(self, name, shape): self.shape = tuple(shape)
        def get_tensor_shape(self, name):
            return self.shape if name == "x" else (self.shape[0], self.eng.n_out)
        def set_tensor_address(self, name, ptr): self.addr[name] = ptr
        def execute_async_v3(self, stream):
            x = cuda.read(self.addr["x"], self.shape)
            y = self.eng.sess.run(None, {"x": x})[0].astype(np.float32)
            cuda.write(self.addr["y"], np.ascontiguousarray(y))
            log["executions"] = log.get("executions", 0) + 1
            return True
    class Engine:
        def __init__(self, head, model_bytes, path):
            import onnxruntime as ort
            self.head, self.num_io_tensors = head, 2
            self.sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
            self.n_out = self.sess.get_outputs()[0].shape[1]
            self.device_memory_size = 1 << 20
        def get_tensor_name(self, i): return ["x", "y"][i]
        def get_tensor_mode(self, n): return trt.TensorIOMode.INPUT if n == "x" else trt.TensorIOMode.OUTPUT
        def get_tensor_dtype(self, n): return trt.DataType.FLOAT
        def get_tensor_profile_shape(self, n, i): return [tuple(s) for s in self.head["profile"]]
        def create_execution_context(self): return Context(self)
    class Runtime:
        def __init__(self, logger): pass
        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            try:
                n = int.from_bytes(data[:4], "little"); head = json.loads(data[4:4 + n])
            except Exception: return None
            if head["version"] != trt.__version__ or head["gpu"] != cuda.gpu: return None  # what real TensorRT does, in effect
            return Engine(head, data[4 + n:], None)
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture
def fake(monkeypatch):
    "Install fake tensorrt + cuda.bindings; returns a function (version, gpu) -> (cuda, log) that swaps them."
    state = {}
    def install(version="10.9.0", gpu="NVIDIA H100 80GB HBM3"):
        cuda = state.get("cuda") or FakeCuda(gpu)
        cuda.gpu = gpu
        log = {}
        pkg, sub = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        pkg.bindings, sub.runtime = sub, cuda.rt
        for name, mod in {"tensorrt": fake_tensorrt(version, cuda, log), "cuda": pkg, "cuda.bindings": sub, "cuda.bindings.runtime": cuda.rt}.items():
            monkeypatch.setitem(sys.modules, name, mod)
        state["cuda"] = cuda
        return cuda, log
    return install


def _calib(n=100):
    return np.random.default_rng(1).standard_normal((n, 12, 4)).astype(np.float32)


# ---------------------------------------------------------------- without TensorRT
def test_no_tensorrt_is_a_clear_error_not_an_import_error(onnx_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as on this CPU machine
    p, _ = onnx_path
    for call in (qtrt.require_tensorrt, lambda: qtrt.build_engine(p), lambda: qtrt.TensorRTSession(p),
                 lambda: InferenceSession(p, backend="tensorrt")):
        with pytest.raises(TensorRTUnavailable, match=r"pip install 'qtnb\[tensorrt\]'"): call()


def test_tensorrt_without_gpu_says_so(onnx_path, fake, monkeypatch):
    fake("10.9.0")
    monkeypatch.setattr(qtrt, "gpu_name", lambda: None)
    with pytest.raises(TensorRTUnavailable, match="CUDA GPU"): qtrt.build_engine(onnx_path[0])


# ---------------------------------------------------------------- both major versions
@pytest.mark.parametrize("version", ["10.9.0", "11.0.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run(onnx_path, fake, version, precision, tmp_path):
    cuda, log = fake(version)
    p, net = onnx_path
    eng = qtrt.build_engine(p, precision, max_batch=64, calibration=_calib(), cache_dir=tmp_path, workspace=256)
    head = log["last"]
    eq(head["workspace"], 256 << 20)
    eq(head["profile"], [[1, 12, 4], [32, 12, 4], [64, 12, 4]])
    if version.startswith("10"):
        eq(head["strongly_typed"], False)
        eq(head["flags"], {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision])
        eq(head["calib_batches"] > 0, precision == "int8")   # the entropy calibrator was fed training windows
        eq(head["qdq"], False)
    else:
        eq(head["strongly_typed"], True)
        eq(head["flags"], [])
        eq(head["fp16_weights"], precision == "fp16")         # FP16 through an FP16 ONNX
        eq(head["qdq"], precision == "int8")                  # INT8 through the QDQ ONNX
    meta = read_meta(eng)
    eq((meta.extra["precision"], meta.extra["tensorrt"]), (precision, version))
    # run through the session: fake CUDA buffers in and out, execute_async_v3
    x = np.random.default_rng(2).standard_normal((100, 12, 4)).astype(np.float32)  # 100 > max batch 64: split in two
    s = InferenceSession(eng)
    eq(s.backend, "tensorrt")
    y = s.predict(x)
    with torch.inference_mode(): ref = net(torch.from_numpy(x)).numpy()
    close(y, ref, eps={"fp32": 1e-5, "fp16": 1e-2, "int8": 0.1}[precision])
    eq(log["executions"], 2)
    eq(s.latency_stats()["windows"], 100)
    s.trt.close()
    eq(len(cuda.mem), 0 if precision != "int8" or version.startswith("11") else 1)  # the calibrator's buffer lives with it


@pytest.mark.parametrize("version", ["10.9.0", "11.0.0"])
def test_int8_needs_calibration(onnx_path, fake, version, tmp_path):
    fake(version)
    with pytest.raises(ExportError, match="calibration"): qtrt.build_engine(onnx_path[0], "int8", cache_dir=tmp_path)


def test_tensorrt11_takes_a_ready_qdq_onnx(onnx_path, fake, tmp_path):
    _, log = fake("11.0.0")
    qdq = quantize_static_qdq(onnx_path[0], _calib(), tmp_path / "net.qdq.onnx")
    qtrt.build_engine(qdq, "int8", cache_dir=tmp_path)
    eq(log["last"]["qdq"], True)


def test_unknown_precision_and_bad_shapes(onnx_path, fake, tmp_path):
    fake("10.9.0")
    fails(lambda: qtrt.build_engine(onnx_path[0], "int4", cache_dir=tmp_path), contains="int4")
    fails(lambda: qtrt.build_engine(onnx_path[0], "fp32", max_shape=(8, 12, 5), cache_dir=tmp_path), contains="5 features")


# ---------------------------------------------------------------- the engine cache
def test_cache_hits_and_misses(onnx_path, fake, tmp_path):
    _, log = fake("10.9.0")
    p = onnx_path[0]
    a = qtrt.build_engine(p, "fp16", cache_dir=tmp_path)
    b = qtrt.build_engine(p, "fp16", cache_dir=tmp_path)
    eq(a, b); eq(log["builds"], 1)                               # cached
    c = qtrt.build_engine(p, "fp16", max_batch=32, cache_dir=tmp_path)
    d = qtrt.build_engine(p, "fp32", cache_dir=tmp_path)
    eq(len({a, c, d}), 3); eq(log["builds"], 3)                  # shapes and precision are in the key
    _, log2 = fake("10.9.0", gpu="NVIDIA A100-SXM4-40GB")
    e = qtrt.build_engine(p, "fp16", cache_dir=tmp_path)
    assert e != a and log2["builds"] == 1                          # another GPU: another engine
    _, log3 = fake("11.0.0", gpu="NVIDIA A100-SXM4-40GB")
    assert qtrt.build_engine(p, "fp16", cache_dir=tmp_path) != e and log3["builds"] == 1


def test_engine_from_another_gpu_or_version_is_rebuilt(onnx_path, fake, tmp_path):
    fake("10.9.0", gpu="NVIDIA A100-SXM4-40GB")
    p, net = onnx_path
    eng = qtrt.build_engine(p, "fp32", cache_dir=tmp_path)
    for version, gpu in [("10.9.0", "NVIDIA H100 80GB HBM3"), ("11.0.0", "NVIDIA H100 80GB HBM3")]:
        _, log = fake(version, gpu)
        s = qtrt.TensorRTSession(eng)                            # would not deserialize here: rebuilt, not crashed
        eq(log["builds"], 1)
        eq((s.meta.extra["gpu"], s.meta.extra["tensorrt"]), (gpu, version))
        x = _calib(3)
        with torch.inference_mode(): close(s.run(x), net(torch.from_numpy(x)).numpy(), eps=1e-5)
    # a cached engine file that no longer loads (say TensorRT was upgraded in place) is rebuilt by build_engine too
    _, log = fake("11.0.0", "NVIDIA H100 80GB HBM3")
    e = qtrt.build_engine(p, "fp32", cache_dir=tmp_path)
    e.write_bytes(b"\x00" * 64)
    qtrt.build_engine(p, "fp32", cache_dir=tmp_path)
    eq(log["builds"], 1)


def test_stale_engine_without_its_onnx_names_the_fix(onnx_path, fake, tmp_path):
    fake("10.9.0")
    import shutil
    src = tmp_path / "copy.onnx"; shutil.copy(onnx_path[0], src)
    eng = qtrt.build_engine(src, "fp32", cache_dir=tmp_path)
    src.unlink()
    fake("11.0.0")
    fails(lambda: qtrt.TensorRTSession(eng), contains="rebuild it with build_engine")


# ---------------------------------------------------------------- benchmark
def test_benchmark_measures_both_sides(onnx_path, fake, tmp_path):
    fake("10.9.0")
    p, net = onnx_path
    df = qtrt.benchmark(net, p, "fp16", batch_sizes=(1, 8), rounds=2, n=5, warmup=1, cache_dir=tmp_path)
    eq(df.batch.tolist(), [1, 8])
    close(df.speedup.to_numpy(), (df.torch_p50_ms / df.trt_p50_ms).to_numpy(), eps=1e-9)
    assert (df.torch_p50_ms > 0).all() and (df.trt_p50_ms > 0).all()
    assert not np.allclose(df.speedup, 1.0)                      # measured, not a placeholder


# ---------------------------------------------------------------- real TensorRT (GPU machines only)
@pytest.mark.trt
def test_real_engine_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = Net().eval().cuda()
    p = export_onnx(net, tmp_path / "net.onnx", seq_len=12, n_features=4)
    x = _calib(16)
    with torch.inference_mode(): ref = net(torch.from_numpy(x).cuda()).cpu().numpy()
    for precision, eps in [("fp32", 1e-4), ("fp16", 1e-2)]:
        close(InferenceSession(p, backend="tensorrt", precision=precision).predict(x), ref, eps=eps)
    df = qtrt.benchmark(net, p, "fp16", batch_sizes=(1, 64), rounds=2, n=20)
    assert (df.memory_reduction > 0).all()
