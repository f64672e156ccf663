"""CUDA-graph runner with state written in place (a KV cache), tested on the CPU with the
fake graph machinery of test_cudagraphs.py.

The fake package's splitting op writes its tokens into `cache` at `slots` (slot -1: the
scratch row), and a later piece reads the whole cache: a runner that copied the cache into
a buffer would update the copy and lose the write, which these tests detect.
"""

from __future__ import annotations

import importlib
import sys
import uuid

import black
import pytest
import torch
from test_cudagraphs import FakeMachinery

from transpiler.cudagraphs import cudagraphs_context, render_source
from transpiler.errors import TranspileError
from transpiler.ir import State
from transpiler.runtime import runtime_files

ROWS = 9  # 8 slots and a scratch row

_LIB = torch.library.Library("cgstate", "DEF")
_LIB.define("write(Tensor h, Tensor(a!) cache, Tensor slots) -> ()")


def _write(h, cache, slots):
    rows = torch.where(slots < 0, cache.size(0) - 1, slots)
    cache.index_copy_(0, rows, h)


_LIB.impl("write", _write, "CompositeExplicitAutograd")

PIECES_PY = """
import torch


def make_piece_0(variant):
    def piece_0(args):
        w0, x = args
        args.clear()
        return (torch.mm(x, w0),)

    return piece_0


def make_piece_1(variant):
    def piece_1(args):
        w1, h, cache = args
        args.clear()
        return (torch.mm(h, w1) + cache[:-1].sum(0),)

    return piece_1
"""

DISPATCH_PY = """
from typing import Callable, NamedTuple

from . import pieces


class Variant(NamedTuple):
    piece_0: Callable
    piece_1: Callable


VARIANT = Variant(pieces.make_piece_0("range_1_16"), pieces.make_piece_1("range_1_16"))


def select(size: int) -> Variant:
    if not 1 <= size <= 16:
        raise ValueError(f"size {size} outside 1-16")
    return VARIANT
"""

STITCH_PY = """
import torch

from . import dispatch


def forward(weights, x, slots, cache, select=dispatch.select):
    (w0, w1) = weights
    variant = select(x.size(0))
    (h,) = variant.piece_0([w0, x])
    torch.ops.cgstate.write.default(h, cache, slots)
    (out,) = variant.piece_1([w1, h, cache])
    del h
    return out
"""

INPUTS = [("x", "torch.float32", (None, 4)), ("slots", "torch.int64", (None,)), ("cache", "torch.float32", (ROWS, 4))]
STATE = State(
    mutated_inputs=("cache",),
    writers=(("cache", ("cgstate::write",)),),
    static_inputs=("cache",),
    pad_values=(("slots", -1),),
)


def _make_package(tmp_path, state):
    name = f"cg_state_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    context = cudagraphs_context(
        name, (1, 2, 4, 8), INPUTS, 0, 0, output_dispatch_dims=(0,), input_dispatch_dims=(0, 0, None), state=state
    )
    files = {
        "__init__.py": "",
        "pieces.py": PIECES_PY,
        "dispatch.py": DISPATCH_PY,
        "stitch.py": STITCH_PY,
        "cudagraphs.py": black.format_str(render_source(context), mode=black.Mode(magic_trailing_comma=False)),
        **runtime_files("cudagraphs_runtime.py"),
    }
    for file_name, source in files.items():
        (folder / file_name).write_text(source)
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module(name)
    for submodule in ("pieces", "dispatch", "stitch", "cudagraphs_runtime", "cudagraphs"):
        importlib.import_module(f"{name}.{submodule}")
    return name, module


@pytest.fixture
def package(tmp_path):
    name, module = _make_package(tmp_path, STATE)
    yield module
    sys.path.remove(str(tmp_path))
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture
def fake(package, monkeypatch):
    machinery = FakeMachinery(package)
    machinery.package.pieces.CALLS = []
    module = package.cudagraphs_runtime  # the machinery is looked up there
    monkeypatch.setattr(module, "CUDAGraph", machinery.CUDAGraph)
    monkeypatch.setattr(module, "graph", machinery.graph)
    monkeypatch.setattr(module, "graph_pool_handle", machinery.graph_pool_handle)
    monkeypatch.setattr(module, "synchronize", lambda: None)
    return machinery


def _weights():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 4, generator=generator), torch.randn(4, 4, generator=generator))


