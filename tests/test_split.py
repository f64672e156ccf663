"""The split pass on small graphs: vLLM's split_graph semantics."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

from transpiler.dedupe import group_pieces, shared_names
from transpiler.errors import TranspileError
from transpiler.split import DEFAULT_SPLIT_OPS, check_split_ops, split_graph


def _lifted_graph(module, inputs, dynamic_shapes=None):
    program = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)
    return torch.fx.GraphModule(program.graph_module, program.graph)


class TwoAttentions(torch.nn.Module):
    def forward(self, x):
        q, k, v = x.unbind(0)  # a multi-output op whose getitems are used across the cut
        a = F.scaled_dot_product_attention(q, k, v)
        b = F.scaled_dot_product_attention(a, k, v)  # consecutive: one splitting piece
        return (b * 2).sum(-1), x.shape[2] * b.mean()


def test_pieces_alternate_and_keep_order():
    graph = _lifted_graph(TwoAttentions(), (torch.randn(3, 2, 8, 4),), ({2: Dim("seq", min=2, max=64)},))
    pieces = split_graph(graph, list(DEFAULT_SPLIT_OPS))
    assert [p.is_split for p in pieces] == [False, True, False]
    assert [
        len([n for n in p.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default]) for p in pieces
    ] == [0, 2, 0]
    order = {node: i for i, node in enumerate(graph.graph.nodes)}
    flat = [order[n] for p in pieces for n in p.nodes]
    assert flat == sorted(flat), "nodes must keep their original order"


def test_getitem_stays_with_its_producer():
    graph = _lifted_graph(TwoAttentions(), (torch.randn(3, 2, 8, 4),), ({2: Dim("seq", min=2, max=64)},))
    pieces = split_graph(graph, list(DEFAULT_SPLIT_OPS))
    piece_of = {node: p.index for p in pieces for node in p.nodes}
    getitems = [n for n in graph.graph.nodes if n.target is operator.getitem]
    assert getitems
    for node in getitems:
        assert piece_of[node] == piece_of[node.args[0]]


def test_sizes_crossing_a_cut_become_int_inputs():
    graph = _lifted_graph(TwoAttentions(), (torch.randn(3, 2, 8, 4),), ({2: Dim("seq", min=2, max=64)},))
    pieces = split_graph(graph, list(DEFAULT_SPLIT_OPS))
    last = pieces[-1]
    size_inputs = [
        p for p in last.graph_module.graph.find_nodes(op="placeholder") if isinstance(p.meta["val"], torch.SymInt)
    ]
    assert [p.target for p in size_inputs] == [n.name for n in last.inputs if n.target == torch.ops.aten.sym_size.int]
    assert size_inputs, "the sequence length computed before the cut must reach the last piece as an int"
    # Every value a piece reads from outside is one of its inputs.
    for piece in pieces:
        members = set(piece.nodes)
        for node in piece.nodes:
            for arg in node.all_input_nodes:
                assert arg in members or arg in piece.inputs


def test_identical_layers_share_one_key():
    class Layers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            for layer in self.layers:
                x = layer(x).relu()
                x = F.scaled_dot_product_attention(x, x, x)
            return x

    graph = _lifted_graph(Layers(), (torch.randn(1, 2, 6, 8),), ({2: Dim("seq", min=2, max=32)},))
    pieces = split_graph(graph, list(DEFAULT_SPLIT_OPS))
    groups = group_pieces(pieces)
    sizes = sorted(len(g) for g in groups.values())
    # Each layer's linear+relu is one piece; names differ, structure does not.
    assert sizes == [4], sizes


def test_shared_names_replace_differing_numbers():
    assert shared_names([["p_layers_0_w", "x"], ["p_layers_1_w", "x"]]) == ["p_layers_N_w", "x"]
    assert shared_names([["add_3", "w"], ["mul_7", "w"]]) == ["arg0", "w"]
    # Both would become a_N: the clash falls back to positional names.
    assert shared_names([["a_1", "a_2"], ["a_2", "a_1"]]) == ["arg0", "arg1"]


def test_unknown_split_op_is_refused():
    with pytest.raises(TranspileError, match="unknown split op 'aten::no_such_op'"):
        check_split_ops(["aten::no_such_op"])
    with pytest.raises(TranspileError, match="namespace::name"):
        check_split_ops(["scaled_dot_product_attention"])
    check_split_ops(["aten::scaled_dot_product_attention", "aten::scaled_dot_product_attention.default"])


def test_transformer_layers_dedupe_to_one_piece_whatever_their_inputs_position():
    """The first middle piece reads the embedding (defined before the rotary tables), the
    others read a residual (defined after them): input order must not split the group."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("tiny_llama_model", ROOT / "examples/tiny_llama/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build(4)
    tokens = Dim("tokens", min=1, max=64)
    graph = _lifted_graph(model, module.example_inputs, ({1: tokens}, {1: tokens}))
    pieces = split_graph(graph, list(DEFAULT_SPLIT_OPS))
    sizes = [len(group) for group in group_pieces(pieces).values()]
    assert sizes == [1, 3, 1], sizes
