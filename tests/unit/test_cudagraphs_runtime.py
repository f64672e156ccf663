"""transpiler/runtime/cudagraphs_runtime.py on the CPU, bound to a hand-made model (no
package, no transpile): capture-size choice, padding, static inputs used by reference,
state written in place and restored after capture, outputs sliced back."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from transpiler.runtime import cudagraphs_runtime as cg
from transpiler.runtime.cudagraphs_runtime import GraphModel, InputSpec

# --- CPU stand-ins for torch.cuda's graph machinery -----------------------------


class _Recorder(TorchDispatchMode):
    def __init__(self, ops):
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, result))
        return result


class FakeGraphs:
    """CPU stand-ins for torch.cuda's graph machinery: a capture records the aten ops it
    runs; a replay re-runs them on the same tensors and writes into the same outputs, as a
    CUDA graph re-launches its kernels on fixed addresses."""

    def __init__(self):
        self.graphs = []
        self.pools = []
        fakes = self

        class CUDAGraph:
            def __init__(self):
                self.ops = []
                self.replays = 0
                fakes.graphs.append(self)

            def replay(self):
                self.replays += 1
                for func, args, kwargs, recorded in self.ops:
                    result = func(*args, **kwargs)
                    for old, new in zip(tree_flatten(recorded)[0], tree_flatten(result)[0]):
                        if isinstance(old, torch.Tensor) and old is not new:
                            old.copy_(new)

        class graph:
            def __init__(self, cuda_graph, pool=None):
                self.recorder = _Recorder(cuda_graph.ops)

            def __enter__(self):
                self.recorder.__enter__()

            def __exit__(self, *exc):
                self.recorder.__exit__(*exc)
                return False

        def graph_pool_handle():
            fakes.pools.append(object())
            return fakes.pools[-1]

        self.CUDAGraph, self.graph, self.graph_pool_handle = CUDAGraph, graph, graph_pool_handle

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self.graphs)


@pytest.fixture
def fake_graphs(monkeypatch):
    """transpiler.runtime.cudagraphs_runtime with its graph machinery faked on the CPU."""
    fakes = FakeGraphs()
    monkeypatch.setattr(cg, "CUDAGraph", fakes.CUDAGraph)
    monkeypatch.setattr(cg, "graph", fakes.graph)
    monkeypatch.setattr(cg, "graph_pool_handle", fakes.graph_pool_handle)
    monkeypatch.setattr(cg, "synchronize", lambda: None)
    return fakes


# --- a hand-made model ------------------------------------------------------------

ROWS = 9  # cache rows: 8 slots and a scratch row that padded tokens write


class Variant(NamedTuple):
    piece_a: Callable
    piece_b: Callable


CALLS = []  # every compiled piece call: (piece, size)


def piece_a(args):
    w, x = args
    args.clear()  # Inductor's convention
    CALLS.append(("piece_a", x.size(0)))
    return (x @ w,)


def piece_b(args):
    h, w = args
    args.clear()
    CALLS.append(("piece_b", h.size(0)))
    return (h @ w + 1,)


def select(size):
    return Variant(piece_a, piece_b)


def forward(weights, x, slots, cache, select=select):
    """Two pieces, an eager op between them, and a write of each token into the cache."""
    row = select(x.size(0))
    (h,) = row.piece_a([weights[0], x])
    h = torch.relu(h)  # the eager splitting op
    cache.index_copy_(0, slots, h)  # state written in place
    (out,) = row.piece_b([h, weights[1]])
    return (out, {"sum": cache.sum(0)})


def make_model(**overrides):
    fields = {
        "name": "fake_pkg",
        "inputs": (
            InputSpec("x", torch.float32, (None, 4), 0),
            InputSpec("slots", torch.int64, (None,), 0, False, ROWS - 1),
            InputSpec("cache", torch.float32, (ROWS, 4), None, True),
        ),
        "dispatch_input": 0,
        "dispatch_dim": 0,
        "output_dispatch_dims": (0, None),
        "capture_sizes": (1, 2, 4, 8),
        "mutated_inputs": ("cache",),
        "mutated_weights": (),
        "pad_by_default": True,
        "forward": forward,
        "select": select,
        "variant": Variant,
    }
    fields.update(overrides)
    return GraphModel(**fields)


def weights():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(4, 4, generator=generator), torch.randn(4, 4, generator=generator))


def inputs(size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 4, generator=generator), torch.randperm(ROWS - 1, generator=generator)[:size]


def test_the_base_runner_needs_a_model():
    with pytest.raises(TypeError, match="needs a model"):
        cg.CudaGraphRunner(weights())


def test_options_are_checked():
    runner_class = cg.runner_class(make_model())
    cache = torch.zeros(ROWS, 4)
    with pytest.raises(ValueError, match="fake_pkg: mode 'whole' is not one of"):
        runner_class(weights(), mode="whole", static_inputs={"cache": cache})
    with pytest.raises(ValueError, match="fake_pkg: capture sizes must be positive, got 0"):
        runner_class(weights(), capture_sizes=(0, 4), static_inputs={"cache": cache})


def test_capture_size_choice(fake_graphs):
    cache = torch.zeros(ROWS, 4)
    runner = cg.runner_class(make_model())(weights(), capture_sizes=(8, 2, 4, 2), static_inputs={"cache": cache})
    assert runner.capture_sizes == (2, 4, 8)  # sorted, each once
    assert runner.capture_size_for(1) is None  # nothing captured yet: the plain forward
    runner.capture()
    assert [runner.capture_size_for(size) for size in (1, 2, 3, 4, 5, 8, 9)] == [2, 2, 4, 4, 8, 8, None]
    exact = cg.runner_class(make_model())(weights(), pad=False, static_inputs={"cache": torch.zeros(ROWS, 4)})
    exact.capture()
    assert [exact.capture_size_for(size) for size in (1, 3, 4, 9)] == [1, None, 4, None]


def test_padding_rules():
    specs = (
        InputSpec("x", torch.float32, (None, 2), 0),
        InputSpec("ids", torch.int64, (1, None), 1),
        InputSpec("slots", torch.int64, (None,), 0, False, -1),
        InputSpec("table", torch.float32, (3,), None),
    )
    buffers = cg._allocate_input_buffers(specs, 4, "cpu")
    assert [tuple(b.shape) for b in buffers] == [(4, 2), (1, 4), (4,), (3,)]
    buffers[0].fill_(7)  # stale values of an earlier call must not survive in the padding
    values = (torch.ones(2, 2), torch.tensor([[5, 6]]), torch.tensor([3, 4]), torch.tensor([1.0, 2.0, 3.0]))
    cg._copy_into_buffers(specs, values, buffers, 2)
    assert buffers[0].tolist() == [[1, 1], [1, 1], [0, 0], [0, 0]]  # floating: zeros
    assert buffers[1].tolist() == [[5, 6, 6, 6]]  # integer: the last valid element repeated
    assert buffers[2].tolist() == [3, 4, -1, -1]  # a declared pad value
    assert buffers[3].tolist() == [1.0, 2.0, 3.0]  # no dispatch dim: copied whole


def test_outputs_are_sliced_back_along_their_dispatch_dims():
    outputs = (torch.arange(8).reshape(4, 2), [torch.arange(4)], {"t": torch.zeros(3, 4)})
    out, (listed,), rest = cg._slice_outputs(outputs, 3, (0, 0, 1))
    assert out.shape == (3, 2) and listed.tolist() == [0, 1, 2] and rest["t"].shape == (3, 3)
    assert out.data_ptr() == outputs[0].data_ptr()  # a view, not a copy


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_replays_match_the_plain_forward_and_write_the_callers_cache(fake_graphs, mode):
    w = weights()
    cache = torch.randn(ROWS, 4)
    before = cache.clone()
    runner = cg.runner_class(make_model())(w, mode=mode, static_inputs={"cache": cache})
    runner.capture()
    assert torch.equal(cache, before)  # capturing ran the forward, and put the cache back
    graph_count = len(fake_graphs.graphs)
    assert graph_count == (4 * 2 if mode == "piecewise" else 4)
    expected_cache = before.clone()
    for step, size in enumerate((3, 1, 8, 5)):
        x, slots = inputs(size, seed=step)
        expected = forward(w, x, slots, expected_cache)
        CALLS.clear()
        replays = fake_graphs.replays
        out, _rest = runner(x, slots, cache)
        assert fake_graphs.replays > replays and CALLS == []  # graphs replayed, no piece ran
        torch.testing.assert_close(out, expected[0], rtol=0, atol=1e-6)
        assert out.shape == (size, 4)
        # Valid tokens wrote their slots; padded ones only the scratch row.
        torch.testing.assert_close(cache[: ROWS - 1], expected_cache[: ROWS - 1], rtol=0, atol=1e-6)
    assert len(fake_graphs.graphs) == graph_count  # nothing captured again


def test_static_inputs_are_used_by_reference(fake_graphs):
    cache = torch.zeros(ROWS, 4)
    runner_class = cg.runner_class(make_model())
    with pytest.raises(TypeError, match=r"fake_pkg: CUDA graphs use cache in place .* cache=cache"):
        runner_class(weights())
    with pytest.raises(TypeError, match="kv is not static inputs"):
        runner_class(weights(), static_inputs={"cache": cache, "kv": cache})
    with pytest.raises(ValueError, match=r"static input cache must be torch.float32 \(9, 4\), got"):
        runner_class(weights(), static_inputs={"cache": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="must be a contiguous tensor on cpu"):
        runner_class(weights(), static_inputs={"cache": torch.zeros(4, ROWS).t()})
    runner = runner_class(weights(), static_inputs={"cache": cache})
    runner.capture()
    x, slots = inputs(2, seed=1)
    with pytest.raises(ValueError, match="fake_pkg: cache is not the tensor the CUDA graphs were captured on"):
        runner(x, slots, cache.clone())
    runner(x, slots, cache)
    assert cache[slots].abs().sum() > 0  # the caller's own tensor was written


def test_mutated_weights_are_restored_after_capture(fake_graphs):
    def counting_forward(weights, x, slots, cache, select=select):
        weights[2].add_(1)  # a buffer the forward updates in place
        return forward(weights, x, slots, cache, select)

    model = make_model(forward=counting_forward, mutated_weights=(2,))
    w = (*weights(), torch.zeros(()))
    runner = cg.runner_class(model)(w, mode="full", static_inputs={"cache": torch.zeros(ROWS, 4)})
    runner.capture()
    assert w[2].item() == 0  # warm-up and capture runs undone
    runner(*inputs(4, seed=2), runner.static_inputs[2])
    assert w[2].item() == 1  # a replay updates it in place


def test_a_second_capture_and_sizes_above_the_largest_are_refused_or_run_plainly(fake_graphs):
    cache = torch.zeros(ROWS, 4)
    runner = cg.runner_class(make_model(capture_sizes=(1, 2)))(weights(), static_inputs={"cache": cache})
    runner.capture()
    with pytest.raises(RuntimeError, match="already captured"):
        runner.capture()
    CALLS.clear()
    runner(*inputs(4, seed=3), cache)
    assert CALLS == [("piece_a", 4), ("piece_b", 4)]  # above 2: the plain forward