def _step(size, start, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 4, generator=generator), torch.arange(start, start + size) % (ROWS - 1)


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_decode_loop_updates_the_callers_cache(package, fake, mode):
    """Prefill, decode steps, padded sizes and a size past the largest capture size: the
    runner's outputs and cache equal the plain forward's on a twin cache after every call."""
    weights = _weights()
    cache = torch.randn(ROWS, 4)
    twin = cache.clone()
    runner = package.cudagraphs.CudaGraphRunner(weights, mode=mode, static_inputs={"cache": cache})
    runner.capture()
    assert torch.equal(cache, twin), "capture changed the cache"
    replays = 0
    start = 0
    for step, size in enumerate([3, 1, 1, 2, 5, 1, 11, 1]):
        x, slots = _step(size, start, step)
        expected = package.stitch.forward(weights, x, slots, twin)
        actual = runner(x, slots, cache)
        torch.testing.assert_close(actual, expected)
        # Every row but the scratch one, which padded tokens write and nothing reads.
        torch.testing.assert_close(cache[:-1], twin[:-1], msg=lambda m: f"cache after step {step} ({size} tokens): {m}")
        start += size
        if size <= 8:
            replays += 1
    assert fake.replays >= replays  # the graphs ran (piecewise: one replay per piece call)
    assert runner.pad  # pad values are declared, so padded sizes replay graphs


def test_padded_tokens_write_only_the_scratch_row(package, fake):
    weights = _weights()
    cache = torch.zeros(ROWS, 4)
    runner = package.cudagraphs.CudaGraphRunner(weights, mode="full", static_inputs={"cache": cache})
    runner.capture()
    x, slots = _step(3, 0, 0)  # padded to 4: one padded token
    runner(x, slots, cache)
    assert cache[3:-1].abs().sum() == 0, "a padded token wrote a real slot"
    assert cache[:3].abs().sum() > 0


def test_another_cache_tensor_is_refused(package, fake):
    cache = torch.zeros(ROWS, 4)
    runner = package.cudagraphs.CudaGraphRunner(_weights(), static_inputs={"cache": cache})
    runner.capture()
    x, slots = _step(2, 0, 0)
    with pytest.raises(ValueError, match="cache is not the tensor the CUDA graphs were captured on"):
        runner(x, slots, torch.zeros(ROWS, 4))
    runner(x, slots, cache)  # the bound one still works


def test_static_inputs_must_be_given_and_match(package):
    runner_class = package.cudagraphs.CudaGraphRunner
    with pytest.raises(TypeError, match=r"use cache in place .* model.capture\(mode, cache=cache\)"):
        runner_class(_weights())
    with pytest.raises(TypeError, match="kv are not static inputs|kv is not static inputs"):
        runner_class(_weights(), static_inputs={"cache": torch.zeros(ROWS, 4), "kv": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"static input cache must be torch.float32 \(9, 4\)"):
        runner_class(_weights(), static_inputs={"cache": torch.zeros(3, 4)})


def test_state_without_pad_values_replays_only_exact_sizes(tmp_path, monkeypatch):
    name, module = _make_package(tmp_path, State(mutated_inputs=("cache",), static_inputs=("cache",)))
    try:
        machinery = FakeMachinery(module)
        module.pieces.CALLS = []
        for attribute, value in [
            ("CUDAGraph", machinery.CUDAGraph),
            ("graph", machinery.graph),
            ("graph_pool_handle", machinery.graph_pool_handle),
            ("synchronize", lambda: None),
        ]:
            monkeypatch.setattr(module.cudagraphs_runtime, attribute, value)
        assert module.cudagraphs.PAD_BY_DEFAULT is False
        cache = torch.zeros(ROWS, 4)
        runner = module.cudagraphs.CudaGraphRunner(_weights(), static_inputs={"cache": cache})
        runner.capture()
        assert runner.capture_size_for(3) is None  # no padding: the plain forward
        assert runner.capture_size_for(4) == 4
    finally:
        sys.path.remove(str(tmp_path))
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_static_input_with_the_dispatch_dim_is_refused():
    state = State(mutated_inputs=("x",), static_inputs=("x",))
    with pytest.raises(TranspileError, match="input x is written in place but its dim 0 is the dispatch size"):
        cudagraphs_context("p", (1, 2), INPUTS, 0, 0, (0,), (0, 0, None), state=state)


def test_pad_value_for_an_input_never_padded_is_refused():
    state = State(pad_values=(("cache", 0),))
    with pytest.raises(TranspileError, match="pad value for input cache, which has no padded dim"):
        cudagraphs_context("p", (1, 2), INPUTS, 0, 0, (0,), (0, 0, None), state=state)
