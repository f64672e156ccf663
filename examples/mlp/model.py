"""A 3-layer MLP (Linear / GELU / LayerNorm) with a dynamic batch dimension.

No attention, so no split ops occur.
"""

import torch
from torch import nn

IN_FEATURES = 32
HIDDEN = 64
OUT_FEATURES = 16


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(IN_FEATURES, HIDDEN),
            nn.GELU(),
            nn.LayerNorm(HIDDEN),
            nn.Linear(HIDDEN, HIDDEN),
            nn.GELU(),
            nn.LayerNorm(HIDDEN),
            nn.Linear(HIDDEN, OUT_FEATURES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


torch.manual_seed(0)
model = MLP().eval()

# x: float32 [batch=4, 32]
example_inputs = (torch.randn(4, IN_FEATURES, generator=torch.Generator().manual_seed(0)),)

# The batch dimension (dim 0) is dynamic.
dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=128)},)
