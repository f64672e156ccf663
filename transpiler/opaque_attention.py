"""Capture attention as one opaque op, `transpile::sdpa` (vLLM traces attention so too).

torch.export runs scaled_dot_product_attention's device meta functions, and on CUDA
(torch 2.11) their guards pin a dynamic sequence length ("Not all values of seq satisfy
the generated guard min(64*s, 256*s) == 64*s"). While the model is exported, calls of
torch.nn.functional.scaled_dot_product_attention go to an op whose fake implementation
only states the output's shape; the stitching function calls it as a splitting op.

The op's definition is the package's own ops.py (transpiler/runtime/ops.py, copied into
each package that uses it), imported here, so transpiler and package run the same code.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

OP = "transpile::sdpa"
ATEN_SDPA = "aten::scaled_dot_product_attention"


def register() -> None:
    """Define transpile::sdpa in this process (importing the module defines it, once)."""
    from .runtime import ops  # noqa: F401


class _RouteAttention(torch.overrides.TorchFunctionMode):
    """Every call of F.scaled_dot_product_attention, however the model reached it (an
    attribute of torch.nn.functional, a name imported early, torch._C._nn), goes to the
    opaque op: a torch-function mode sees the call itself, not the name it was found by."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            return _opaque_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


_SDPA = F.scaled_dot_product_attention


def _opaque_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return torch.ops.transpile.sdpa(query, key, value, attn_mask, dropout_p, bool(is_causal), scale, bool(enable_gqa))


@contextlib.contextmanager
def routed(enabled: bool):
    """While exporting: F.scaled_dot_product_attention -> torch.ops.transpile.sdpa."""
    if not enabled:
        yield
        return
    register()
    with _RouteAttention():
        yield


def used_in(graph_module: torch.fx.GraphModule) -> bool:
    """Whether the captured graph calls the opaque op (the package then ships ops.py)."""
    return any(
        isinstance(node.target, torch._ops.OpOverload) and node.target._schema.name == OP
        for node in graph_module.graph.nodes
    )
