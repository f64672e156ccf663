"""A small model whose graph calls ops from outside torch (tests/test_foreign_ops.py)."""

import opaque_ops  # noqa: F401  (registers opaquelib::soft_clamp)
import torch
import traceable_ops
from torch import nn


class ThirdPartyOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 8)
        self.register_buffer("offsets", torch.tensor([8, 20, 32]), persistent=False)

    def forward(self, x):
        hidden = traceable_ops.scaled_gelu(self.up(x), 0.5)  # captured as its body
        hidden = torch.ops.thirdparty.grouped_rows(
            hidden.t().contiguous(), self.offsets
        ).t()  # kept: data-dependent body
        return torch.ops.opaquelib.soft_clamp(self.down(hidden), 2.0)  # kept: define + impl


torch.manual_seed(0)
model = ThirdPartyOps().eval()
example_inputs = (torch.randn(4, 16),)
dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=64)},)
