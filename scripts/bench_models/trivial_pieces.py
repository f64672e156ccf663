"""A model whose compiled pieces do almost nothing, for measuring stitching overhead.

TRIVIAL_LAYERS (default 16) layers, each: a tiny elementwise piece (scale, shift,
tanh) followed by an attention-like splitting op (scaled_dot_product_attention on a
[1, 1, tokens, 8] tensor). The tensors are a few dozen floats, so each call costs
little more than its Python and dispatch overhead: the stitching code that runs the
pieces is a large share of the forward's time.

forward(x) -> x, x: float32 [1, tokens, 8], tokens dynamic (1..64), example 4.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 8
LAYERS = int(os.environ.get("TRIVIAL_LAYERS", "16"))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(WIDTH) + 0.5)
        self.shift = nn.Parameter(torch.rand(WIDTH) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x * self.scale + self.shift).unsqueeze(1)  # [1, 1, tokens, WIDTH]
        a = F.scaled_dot_product_attention(h, h, h)
        return x + a.squeeze(1)


class TrivialPieces(nn.Module):
    def __init__(self, layers: int = LAYERS):
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x * 0.5


torch.manual_seed(0)
model = TrivialPieces().eval()

example_inputs = (torch.randn(1, 4, WIDTH, generator=torch.Generator().manual_seed(0)),)

dynamic_shapes = ({1: torch.export.Dim("tokens", min=1, max=64)},)
