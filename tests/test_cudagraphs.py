"""CUDA-graph runner (transpiler/runtime/cudagraphs_runtime.py, bound to a model by the
rendered templates/cudagraphs.py.jinja) and its transpiler side
(transpiler/cudagraphs.py), tested on the CPU.

The emitted module is rendered into a tiny hand-made package (a stitch.forward and a
dispatch.select in the emitted style, pieces following Inductor's calling convention), and
its graph machinery (CUDAGraph, graph, graph_pool_handle, synchronize) is replaced by a
CPU fake: capturing runs the function once while recording the aten ops it runs, and a
replay re-runs those ops on the same tensors, writing into the same output tensors, as a
CUDA graph re-launches its kernels on fixed addresses. So a replay sees new data only if
the runner copied it into the buffers the capture used.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import uuid

import black
import pytest
import torch
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from transpiler.cudagraphs import (
    PaddedDim,
    capture_sizes_within,
    cudagraphs_context,
    default_capture_sizes,
    input_padded_dims,
    output_dispatch_dims,
    render_source,
    sizes_literal,
    validate_capture_sizes,
)
from transpiler.errors import TranspileError
from transpiler.options import parse_capture_sizes
from transpiler.runtime import runtime_files

REAL_GC_COLLECT = gc.collect
REAL_EMPTY_CACHE = torch.cuda.empty_cache
CAPTURE_SIZES = (1, 2, 4, 8)

# --- the fake package ---------------------------------------------------------------

PIECES_PY = '''
"""Compiled pieces, Inductor's convention: a list of arguments the callee clears, a tuple back."""

import torch

CALLS = []  # (piece, variant, size) for every call of a piece function


def make_piece_0(variant, lo, hi):
    def piece_0(args):
        w0, x, positions = args
        args.clear()
        size = x.size(0)
        assert lo <= size <= hi, (variant, size)
        CALLS.append(("piece_0", variant, size))
        h = torch.mm(x, w0) + positions.unsqueeze(1).to(x.dtype)
        return (size, h)

    return piece_0


def make_piece_1(variant, lo, hi):
    def piece_1(args):
        w, size, h, attn = args
        args.clear()
        assert h.size(0) == size and lo <= size <= hi, (variant, size)
        CALLS.append(("piece_1", variant, size))
        return (torch.mm(h + attn, w),)

    return piece_1


def make_piece_2(variant, lo, hi):
    def piece_2(args):
        w, h1, h2 = args
        args.clear()
        CALLS.append(("piece_2", variant, h1.size(0)))
        out = h2 * 2 + h1
        return (out, out.t().contiguous(), w.sum(0))

    return piece_2
'''

DISPATCH_PY = '''
"""Size dispatch: two ranges."""

from typing import Callable, NamedTuple

from . import pieces


class Variant(NamedTuple):
    piece_0: Callable
    piece_1: Callable
    piece_2: Callable


def _variant(name, lo, hi):
    return Variant(
        pieces.make_piece_0(name, lo, hi), pieces.make_piece_1(name, lo, hi), pieces.make_piece_2(name, lo, hi)
    )


RANGES = ((1, 8, _variant("range_1_8", 1, 8)), (9, 16, _variant("range_9_16", 9, 16)))


def select(size: int) -> Variant:
    for lo, hi, variant in RANGES:
        if lo <= size <= hi:
            return variant
    raise ValueError(f"size {size} outside 1-16")
'''

STITCH_PY = '''
"""Forward: pieces through `select`, splitting ops (softmax here) eager between them."""

import torch

from . import dispatch


def forward(weights, x, positions, select=dispatch.select):
    (w0, w1, w2) = weights
    variant = select(x.size(0))
    size, h = variant.piece_0([w0, x, positions])
    attn = torch.softmax(h, dim=-1)
    (h1,) = variant.piece_1([w1, size, h, attn])
    del h, attn
    attn_1 = torch.softmax(h1, dim=-1)
    (h2,) = variant.piece_1([w2, size, h1, attn_1])
    del attn_1
    out, out_t, summary = variant.piece_2([w2, h1, h2])
    del h1, h2
    return (out, {"transposed": out_t, "summary": summary})
