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
    assert buffers[2].tolist() == [-1, -1, -1, -1]  # a buffer starts out as padding
    buffers[0].fill_(7)  # stale values of an earlier call must not survive in the padding
    values = (torch.ones(2, 2), torch.tensor([[5, 6]]), torch.tensor([3, 4]), torch.tensor([1.0, 2.0, 3.0]))
    cg._copy_into_buffers(specs, values, buffers)
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


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_lazy_capture_captures_each_size_at_its_first_call(fake_graphs, mode):
    w = weights()
    cache = torch.randn(ROWS, 4)
    expected_cache = cache.clone()
    runner = cg.runner_class(make_model())(w, mode=mode, static_inputs={"cache": cache})
    runner.capture(lazy=True)
    assert runner.captured and fake_graphs.graphs == []  # nothing captured yet
    per_size = 2 if mode == "piecewise" else 1
    captured_sizes = []
    for step, size in enumerate((3, 1, 4, 8, 1, 3)):
        x, slots = inputs(size, seed=step)
        expected = forward(w, x, slots, expected_cache)
        CALLS.clear()
        out, _rest = runner(x, slots, cache)
        capture_size = runner.capture_size_for(size)
        if capture_size not in captured_sizes:
            captured_sizes.append(capture_size)
        assert len(fake_graphs.graphs) == per_size * len(captured_sizes)  # only sizes called so far
        assert sorted(runner._graphs) == sorted(captured_sizes)
        torch.testing.assert_close(out, expected[0], rtol=0, atol=1e-6)
        # The capture's warm-up runs wrote the cache and were undone: only real tokens count.
        torch.testing.assert_close(cache[: ROWS - 1], expected_cache[: ROWS - 1], rtol=0, atol=1e-6)
    assert captured_sizes == [4, 1, 8]
    with pytest.raises(RuntimeError, match="already captured"):
        runner.capture()


def test_a_failed_lazy_capture_says_which_size_and_keeps_the_cache(fake_graphs, monkeypatch):
    def failing_capture(self, collect_garbage=True):
        raise RuntimeError("operation not permitted when stream is capturing")

    cache = torch.randn(ROWS, 4)
    before = cache.clone()
    runner = cg.runner_class(make_model())(weights(), mode="full", static_inputs={"cache": cache})
    runner.capture(lazy=True)
    monkeypatch.setattr(cg._FullGraph, "capture", failing_capture)
    with pytest.raises(RuntimeError, match="capturing the CUDA graphs of size 2 failed: operation not permitted"):
        runner(*inputs(2, seed=4), cache)
    assert torch.equal(cache, before)
    assert 2 not in runner._graphs


@pytest.mark.parametrize("mode", ["piecewise", "full"])
@pytest.mark.parametrize("lazy", [False, True])
def test_the_allocator_cache_is_emptied_before_the_first_graph_only(fake_graphs, monkeypatch, mode, lazy):
    collected = []
    capture_graph = cg._capture_graph

    def recording(run, pool, collect_garbage):
        collected.append(collect_garbage)
        return capture_graph(run, pool, collect_garbage)

    monkeypatch.setattr(cg, "_capture_graph", recording)
    cache = torch.zeros(ROWS, 4)
    runner = cg.runner_class(make_model())(weights(), mode=mode, static_inputs={"cache": cache})
    runner.capture(lazy=lazy)
    for step, size in enumerate((1, 3, 8)):
        runner(*inputs(size, seed=step), cache)
    assert len(collected) == len(fake_graphs.graphs) >= 3
    assert collected == [True] + [False] * (len(collected) - 1)


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


# --- a flattened batch: per-sequence inputs padded with the tokens -------------------
#
# x, slots [T]; cache [blocks, 4] (static, any number of blocks); table [S, 2],
# lens [S], starts [S + 1] (a sequence's tokens are starts[s]:starts[s + 1]), as the
# paged serving example's metadata. The declared maximum of S is MAX_SEQS.

MAX_SEQS = 6


def paged_forward(weights, x, slots, cache, table, lens, starts, select=select):
    """Each token adds its row to the cache at its slot (slot -1: nothing), then reads its
    sequence's block table, length and a cache row through it. Every op keeps its shape
    (the fake graphs replay recorded ops)."""
    row = select(x.size(0))
    (h,) = row.piece_a([weights[0], x])
    written = (slots >= 0).unsqueeze(1).to(h.dtype)
    cache.index_add_(0, slots.clamp(min=0), h * written)  # the eager, state-writing op
    token = torch.arange(x.size(0))
    sequence = torch.searchsorted(starts[1:].contiguous(), token, right=True)
    real = (sequence < lens.size(0)).unsqueeze(1)
    sequence = sequence.clamp(max=lens.size(0) - 1)
    context = (lens[sequence] + 10 * table[sequence, 0]).unsqueeze(1).to(h.dtype)
    attended = torch.where(real, h + context + cache[table[sequence, 1]], 0.0)
    (out,) = row.piece_b([attended, weights[1]])
    return (out,)


def paged_model(**overrides):
    fields = {
        "inputs": (
            InputSpec("x", torch.float32, (None, 4), 0),
            InputSpec("slots", torch.int64, (None,), 0, False, -1),
            InputSpec("cache", torch.float32, (None, 4), None, True),
            InputSpec("table", torch.int64, (None, 2), 0, False, 0, 0, MAX_SEQS),
            InputSpec("lens", torch.int64, (None,), 0, False, 0, 0, MAX_SEQS),
            InputSpec("starts", torch.int64, (None,), 0, False, cg.LAST, 1, MAX_SEQS + 1),
        ),
        "output_dispatch_dims": (0,),
        "forward": paged_forward,
    }
    fields.update(overrides)
    return make_model(**fields)


