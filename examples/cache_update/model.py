"""A forward that writes a cache input in place with index_copy_ (no splitting op).

forward(x [T, 32], cache [64, 32], index [T]) -> [T, 32]

Each call projects its tokens, stores them in `cache` at rows `index` (in place, in
the compiled piece), and mixes in the mean of the whole cache: the next call sees what
this one stored.
"""

import torch
from torch import nn

HIDDEN, ROWS = 32, 64


class CacheWriter(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(HIDDEN, HIDDEN)
        self.out = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x, cache, index):
        h = torch.tanh(self.proj(x))
        cache.index_copy_(0, index, h)
        context = cache.mean(0, keepdim=True)
        return self.out(h + context)


torch.manual_seed(0)
model = CacheWriter().eval()
example_inputs = (torch.randn(4, HIDDEN), torch.zeros(ROWS, HIDDEN), torch.arange(4))
_tokens = torch.export.Dim("tokens", min=1, max=ROWS)
dynamic_shapes = ({0: _tokens}, None, {0: _tokens})
