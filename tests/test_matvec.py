"""The CUDA target's one-row product pass (transpiler/targets/matvec.py), run through Inductor
on the CPU: rewritten products equal eager, other products are left to the library."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config

from transpiler.options import Options
from transpiler.targets.cuda import CudaTarget
from transpiler.targets.matvec import MatvecPass, decompose_matvec


class CountingPass(MatvecPass):
    """MatvecPass that remembers how many products it rewrote."""

    changed = 0

    def __call__(self, graph):
        CountingPass.changed += decompose_matvec(graph, self.max_rows)


def compile_with_pass(fn, *args, dynamic=False):
    torch._dynamo.reset()
    CountingPass.changed = 0
    # No cached graphs: a cache hit would skip the pass this test counts.
    with (
        inductor_config.patch(post_grad_custom_pre_pass=CountingPass(), fx_graph_cache=False),
        functorch_config.patch(enable_autograd_cache=False),
    ):
        out = torch.compile(fn, dynamic=dynamic, fullgraph=True)(*args)
    return out, CountingPass.changed


def mlp(x, norm, gate, up, down, bias):
    h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * norm
    act = torch.nn.functional.silu(torch.nn.functional.linear(h, gate)) * torch.nn.functional.linear(h, up)
    return x + torch.nn.functional.linear(act, down, bias)


def mlp_args(rows, dtype, hidden=48, ffn=160):
    generator = torch.Generator().manual_seed(rows)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    return (
        randn(rows, hidden),
        randn(hidden),
        randn(ffn, hidden, scale=0.1),
        randn(ffn, hidden, scale=0.1),
        randn(hidden, ffn, scale=0.1),
        randn(hidden),
    )


def projections(x, norm, wq, wk, wv):
    h = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * norm
    return torch.nn.functional.linear(h, wq), torch.nn.functional.linear(h, wk) + torch.nn.functional.linear(h, wv)


def test_one_row_products_rewritten_equal_eager_fp32():
    args = mlp_args(1, torch.float32)
    out, changed = compile_with_pass(mlp, *args)
    # down with its bias (addmm); gate and up have more outputs than inputs: the library's.
    assert changed == 1
    torch.testing.assert_close(out, mlp(*args), atol=1e-4, rtol=0)


def test_products_sharing_a_computed_input_equal_eager():
    generator = torch.Generator().manual_seed(1)
    args = [torch.randn(*shape, generator=generator) for shape in ((1, 64), (64,), (64, 64), (16, 64), (16, 64))]
    (q, kv), changed = compile_with_pass(projections, *args)
    assert changed == 3
    expected_q, expected_kv = projections(*args)
    torch.testing.assert_close(q, expected_q, atol=1e-4, rtol=0)
    torch.testing.assert_close(kv, expected_kv, atol=1e-4, rtol=0)


def test_one_row_products_rewritten_equal_eager_bf16():
    args = mlp_args(1, torch.bfloat16)
    out, changed = compile_with_pass(mlp, *args)
    assert changed == 1
    reference = mlp(*[a.float() for a in args])
    # bf16: within 1% of the output's scale of the float32 result (eager bf16 is as far).
    scale = reference.abs().max().item()
    assert (out.float() - reference).abs().max().item() <= 1e-2 * scale
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("rows", [2, 5])
def test_products_of_more_rows_keep_the_library(rows):
    args = mlp_args(rows, torch.float32)
    out, changed = compile_with_pass(mlp, *args)
    assert changed == 0
    torch.testing.assert_close(out, mlp(*args), atol=1e-4, rtol=0)


def test_symbolic_row_count_keeps_the_library():
    args = mlp_args(3, torch.float32)
    torch._dynamo.mark_dynamic(args[0], 0)
    out, changed = compile_with_pass(mlp, *args)
    assert changed == 0
    torch.testing.assert_close(out, mlp(*args), atol=1e-4, rtol=0)


def test_cuda_target_applies_the_pass_unless_matvec_library():
    target = CudaTarget()
    default = target.inductor_patches(Options(model_path=Path("m.py")), tuned=False)
    library = target.inductor_patches(Options(model_path=Path("m.py"), matvec="library"), tuned=False)
    tuned = target.inductor_patches(Options(model_path=Path("m.py")), tuned=True)
    assert isinstance(default["post_grad_custom_pre_pass"], MatvecPass)
    assert isinstance(tuned["post_grad_custom_pre_pass"], MatvecPass)
    assert "post_grad_custom_pre_pass" not in library


def test_pass_identity_is_stable():
    # Inductor keys its caches with it; it must not depend on the object.
    assert MatvecPass().uuid() == MatvecPass().uuid()
    assert MatvecPass(2).uuid() != MatvecPass(1).uuid()
