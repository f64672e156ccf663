"""Split the captured graph at splitting ops into pieces (vLLM's `split_graph` semantics).

- a `getitem` stays in the piece of the node it indexes;
- consecutive splitting ops share one splitting piece;
- nodes keep their original order;
- values that cross a cut, sizes (SymInts) included, become explicit piece inputs and outputs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx

from .errors import TranspileError

DEFAULT_SPLIT_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_flash_attention_forward",
    "aten::_efficient_attention_forward",
)


@dataclass
class Piece:
    index: int
    is_split: bool
    nodes: list[torch.fx.Node] = field(default_factory=list)
    inputs: list[torch.fx.Node] = field(default_factory=list)  # defined outside, in graph order
    outputs: list[torch.fx.Node] = field(default_factory=list)  # used outside, in graph order
    graph_module: torch.fx.GraphModule | None = None  # compiled pieces only


def check_split_ops(names: list[str]) -> None:
    """Every name must be a registered op: a typo would silently split nothing."""
    for name in names:
        namespace, sep, rest = name.partition("::")
        op_name, _, overload = rest.partition(".")
        try:
            if not sep or not op_name:
                raise AttributeError
            packet = getattr(getattr(torch.ops, namespace), op_name)
            if overload:
                getattr(packet, overload)
        except (AttributeError, RuntimeError):
            raise TranspileError(
                f"unknown split op {name!r}: no such op is registered; write it as namespace::name "
                "(for example aten::scaled_dot_product_attention) and --import the module that defines a custom op"
            ) from None


def is_splitting_node(node: torch.fx.Node, split_ops: frozenset[str]) -> bool:
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    schema_name = node.target._schema.name
    return schema_name in split_ops or f"{schema_name}.{node.target._overloadname}" in split_ops


def split_graph(graph_module: torch.fx.GraphModule, split_ops: list[str]) -> list[Piece]:
    ops = frozenset(split_ops)
    piece_of: dict[torch.fx.Node, int] = {}
    current, last_was_split = -1, None
    for node in graph_module.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.target is operator.getitem and node.args[0].op != "placeholder":
            piece_of[node] = piece_of[node.args[0]]
            continue
        splitting = is_splitting_node(node, ops)
        if splitting != last_was_split:  # a change of kind starts a new piece
            current += 1
            last_was_split = splitting
        piece_of[node] = current

    pieces: dict[int, Piece] = {}
    for node, index in piece_of.items():
        piece = pieces.setdefault(index, Piece(index=index, is_split=is_splitting_node(node, ops)))
        piece.nodes.append(node)

    for piece in pieces.values():
        members = set(piece.nodes)
        # Inputs in order of first use inside the piece, so that repeated layers, whose
        # inputs come from different places in the graph, still line up for dedupe.
        first_use: dict[torch.fx.Node, None] = {}
        for node in piece.nodes:
            for arg in node.all_input_nodes:
                if arg not in members:
                    first_use.setdefault(arg, None)
        piece.inputs = list(first_use)
        piece.outputs = [node for node in piece.nodes if any(user not in members for user in node.users)]
        if not piece.is_split:
            piece.graph_module = _piece_graph_module(piece)
    ordered = [pieces[i] for i in sorted(pieces)]
    for new_index, piece in enumerate(ordered):
        piece.index = new_index
    return ordered


def _piece_graph_module(piece: Piece) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in piece.inputs:
        placeholder = graph.placeholder(node.name)
        placeholder.meta = dict(node.meta)
        env[node] = placeholder
    for node in piece.nodes:
        env[node] = graph.node_copy(node, env.__getitem__)
    # A piece may return nothing: all it does is write state in place (a buffer update).
    graph.output(tuple(env[node] for node in piece.outputs))
    return torch.fx.GraphModule(torch.nn.Module(), graph)
