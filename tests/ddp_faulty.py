"""A model for tests/test_ddp.py: an MLP whose forward raises in one DDP rank after a number of training batches.

Imported by the test and, through the job's imports, by every rank torchrun starts."""
import os
from typing import Literal

from qtnb.config import param
from qtnb.models.core import register_model
from qtnb.models.mlp import MLP, MLPConfig


class FaultyMLPConfig(MLPConfig):
    "An MLP that raises in rank `fail_rank` after `fail_after` training batches."
    name: Literal["faulty_mlp"] = param("faulty_mlp", description="Registry name of the model family.", group="model")
    fail_rank: int = param(1, description="The rank whose forward raises.", group="model", ge=0)
    fail_after: int = param(10, description="Training batches that rank runs before it raises.", group="model", ge=0)


@register_model
class FaultyMLP(MLP):
    "MLP whose forward raises ValueError in rank fail_rank after fail_after training batches."
    config_class = FaultyMLPConfig

    def __init__(self, config, *, n_features: int, seq_len: int):
        super().__init__(config, n_features=n_features, seq_len=seq_len)
        self.batches = 0

    def forward(self, x):
        if self.training and os.environ.get("RANK") == str(self.config.fail_rank):
            self.batches += 1
            if self.batches > self.config.fail_after: raise ValueError(f"injected failure in rank {self.config.fail_rank}")
        return super().forward(x)
