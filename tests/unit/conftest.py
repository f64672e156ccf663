"""The unit tier: direct tests of the tool's modules, no transpile (each file runs in seconds)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
    from transpiler.runtime import cudagraphs_runtime

    fakes = FakeGraphs()
    monkeypatch.setattr(cudagraphs_runtime, "CUDAGraph", fakes.CUDAGraph)
    monkeypatch.setattr(cudagraphs_runtime, "graph", fakes.graph)
    monkeypatch.setattr(cudagraphs_runtime, "graph_pool_handle", fakes.graph_pool_handle)
    monkeypatch.setattr(cudagraphs_runtime, "synchronize", lambda: None)
    return fakes
