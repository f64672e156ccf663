"""CUDA target pass: matrix products of one row as fused reductions.

A decode step multiplies one token's activations [1, K] by each weight [K, N]. cuBLAS runs
that as a GEMV kernel of its own, between the pointwise kernels Inductor generates around
it. Written as `(a[:, :, None] * b[None]).sum(1)` (in float32, as cuBLAS accumulates),
the product becomes a reduction Inductor can fuse with its neighbours: the pointwise
producer of `a` (SiLU-times-up before `down`) is computed as it is loaded, the consumer
(a residual add) is applied as it is stored, and products sharing an input with the same
shape (gate and up; keys and values) become one kernel. Inductor does the same rewrite
itself only under coordinate-descent tuning, which picks launch parameters by timing;
here the heuristics choose them, so the emitted kernels do not depend on the machine's
timings.

The pass runs on Inductor's post-grad graph (`post_grad_custom_pre_pass`), where an exact
size's shapes are integers: only products whose row count is statically 1 change, so
ranges (symbolic row counts) keep their library GEMMs.
"""

from __future__ import annotations

import torch
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten

# Products of at most this many rows are rewritten (the row count must be an integer).
MAX_ROWS = 1
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def decompose_matvec(graph: torch.fx.Graph, max_rows: int = MAX_ROWS) -> int:
    """Rewrite `mm(a, b)` and `addmm(bias, a, b)` whose `a` has at most `max_rows` rows (an
    integer, not a symbol) into a float32 multiply-and-sum; return how many changed."""
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default):
            continue
        if node.kwargs:  # addmm's beta / alpha: left to the library
            continue
        bias, a, b = (None, *node.args) if node.target is aten.mm.default else node.args
        a_val, b_val, out_val = _val(a), _val(b), node.meta.get("val")
        if a_val is None or b_val is None or out_val is None:
            continue
        rows = a_val.shape[0]
        if not isinstance(rows, int) or rows > max_rows or a_val.dtype != b_val.dtype:
            continue
        if not (a_val.dtype.is_floating_point and out_val.dtype == a_val.dtype):
            continue
        with graph.inserting_before(node):
            replacement = _matvec(graph, a, b, bias, out_val.dtype)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        changed += 1
    return changed


def _matvec(graph: torch.fx.Graph, a, b, bias, dtype: torch.dtype) -> torch.fx.Node:
    """Nodes computing sum_k a[m, k] * b[k, n] (+ bias) in float32, cast back to `dtype`."""

    def call(target, *args):
        node = graph.call_function(target, args)
        node.meta["val"] = target(*[_val(x) if isinstance(x, torch.fx.Node) else x for x in args])
        return node

    accumulate = torch.float32 if dtype in _LOW_PRECISION else dtype
    if accumulate != dtype:
        a = _convert(call, a, accumulate)
        b = _convert(call, b, accumulate)
    product = call(aten.mul.Tensor, call(aten.unsqueeze.default, a, 2), call(aten.unsqueeze.default, b, 0))
    out = call(aten.sum.dim_IntList, product, [1])
    if bias is not None:
        out = call(aten.add.Tensor, out, _convert(call, bias, accumulate) if accumulate != dtype else bias)
    if accumulate != dtype:
        out = _convert(call, out, dtype)
    return out


def _convert(call, node, dtype: torch.dtype):
    return call(torch.ops.prims.convert_element_type.default, node, dtype)


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


class MatvecPass(CustomGraphPass):
    """`decompose_matvec` as Inductor's post-grad hook (its uuid keys Inductor's caches)."""

    def __init__(self, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows

    def __call__(self, graph: torch.fx.Graph) -> None:
        decompose_matvec(graph, self.max_rows)

    def uuid(self):
        return (get_hash_for_files((__file__,)), self.max_rows)
