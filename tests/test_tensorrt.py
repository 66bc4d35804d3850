"""A real TensorRT engine against eager PyTorch, through `InferenceSession(backend="tensorrt")`, on a GPU machine with
TensorRT (marked `trt`, skipped elsewhere). The build, cache and session logic runs everywhere in nbs/09_tensorrt.ipynb
against a stand-in `tensorrt` for versions 10 and 11."""
import numpy as np
import pytest
import torch
from torch import nn
from fastcore.test import test_close as close

from qtnb.export import InferenceSession, export_onnx
import qtnb.tensorrt as qtrt


class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.lstm = nn.LSTM(4, 8, batch_first=True); self.head = nn.Linear(8, 2)
    def forward(self, x): return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.trt
def test_real_engine_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = Net().eval().cuda()
    p = export_onnx(net, tmp_path / "net.onnx", seq_len=12, n_features=4)
    x = np.random.default_rng(1).standard_normal((16, 12, 4)).astype(np.float32)
    with torch.inference_mode(): ref = net(torch.from_numpy(x).cuda()).cpu().numpy()
    for precision, eps in [("fp32", 1e-4), ("fp16", 1e-2)]:
        close(InferenceSession(p, backend="tensorrt", precision=precision).predict(x), ref, eps=eps)
    df = qtrt.benchmark(net, p, "fp16", batch_sizes=(1, 64), rounds=2, n=20)
    assert (df.memory_reduction > 0).all()
