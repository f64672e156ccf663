"""Grouped (per-head) projections as batched matmuls: the tokens of each of 4 groups go
through that group's own weights (torch.bmm), then a shared output projection.

The batched matmul is what Inductor's CPU autotuning can choose a backend for: ATen's
bmm or its C++ GEMM template (examples.json transpiles this example with the lockfile
generated/grouped_mlp/tuning.json).
"""

import torch
from torch import nn

GROUPS = 4
WIDTH = 64


class GroupedMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.group_up = nn.Parameter(torch.randn(GROUPS, WIDTH, WIDTH) / WIDTH**0.5)
        self.group_down = nn.Parameter(torch.randn(GROUPS, WIDTH, WIDTH) / WIDTH**0.5)
        self.out = nn.Linear(GROUPS * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [tokens, GROUPS * WIDTH] -> [GROUPS, tokens, WIDTH]
        groups = x.view(x.size(0), GROUPS, WIDTH).transpose(0, 1).contiguous()
        hidden = torch.relu(torch.bmm(groups, self.group_up))
        mixed = torch.bmm(hidden, self.group_down)
        return self.out(mixed.transpose(0, 1).reshape(x.size(0), GROUPS * WIDTH))


torch.manual_seed(0)
model = GroupedMLP().eval()

# x: float32 [tokens=8, 256]
example_inputs = (torch.randn(8, GROUPS * WIDTH, generator=torch.Generator().manual_seed(0)),)

# The token dimension (dim 0) is dynamic.
dynamic_shapes = ({0: torch.export.Dim("tokens", min=1, max=128)},)
