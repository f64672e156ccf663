"""A third-party op made with torch.library.custom_op whose body is plain torch: the
transpiler captures it as its body (aten ops), so the package needs this module not at all."""

import torch


@torch.library.custom_op("thirdparty::scaled_gelu", mutates_args=())
def scaled_gelu(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.nn.functional.gelu(x) * scale


@scaled_gelu.register_fake
def _(x, scale):
    return torch.empty_like(x)


@torch.library.custom_op("thirdparty::grouped_rows", mutates_args=())
def grouped_rows(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Like transformers' grouped_mm_fallback: a Python loop over `offsets.tolist()`, which
    export cannot trace (data-dependent), so the op is kept and this module imported."""
    out = torch.zeros_like(x)
    start = 0
    for group, end in enumerate(offsets.tolist()):
        out[start:end] = x[start:end] * (group + 1)
        start = end
    return out


@grouped_rows.register_fake
def _(x, offsets):
    return torch.empty_like(x)
