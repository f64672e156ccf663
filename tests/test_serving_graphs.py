"""CUDA graphs for the paged serving example (issue 16), as far as the CPU allows.

The CUDA target computes the serving example's graph tables from the real exported graph
(per-sequence metadata padded with the tokens, the cache's block count free); the rendered
cudagraphs.py and the runtime are dropped into the CPU package of the same model, whose
graph machinery is faked: a "capture" runs the function once and a replay runs it again,
writing into the outputs of the capture, as a CUDA graph re-launches its kernels on fixed
addresses. So a replay sees a call's data only through the runner's buffers, and the
reference op checks the padded metadata at every call. An engine loop of mixed batches
(prefill chunks beside decodes) through the runner, piecewise and full, must give the eager
model's logits and cache at every step.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys

import pytest
import torch
from conftest import EXAMPLE_PATHS, EXAMPLES, ROOT, imported_package, load_model_module
from torch.utils._pytree import tree_flatten

from transpiler import pipeline
from transpiler.cudagraphs import PaddedDim, cudagraphs_context, render_source
from transpiler.errors import TranspileError
from transpiler.ir import State
from transpiler.options import Options, parse_capture_sizes, parse_ranges, parse_sizes
from transpiler.prepare import prepare
from transpiler.runtime import runtime_files
from transpiler.targets import get_target
from transpiler.targets.cuda import CudaTarget
from transpiler.templating import format_python

SERVING = ROOT / "examples" / "serving_llama"
CAPTURE_SIZES = "1,2,4,8,16,24"
# (prompt length, step it arrives at)
ARRIVALS = [(3, 0), (16, 0), (17, 1), (1, 2), (30, 3), (9, 5)]


@pytest.fixture(scope="module")
def serving_graphs():
    """The CUDA target's graph context of the serving example, from its exported graph."""
    args = EXAMPLES["serving_llama"]
    options = Options(
        model_path=ROOT / args[0],
        name="serving_llama",
        imports=("serving_ops",),
        ranges=parse_ranges("1-16,17-128"),
        sizes=parse_sizes("1"),
    )
    # Captured as the CPU target does (no GPU here); the CUDA target computes its tables from it.
    split = prepare(options, get_target("cpu"))
    return CudaTarget().graphs_context(split, parse_capture_sizes(CAPTURE_SIZES))


def test_the_serving_example_gets_graph_tables(serving_graphs):
    rows = {row.name: row for row in serving_graphs.inputs}
    printed = {
        name: (row.shape_literal, row.padded_dim_literal, row.static, row.pad_literal, row.rows_literal)
        for name, row in rows.items()
    }
    head_dim = 16
    assert printed == {
        "input_ids": ("(None,)", "0", False, "None", ""),
        "positions": ("(None,)", "0", False, "None", ""),
        "kv_cache": (f"(2, 2, None, 16, 2, {head_dim})", "None", True, "None", ""),  # blocks: any
        "slot_mapping": ("(None,)", "0", False, "-1", ""),
        "block_table": ("(None, 8)", "0", False, "0", ", 0, 128"),  # S rows, at most 128
        "seq_lens": ("(None,)", "0", False, "0", ", 0, 128"),
        "query_start_loc": ("(None,)", "0", False, "'last'", ", 1, 129"),  # S + 1
    }
    source = format_python(render_source(serving_graphs), "cudagraphs.py")
    assert 'InputSpec("query_start_loc", torch.int64, (None,), 0, False, "last", 1, 129)' in source


def test_a_per_sequence_input_without_a_pad_value_is_refused():
    inputs = [("ids", "torch.int64", (None,)), ("lens", "torch.int64", (None,))]
    padded = (PaddedDim(0), PaddedDim(0, dispatch=False, max_rows=8, symbol="s1"))
    with pytest.raises(
        TranspileError,
        match=r"input lens dim 0 has a size of its own \(s1\), not the dispatch size; "
        r"declare its pad value in pad_values",
    ) as error:
        cudagraphs_context("p", (1, 2), inputs, 0, 0, (0,), padded, state=State())
    assert "\n" not in str(error.value)
    context = cudagraphs_context("p", (1, 2), inputs, 0, 0, (0,), padded, state=State(pad_values=(("lens", 0),)))
    assert context.inputs[1].rows_literal == ", 0, 8"


def test_an_output_sized_by_sequences_is_refused():
    import sympy
    from torch.export import Dim

    class PerSequence(torch.nn.Module):
        def forward(self, ids, lens):
            return ids * 2, lens + 1  # lens: [S], would come back padded

    tokens, seqs = Dim("tokens", min=1, max=64), Dim("seqs", min=1, max=64)
    program = torch.export.export(
        PerSequence(), (torch.zeros(5), torch.zeros(3)), dynamic_shapes=({0: tokens}, {0: seqs}), strict=False
    )
    from transpiler.cudagraphs import output_dispatch_dims

    placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
    symbol = sympy.sympify(placeholders["ids"].meta["val"].shape[0].node.expr)
    count = sympy.sympify(placeholders["lens"].meta["val"].shape[0].node.expr)
    assert output_dispatch_dims(program.graph_module, symbol) == (0, None)
    with pytest.raises(TranspileError, match="output 1 dim 0 has size .*, a per-call count that CUDA graphs pad"):
        output_dispatch_dims(program.graph_module, symbol, {count})


# --- the runner on the CPU package ---------------------------------------------------


class RerunGraph:
    """A replay re-runs the captured function and writes its results into the outputs of
    the capture (a piece's function is re-runnable: the runner passes it a fresh list)."""

    replays = 0

    def __init__(self, run, outputs):
        self.run, self.outputs = run, outputs

    def replay(self):
        RerunGraph.replays += 1
        for old, new in zip(tree_flatten(self.outputs)[0], tree_flatten(self.run())[0]):
            if isinstance(old, torch.Tensor):
                old.copy_(new)