def batch(token_counts, blocks, seed):
    """A flattened batch of sequences with these token counts, each over blocks of the cache."""
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(token_counts)
    x = torch.randn(tokens, 4, generator=generator)
    slots = torch.randperm(blocks, generator=generator)[:tokens]
    table = torch.randint(0, blocks, (len(token_counts), 2), generator=generator)
    lens = torch.tensor([count + 3 for count in token_counts])
    starts = torch.tensor([0, *torch.tensor(token_counts).cumsum(0).tolist()])
    return x, slots, table, lens, starts


def test_per_sequence_buffers_take_the_capture_size_plus_extra_rows_up_to_their_maximum():
    specs = paged_model().inputs
    shapes = [tuple(b.shape) for b in cg._allocate_input_buffers(specs, 4, "cpu", {2: torch.zeros(5, 4)})]
    assert shapes == [(4, 4), (4,), (5, 4), (4, 2), (4,), (5,)]
    shapes = [tuple(b.shape) for b in cg._allocate_input_buffers(specs, 8, "cpu", {2: torch.zeros(5, 4)})]
    assert shapes == [(8, 4), (8,), (5, 4), (6, 2), (6,), (7,)]  # S at most MAX_SEQS, S + 1 at most 7


def test_per_sequence_inputs_are_padded_by_their_own_size():
    specs = paged_model().inputs
    cache = torch.zeros(5, 4)
    buffers = cg._allocate_input_buffers(specs, 8, "cpu", {2: cache})
    for buffer in buffers[3:]:
        buffer.fill_(9)  # stale values of an earlier call
    x, slots, table, lens, starts = batch([3, 1, 1], blocks=5, seed=0)  # T = 5, S = 3
    cg._copy_into_buffers(specs, (x, slots, cache, table, lens, starts), buffers)
    assert buffers[1].tolist() == [*slots.tolist(), -1, -1, -1]
    assert buffers[3].tolist() == [*table.tolist(), [0, 0], [0, 0], [0, 0]]
    assert buffers[4].tolist() == [6, 4, 4, 0, 0, 0]  # padded sequences: length 0
    assert buffers[5].tolist() == [0, 3, 4, 5, 5, 5, 5]  # and no tokens: the last offset repeated
    assert buffers[2] is cache


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_flattened_batches_replay_like_the_plain_forward(fake_graphs, mode):
    w = weights()
    blocks = 11  # any number of blocks: the static cache's first dim is free
    cache = torch.randn(blocks, 4)
    before = cache.clone()
    runner = cg.runner_class(paged_model())(w, mode=mode, static_inputs={"cache": cache})
    runner.capture()
    assert torch.equal(cache, before)  # capture wrote nothing (padding only), and restored anyway
    buffers = runner._graphs[8].input_buffers
    assert [tuple(b.shape) for b in buffers[3:]] == [(6, 2), (6,), (7,)]
    expected_cache = before.clone()
    # Decode-only, prefill-only and mixed batches, at capture sizes and between them.
    for step, counts in enumerate(([1], [3], [1, 1, 1], [2, 1, 1, 1, 1], [4, 1, 2], [1] * 6, [5, 2, 1])):
        x, slots, table, lens, starts = batch(counts, blocks, seed=step)
        (expected,) = paged_forward(w, x, slots, expected_cache, table, lens, starts)
        CALLS.clear()
        replays = fake_graphs.replays
        (out,) = runner(x, slots, cache, table, lens, starts)
        assert fake_graphs.replays > replays and CALLS == []  # graphs replayed, no piece ran
        assert out.shape == (sum(counts), 4)  # sliced back to T
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(cache, expected_cache, rtol=0, atol=1e-5)  # written in place


def test_more_sequences_than_the_buffers_hold_run_the_plain_forward(fake_graphs):
    """S <= T holds when every sequence has a token; a call that breaks it (sequences of no
    new token) does not fit the buffers of T's capture size: the plain forward runs it."""
    w = weights()
    cache = torch.randn(7, 4)
    runner = cg.runner_class(paged_model())(w, static_inputs={"cache": cache})
    runner.capture()
    x, slots, table, lens, starts = batch([2, 0, 0], blocks=7, seed=3)  # T = 2, S = 3
    expected_cache = cache.clone()
    (expected,) = paged_forward(w, x, slots, expected_cache, table, lens, starts)
    CALLS.clear()
    (out,) = runner(x, slots, cache, table, lens, starts)
    assert CALLS == [("piece_a", 2), ("piece_b", 2)]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(cache, expected_cache, rtol=0, atol=0)


def test_a_static_input_keeps_a_free_dim_but_its_other_dims_are_checked(fake_graphs):
    runner_class = cg.runner_class(paged_model())
    with pytest.raises(
        ValueError, match=r"static input cache must be torch.float32 \(N, 4\), got torch.float32 \(7, 3\)"
    ):
        runner_class(weights(), static_inputs={"cache": torch.zeros(7, 3)})
    for blocks in (1, 30):
        runner_class(weights(), static_inputs={"cache": torch.zeros(blocks, 4)})
