"""A forward that updates registered buffers in place: running statistics.

forward(x [B, 16]) -> [B, 16]

Each call counts itself in `steps` and folds the batch mean into `running_mean`
(an exponential moving average), then normalizes with it: the package keeps these
buffers in its weights and updates them in place, as eager updates the module's.
"""

import torch
from torch import nn

HIDDEN = 16


class RunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(HIDDEN, HIDDEN)
        self.register_buffer("running_mean", torch.zeros(HIDDEN))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        self.steps.add_(1)
        self.running_mean.mul_(0.9).add_(0.1 * x.mean(0))
        return self.proj(x - self.running_mean) * self.steps.float().rsqrt()


torch.manual_seed(0)
model = RunningStats().eval()
example_inputs = (torch.randn(4, HIDDEN),)
dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=64)},)