'''

INPUT_SPECS = [("x", "torch.float32", (None, 4)), ("positions", "torch.int64", (None,))]
OUTPUT_DIMS = (0, 1, None)


@pytest.fixture
def package(tmp_path):
    """The fake package with the rendered cudagraphs.py and the runtime beside it, imported
    under a fresh name."""
    name = f"cg_fake_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    context = cudagraphs_context(
        name,
        capture_sizes=CAPTURE_SIZES,
        inputs=INPUT_SPECS,
        dispatch_input_index=0,
        dispatch_dim=0,
        output_dispatch_dims=OUTPUT_DIMS,
    )
    files = {
        "__init__.py": '"""A hand-made package in the emitted style."""\n',
        "pieces.py": PIECES_PY,
        "dispatch.py": DISPATCH_PY,
        "stitch.py": STITCH_PY,
        "cudagraphs.py": black.format_str(render_source(context), mode=black.Mode(magic_trailing_comma=False)),
        **runtime_files("cudagraphs_runtime.py"),
    }
    for file_name, source in files.items():
        (folder / file_name).write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        for submodule in ("pieces", "dispatch", "stitch", "cudagraphs_runtime", "cudagraphs"):
            importlib.import_module(f"{name}.{submodule}")
        yield module
    finally:
        sys.path.remove(str(tmp_path))
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


# --- the fake graph machinery -------------------------------------------------------


class _Recorder(TorchDispatchMode):
    def __init__(self, ops):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, result))
        return result


class FakeMachinery:
    """CPU stand-ins for torch.cuda.CUDAGraph, torch.cuda.graph and graph_pool_handle."""

    def __init__(self, package):
        self.package = package
        self.graphs = []  # every FakeCUDAGraph made
        self.captures = []  # per capture: dict(gc=..., empty_cache=..., pool=..., piece_call=...)
        self.pools = []
        self.fail_at_capture = None  # raise on entering this capture (0-based)
        machinery = self

        class FakeCUDAGraph:
            def __init__(self):
                self.ops = []
                self.replays = 0
                machinery.graphs.append(self)

            def replay(self):
                self.replays += 1
                for func, args, kwargs, recorded in self.ops:
                    result = func(*args, **kwargs)
                    for old, new in zip(tree_flatten(recorded)[0], tree_flatten(result)[0]):
                        if isinstance(old, torch.Tensor) and old is not new:
                            old.copy_(new)

        class FakeGraphContext:
            def __init__(self, cuda_graph, pool=None):
                self.cuda_graph = cuda_graph
                self.pool = pool
                self.mode = None

            def __enter__(self):
                number = len(machinery.captures)
                machinery.captures.append(
                    {
                        "gc": gc.collect is REAL_GC_COLLECT,
                        "empty_cache": torch.cuda.empty_cache is REAL_EMPTY_CACHE,
                        "pool": self.pool,
                    }
                )
                if number == machinery.fail_at_capture:
                    raise RuntimeError("fake capture failure")
                # As torch.cuda.graph does on entry (no-ops while the runner patches them).
                gc.collect()
                torch.cuda.empty_cache()
                self.mode = _Recorder(self.cuda_graph.ops)
                self.mode.__enter__()

            def __exit__(self, *exc):
                self.mode.__exit__(*exc)
                calls = machinery.package.pieces.CALLS
                machinery.captures[-1]["piece_call"] = calls[-1] if calls else None
                return False

        def fake_pool_handle():
            pool = object()
            machinery.pools.append(pool)
            return pool

        self.CUDAGraph = FakeCUDAGraph
        self.graph = FakeGraphContext
        self.graph_pool_handle = fake_pool_handle

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self.graphs)


@pytest.fixture
def fake(package, monkeypatch):
    machinery = FakeMachinery(package)
    module = package.cudagraphs_runtime  # the machinery is looked up there
    monkeypatch.setattr(module, "CUDAGraph", machinery.CUDAGraph)
    monkeypatch.setattr(module, "graph", machinery.graph)
    monkeypatch.setattr(module, "graph_pool_handle", machinery.graph_pool_handle)
    monkeypatch.setattr(module, "synchronize", lambda: None)
    return machinery


# --- helpers ------------------------------------------------------------------------


def make_weights(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(4, 4, generator=generator) for _ in range(3))


def make_inputs(size, seed):
    generator = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(size, 4, generator=generator)
    positions = torch.randint(0, 50, (size,), generator=generator)
    return x, positions


def flat(outputs):
    out, rest = outputs
    return [out, rest["transposed"], rest["summary"]]


def assert_outputs_equal(actual, expected):
    assert isinstance(actual, tuple) and set(actual[1]) == {"transposed", "summary"}
    for got, want in zip(flat(actual), flat(expected)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def piece_calls(package):
    return len(package.pieces.CALLS)


# --- the runner ---------------------------------------------------------------------


def test_emitted_module_constants_and_imports(package):
    module = package.cudagraphs
    assert module.CAPTURE_SIZES == CAPTURE_SIZES
    assert module.INPUTS == (
        module.InputSpec("x", torch.float32, (None, 4), 0),
        module.InputSpec("positions", torch.int64, (None,), 0),
    )
    assert (module.DISPATCH_INPUT, module.DISPATCH_DIM) == (0, 0)
    assert module.OUTPUT_DISPATCH_DIMS == OUTPUT_DIMS
    assert module.MODEL.name == package.__name__ and module.MODEL.forward is package.stitch.forward
    assert issubclass(module.CudaGraphRunner, package.cudagraphs_runtime.CudaGraphRunner)
    for path in (module.__file__, package.cudagraphs_runtime.__file__):
        source = open(path).read()
        for forbidden in ("_dynamo", "_inductor", "triton"):
            assert forbidden not in source


def test_calls_before_capture_run_the_plain_forward(package, fake):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights)
    inputs = make_inputs(4, seed=1)
    outputs = runner(*inputs)
    assert_outputs_equal(outputs, package.stitch.forward(weights, *inputs))
    assert not runner.captured and runner.capture_size_for(4) is None
    assert fake.graphs == [] and fake.captures == []


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_replay_matches_the_plain_forward_at_every_size(package, fake, mode):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights, mode=mode)
    runner.capture()
    assert runner.captured
    for size in range(1, 9):  # exact capture sizes and padded ones
        for seed in (size, size + 100):  # new data each call: the replay must see it
            inputs = make_inputs(size, seed)
            expected = package.stitch.forward(weights, *inputs)
            calls, replays = piece_calls(package), fake.replays
            outputs = runner(*inputs)
            assert_outputs_equal(outputs, expected)
            assert piece_calls(package) == calls, "a replay must not run the piece functions"
            assert fake.replays > replays


def test_padding_fills_floats_with_zeros_and_repeats_the_last_integer(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights())
    runner.capture()
    x, positions = make_inputs(3, seed=7)
    runner(x, positions)
    assert runner.capture_size_for(3) == 4
    x_buffer, positions_buffer = runner._graphs[4].input_buffers
    assert x_buffer.shape == (4, 4) and positions_buffer.shape == (4,)
    torch.testing.assert_close(x_buffer[:3], x)
    assert torch.count_nonzero(x_buffer[3]) == 0
    assert positions_buffer.tolist() == positions.tolist() + [positions[2].item()]
    # Outputs are sliced back along each output's dispatch dim; the others are whole.
    out, rest = runner(x, positions)
    assert out.shape == (3, 4) and rest["transposed"].shape == (4, 3) and rest["summary"].shape == (4,)


def test_pieces_read_fixed_tensors_in_place_and_copy_the_others(package, fake):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights)
    runner.capture()
    size_graphs = runner._graphs[8]
    assert [g.piece for g in size_graphs.piece_graphs] == ["piece_0", "piece_1", "piece_1", "piece_2"]
    copied = [tuple(position for position, _ in g.copied_args) for g in size_graphs.piece_graphs]
    # piece_0: weights and the static input buffers; piece_1: only the softmax output
    # (position 3) is copied, h/h1 come from earlier graphs; piece_2: all fixed.
    assert copied == [(), (3,), (3,), ()]
    fixed = size_graphs.fixed_tensors
    assert all(id(w) in fixed for w in weights)
    assert all(id(b) in fixed for b in size_graphs.input_buffers)
    # The outputs of piece_0's graph are what piece_1's graph reads: the same tensors.
    h = size_graphs.piece_graphs[0].outputs[1]
    assert id(h) in fixed
    assert size_graphs.piece_graphs[0].outputs[0] == 8  # ints are baked in
    # At replay the copied buffer receives the eager output, in place.
    buffer = size_graphs.piece_graphs[1].copied_args[0][1]
    address = buffer.data_ptr()
    inputs = make_inputs(8, seed=3)
    runner(*inputs)
    assert buffer.data_ptr() == address
    expected_h = torch.mm(inputs[0], weights[0]) + inputs[1].unsqueeze(1).float()
    torch.testing.assert_close(buffer, torch.softmax(expected_h, dim=-1))


def test_sizes_above_the_largest_capture_size_run_without_graphs(package, fake):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights)
    runner.capture()
    inputs = make_inputs(12, seed=5)
    calls, replays = piece_calls(package), fake.replays
    outputs = runner(*inputs)
    assert runner.capture_size_for(12) is None
    assert fake.replays == replays
    assert [c[1] for c in package.pieces.CALLS[calls:]] == ["range_9_16"] * 4
    assert_outputs_equal(outputs, package.stitch.forward(weights, *inputs))


def test_without_padding_only_exact_capture_sizes_replay(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights(), pad=False)
    runner.capture()
    assert runner.capture_size_for(3) is None and runner.capture_size_for(4) == 4
    replays = fake.replays
    runner(*make_inputs(3, seed=1))
    assert fake.replays == replays
    runner(*make_inputs(4, seed=1))
    assert fake.replays > replays


def test_capture_sizes_largest_first_in_one_shared_pool(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights(), capture_sizes=(2, 8, 1, 4))
    runner.capture()
    captured = [(c["piece_call"][0], c["piece_call"][2]) for c in fake.captures]
    expected = [(piece, size) for size in (8, 4, 2, 1) for piece in ("piece_0", "piece_1", "piece_1", "piece_2")]
    assert captured == expected
    assert len(fake.pools) == 1
    assert all(c["pool"] is fake.pools[0] for c in fake.captures)


def test_warmup_runs_before_each_capture(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights(), capture_sizes=(4,), warmup_runs=2)
    runner.capture()
    # Two plain forwards (4 piece calls each) run before the capture's 4 calls.
    assert [c[2] for c in package.pieces.CALLS] == [4] * 12
    assert len(fake.captures) == 4


def test_garbage_collection_skipped_after_the_first_graph_and_restored(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights())
    runner.capture()
    # The first graph of the first (largest) size collects and empties the cache; no other does.
    first_only = [True] + [False] * (4 * len(CAPTURE_SIZES) - 1)
    assert [c["gc"] for c in fake.captures] == first_only
    assert [c["empty_cache"] for c in fake.captures] == first_only
    assert gc.collect is REAL_GC_COLLECT and torch.cuda.empty_cache is REAL_EMPTY_CACHE


def test_full_mode_captures_one_graph_per_size_collecting_garbage_once(package, fake):
    runner = package.cudagraphs.CudaGraphRunner(make_weights(), mode="full")
    runner.capture()
    assert len(fake.captures) == len(CAPTURE_SIZES)
    assert [c["gc"] and c["empty_cache"] for c in fake.captures] == [True, False, False, False]
    assert [c["piece_call"][2] for c in fake.captures] == [8, 4, 2, 1]


def test_a_failed_capture_restores_gc_and_leaves_the_plain_forward(package, fake):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights)
    fake.fail_at_capture = 5  # size 4, piece_1: garbage collection is patched out then
    with pytest.raises(RuntimeError, match="size 4"):
        runner.capture()
    assert gc.collect is REAL_GC_COLLECT and torch.cuda.empty_cache is REAL_EMPTY_CACHE
    assert not runner.captured
    inputs = make_inputs(8, seed=2)
    replays = fake.replays
    assert_outputs_equal(runner(*inputs), package.stitch.forward(weights, *inputs))
    assert fake.replays == replays


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_outputs_stay_valid_until_the_next_call_with_the_same_capture_size(package, fake, mode):
    weights = make_weights()
    runner = package.cudagraphs.CudaGraphRunner(weights, mode=mode)
    runner.capture()
    first_inputs = make_inputs(5, seed=11)  # capture size 8
    first = runner(*first_inputs)
    kept = [t.clone() for t in flat(first)]
    # A call at another capture size leaves them alone.
    runner(*make_inputs(2, seed=12))
    assert_outputs_equal(first, package.stitch.forward(weights, *first_inputs))
    # A call mapping to the same capture size overwrites them in place.
    second_inputs = make_inputs(7, seed=13)
    second = runner(*second_inputs)
    assert first[0].data_ptr() == second[0].data_ptr()
    expected = package.stitch.forward(weights, *second_inputs)
    torch.testing.assert_close(first[0], expected[0][:5])
    assert not torch.equal(first[0], kept[0])
    # The clone taken before still holds the first call's outputs.
    for got, want in zip(kept, flat(package.stitch.forward(weights, *first_inputs))):
        torch.testing.assert_close(got, want)


def test_capture_logs_what_it_captures_and_how_long(package, fake):
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(package.__name__)
    handler = Collect(level=logging.DEBUG)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        package.cudagraphs.CudaGraphRunner(make_weights()).capture()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert messages[0].startswith(f"{package.__name__}: capturing piecewise CUDA graphs for 4 sizes (8 down to 1)")
    assert any(m.startswith(f"{package.__name__}: captured size 8: 4 graphs in ") for m in messages)
    assert messages[-1].startswith(f"{package.__name__}: captured 16 CUDA graphs for 4 sizes in ")
    assert messages[-1].endswith(" s")


def test_capture_twice_and_bad_options_are_refused(package, fake):
    module = package.cudagraphs
    runner = module.CudaGraphRunner(make_weights())
    runner.capture()
    with pytest.raises(RuntimeError, match="already captured"):
        runner.capture()
    with pytest.raises(ValueError, match="mode"):
        module.CudaGraphRunner(make_weights(), mode="partial")
    with pytest.raises(ValueError, match="positive"):
        module.CudaGraphRunner(make_weights(), capture_sizes=(0, 4))


# --- capture sizes ------------------------------------------------------------------


def test_default_capture_sizes_are_vllms_clipped_to_the_range():
    assert default_capture_sizes(1, 256) == [1, 2, 4, *range(8, 257, 8)]
    unbounded = default_capture_sizes(1, None)
    assert unbounded[-1] == 512 and len(unbounded) == 3 + 64
    assert default_capture_sizes(1, 4096) == unbounded
    assert default_capture_sizes(1, 100)[-1] == 96
    assert default_capture_sizes(3, 20) == [4, 8, 16]
    assert default_capture_sizes(16, 40) == [16, 24, 32, 40]
    assert default_capture_sizes(5, 7) == []


@pytest.mark.parametrize(
    "sizes, literal",
    [
        (default_capture_sizes(1, 256), "(1, 2, 4, *range(8, 257, 8))"),
        ([1, 2, 3, 8], "(1, 2, 3, 8)"),
        ([16, 24, 32, 40], "(*range(16, 41, 8),)"),
        ([4], "(4,)"),
        ([], "()"),
    ],
)
def test_capture_sizes_print_short(sizes, literal):
    assert sizes_literal(sizes) == literal
    assert eval(literal) == tuple(sizes)


def test_valid_capture_sizes_pass():
    assert validate_capture_sizes([1, 3, 8], 1, 16) == [1, 3, 8]
    assert validate_capture_sizes([600], 1, None) == [600]
    assert capture_sizes_within(parse_capture_sizes("1, 2,4"), 1, 16) == [1, 2, 4]
    assert capture_sizes_within(parse_capture_sizes(None), 1, 16) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    "sizes, message",
    [
        ([], "no size"),
        ([0, 2], "not positive"),
        ([-4], "not positive"),
        ([2, 2, 4], "appears twice"),
        ([4, 2], "increasing order"),
        ([1, 300], "outside the compiled sizes"),
        ([2.5], "not a whole number"),
    ],
)
def test_invalid_capture_sizes_are_refused_in_one_line(sizes, message):
    with pytest.raises(TranspileError, match=message) as error:
        validate_capture_sizes(sizes, 1, 256)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text", ["1,x", "", "1,,2", "4,-1"])
def test_unparsable_capture_sizes_are_refused(text):
    with pytest.raises(TranspileError) as error:
        capture_sizes_within(parse_capture_sizes(text), 1, 256)
    assert str(error.value).startswith("--capture-sizes: ") and "\n" not in str(error.value)


def test_capture_size_below_the_range_is_refused():
    with pytest.raises(TranspileError, match="outside"):
        validate_capture_sizes([1, 8], 2, 16)


# --- dispatch dims of the exported graph ------------------------------------------


def _export(module, inputs, dynamic_shapes):
    program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    return program, placeholders


class Outputs(torch.nn.Module):
    def forward(self, x, scale):
        doubled = x * 2  # (2, s, 4): dim 1
        return doubled, {"pooled": x.sum(1) * scale, "flipped": doubled.transpose(1, 2)}


def test_output_dispatch_dims_per_flat_leaf():
    seq = Dim("seq", min=1, max=64)
    program, placeholders = _export(Outputs(), (torch.randn(2, 5, 4), torch.randn(4)), ({1: seq}, None))
    symbol = placeholders["x"].meta["val"].shape[1].node.expr
    assert output_dispatch_dims(program.graph_module, symbol) == (1, None, 2)
    assert input_padded_dims(program.graph_module, symbol, ["x", "scale"]) == (PaddedDim(1), None)


class Flattened(torch.nn.Module):
    def forward(self, x):
        return x.reshape(2, -1)  # (2, 4*s)


class Square(torch.nn.Module):
    def forward(self, x):
        return x @ x.transpose(1, 2)  # (2, s, s)


@pytest.mark.parametrize(
    "module, message",
    [(Flattened(), "computed from the dispatch size"), (Square(), "in dims 1 and 2")],
)
def test_outputs_padding_cannot_be_undone_on_are_refused(module, message):
    seq = Dim("seq", min=1, max=64)
    program, placeholders = _export(module, (torch.randn(2, 5, 4),), ({1: seq},))
    symbol = placeholders["x"].meta["val"].shape[1].node.expr
    with pytest.raises(TranspileError, match=message) as error:
        output_dispatch_dims(program.graph_module, symbol)
    assert "\n" not in str(error.value)


class TwoDynamic(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_inputs_with_another_dynamic_dim_are_refused():
    program, placeholders = _export(
        TwoDynamic(), (torch.randn(3, 5),), ({0: Dim("batch", min=1, max=8), 1: Dim("seq", min=1, max=64)},)
    )
    symbol = placeholders["x"].meta["val"].shape[1].node.expr
    padded = input_padded_dims(program.graph_module, symbol, ["x"])
    assert padded == (PaddedDim(1),)
    with pytest.raises(TranspileError, match="input x dim 0 varies independently"):
        cudagraphs_context("p", [1], [("x", "torch.float32", (None, None))], 0, 1, (1,), padded)


# --- the template's context -------------------------------------------------------


def test_context_prints_plain_literals():
    context = cudagraphs_context("tiny", [8, 1, 2], INPUT_SPECS, 0, 0, (0, None))
    assert context.capture_sizes_literal == "(1, 2, 8)"
    assert context.largest_capture_size == 8
    assert context.output_dispatch_dims_literal == "(0, None)"
    assert [(i.name, i.dtype, i.shape_literal, i.padded_dim_literal) for i in context.inputs] == [
        ("x", "torch.float32", "(None, 4)", "0"),
        ("positions", "torch.int64", "(None,)", "0"),
    ]
    source = black.format_str(render_source(context), mode=black.Mode(magic_trailing_comma=False))
    compile(source, "cudagraphs.py", "exec")
    assert 'name="tiny",' in source and "CudaGraphRunner = runner_class(MODEL)" in source


def test_context_accepts_ir_specs_and_static_inputs():
    from transpiler.ir import TensorSpec

    specs = [TensorSpec("ids", "torch.int64", (1, None)), TensorSpec("table", "torch.float32", (3, 4))]
    context = cudagraphs_context("tiny", [1, 2], specs, 0, 1, (1,))
    assert [i.padded_dim_literal for i in context.inputs] == ["1", "None"]


def test_context_refuses_other_dynamic_dims_and_a_static_dispatch_dim():
    with pytest.raises(TranspileError, match="varies independently"):
        cudagraphs_context("tiny", [1], [("x", "torch.float32", (None, None))], 0, 0, (0,))
    with pytest.raises(TranspileError, match="not dynamic"):
        cudagraphs_context("tiny", [1], [("x", "torch.float32", (3, 4))], 0, 0, (None,))


# --- on a real GPU (skipped without one) ------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_real_cuda_graphs_replay_like_the_plain_forward(package, mode):
    weights = tuple(w.cuda() for w in make_weights())
    runner = package.cudagraphs.CudaGraphRunner(weights, mode=mode)
    runner.capture()
    assert gc.collect is REAL_GC_COLLECT and torch.cuda.empty_cache is REAL_EMPTY_CACHE
    for size in list(range(1, 9)) + [12]:
        for seed in (size, size + 100):
            inputs = tuple(t.cuda() for t in make_inputs(size, seed))
            expected = package.stitch.forward(weights, *inputs)
            calls = piece_calls(package)
            outputs = runner(*inputs)
            assert_outputs_equal(outputs, expected)
            assert (piece_calls(package) == calls) == (size <= 8)
    first = runner(*(t.cuda() for t in make_inputs(5, seed=1)))
    second = runner(*(t.cuda() for t in make_inputs(6, seed=2)))
    assert first[0].data_ptr() == second[0].data_ptr()