def _engine():
    spec = importlib.util.spec_from_file_location("serving_graphs_engine", SERVING / "engine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graphed_package(example_out, serving_graphs, tmp_path_factory):
    """The CPU package of the serving example with the CUDA target's cudagraphs.py beside it."""
    root = tmp_path_factory.mktemp("serving_graphs")
    shutil.copytree(example_out("serving_llama") / "serving_llama", root / "serving_llama")
    files = {
        "cudagraphs.py": format_python(render_source(serving_graphs), "cudagraphs.py"),
        **runtime_files("cudagraphs_runtime.py"),
    }
    for name, source in files.items():
        (root / "serving_llama" / name).write_text(source)
    return root


@pytest.mark.parametrize("mode", ["piecewise", "full"])
def test_mixed_batches_replay_like_eager(graphed_package, monkeypatch, mode):
    engine = _engine()
    eager = load_model_module(ROOT / EXAMPLES["serving_llama"][0]).model
    config = eager.config
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, config.vocab, (length,), generator=generator).tolist() for length, _ in ARRIVALS]
    with imported_package(graphed_package, "serving_llama", EXAMPLE_PATHS) as package:
        graphs = importlib.import_module("serving_llama.cudagraphs")
        runtime = importlib.import_module("serving_llama.cudagraphs_runtime")
        monkeypatch.setattr(runtime, "_capture_graph", _fake_capture)
        monkeypatch.setattr(runtime, "graph_pool_handle", lambda: None)
        monkeypatch.setattr(runtime, "synchronize", lambda: None)
        model = package.load()
        cache = package.new_kv_cache(40)
        cache.normal_()  # stale values in free blocks must not leak into any sequence
        eager_cache = cache.clone()
        runner = graphs.CudaGraphRunner(model.weights, mode=mode, static_inputs={"kv_cache": cache})
        runner.capture()
        assert torch.equal(cache, eager_cache)  # capturing left the cache as it was
        sizes = []

        def both(input_ids, positions, kv_cache, *metadata):
            replays = RerunGraph.replays
            out = runner(input_ids, positions, kv_cache, *metadata)
            assert RerunGraph.replays > replays, f"{len(input_ids)} tokens: no graph replayed"
            with torch.no_grad():
                want = eager(input_ids, positions, eager_cache, *metadata)
            assert out.shape == want.shape  # sliced back to T
            torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
            sizes.append((len(input_ids), len(metadata[2])))
            return out.clone()

        loop = engine.Engine(both, cache, package.BLOCK_SIZE, config.max_blocks_per_seq, max_tokens=24, chunk=8)
        pending = sorted(((step, i) for i, (_, step) in enumerate(ARRIVALS)), reverse=True)
        while pending or loop.has_work():
            while pending and pending[-1][0] <= loop.steps:
                _, i = pending.pop()
                loop.add(engine.Request(f"seq{i}", prompts[i], 6))
            loop.step()
        torch.testing.assert_close(cache, eager_cache, rtol=0, atol=1e-4)  # written in place, as eager
        captured = {1, 2, 4, 8, 16, 24}
        assert any(tokens not in captured for tokens, _ in sizes), sizes  # padded tokens
        assert any(1 < seqs < tokens for tokens, seqs in sizes), sizes  # mixed: a chunk beside decodes
        assert any(tokens == seqs > 1 for tokens, seqs in sizes), sizes  # decode-only batches


def _fake_capture(run, pool, collect_garbage):
    outputs = run()
    return RerunGraph(run, outputs), outputs


def test_the_cuda_package_of_the_serving_example_renders(serving_graphs, monkeypatch):
    """The serving example's package as the CUDA target renders it (kernels stand in for
    cubins, as tests/test_targets.py does): __init__.py binds the cache by reference and
    takes a cache of any block count; cudagraphs.py holds the per-sequence rows."""
    import copy

    import test_targets

    from transpiler.emit import render

    # as_cuda's graph context would be the mlp's; this package takes the serving one.
    monkeypatch.setattr(test_targets, "cudagraphs_context", lambda *args, **kwargs: serving_graphs)

    kept = {}
    real_render = pipeline.render

    def keep(package, target=None):
        kept["package"] = copy.deepcopy(package)
        return real_render(package, target)

    pipeline.render = keep
    try:
        args = EXAMPLES["serving_llama"]
        pipeline.transpile(
            Options(
                model_path=ROOT / args[0],
                name="serving_llama",
                imports=("serving_ops",),
                ranges=parse_ranges("1-16,17-128"),
                sizes=parse_sizes("1"),
            )
        )
    finally:
        pipeline.render = real_render
    package = test_targets.as_cuda(kept["package"])
    rendered = render(package)
    init = rendered.files["__init__.py"].decode()
    compile(init, "__init__.py", "exec")
    assert "STATIC_INPUTS = ('kv_cache',)" in init or 'STATIC_INPUTS = ("kv_cache",)' in init
    assert "(2, 2, None, 16, 2, 16)" in init  # the cache's block count: any
    graphs = rendered.files["cudagraphs.py"].decode()
    compile(graphs, "cudagraphs.py", "exec")
    assert 'InputSpec("block_table", torch.int64, (None, 8), 0, False, 0, 0, 128)' in graphs
    assert 'InputSpec("kv_cache", torch.float32, (2, 2, None, 16, 2, 16), None, True, None)' in graphs
    assert rendered.manifest["state"]["pad_values"] == {
        "block_table": 0,
        "query_start_loc": "last",
        "seq_lens": 0,
        "slot_mapping": -1,
    }
