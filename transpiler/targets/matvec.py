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

Two rules come from measurements on an H200 (bench-results/gpu-matvec-run2-h200-gpu_matvec.log):
- Only products with at most as many outputs as inputs (N <= K: q, k, v, o and down of a
  Llama layer) are rewritten: there the reduction beat cuBLAS (0.41-0.78x its time), while
  for wide outputs (gate/up 8192x2048, a 32000-word head) Inductor's reduction configs read
  at 1.5-1.65x the floor against cuBLAS's 1.13-1.39x.
- A computed input (the norm before q, SiLU-times-up before down) is written to memory
  first (`inductor_force_stride_order`) instead of inlined: inlined, every output row
  recomputed it over all K (down with SiLU-times-up: 20 us against 9.6 us alone).
"""

from __future__ import annotations

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

aten = torch.ops.aten

# Products of at most this many rows are rewritten (the row count must be an integer).
MAX_ROWS = 1
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def decompose_matvec(graph: torch.fx.Graph, max_rows: int = MAX_ROWS, wide: bool = False) -> int:
    """Rewrite `mm(a, b)` and `addmm(bias, a, b)` whose `a` has at most `max_rows` rows (an
    integer, not a symbol) and `b` no more columns than rows into a float32
    multiply-and-sum (`wide`: whatever the column count, for measuring); return how many changed."""
    changed = 0
    materialized: dict[torch.fx.Node, torch.fx.Node] = {}
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
        outputs, inputs = b_val.shape[1], a_val.shape[1]
        if not (wide or (isinstance(outputs, int) and isinstance(inputs, int) and outputs <= inputs)):
            continue
        if a.op != "placeholder":  # computed: written once, whichever products read it
            if a not in materialized:
                materialized[a] = _materialize(graph, a)
            a = materialized[a]
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


def _materialize(graph: torch.fx.Graph, node: torch.fx.Node) -> torch.fx.Node:
    """`node` with its layout fixed, which makes Inductor write it to memory rather than
    inline its computation into each reader."""
    val = node.meta["val"]
    with graph.inserting_after(node):
        fixed = graph.call_function(
            torch.ops.prims.inductor_force_stride_order.default, (node, [int(s) for s in val.stride()])
        )
    fixed.meta["val"] = val
    return fixed


def _convert(call, node, dtype: torch.dtype):
    return call(torch.ops.prims.convert_element_type.default, node, dtype)


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


class MatvecPass(CustomGraphPass):
    """`decompose_matvec` as Inductor's post-grad hook (its uuid keys Inductor's caches)."""

    def __init__(self, max_rows: int = MAX_ROWS, wide: bool = False):
        self.max_rows, self.wide = max_rows, wide

    def __call__(self, graph: torch.fx.Graph) -> None:
        decompose_matvec(graph, self.max_rows, self.wide)

    def uuid(self):
        return (get_hash_for_files((__file__,)), self.max_rows, self.wide)
