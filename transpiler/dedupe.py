"""Group pieces that are structurally identical, so each is compiled and emitted once.

The N layers of a transformer split into N pieces that differ only in their input
names; they get one key, one emitted module, and N calls from the stitching function.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch
import torch.fx

from .split import Piece


def _value_signature(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"T({value.dtype},{tuple(str(d) for d in value.shape)},{tuple(str(s) for s in value.stride())},{value.device.type})"
    if isinstance(value, (torch.SymInt, int)):
        return f"I({value})"
    return type(value).__name__


def structural_key(graph_module: torch.fx.GraphModule) -> str:
    """A hash of the graph with names replaced by positions."""
    index: dict[torch.fx.Node, int] = {}

    def encode(arg) -> str:
        if isinstance(arg, torch.fx.Node):
            return f"%{index[arg]}"
        if isinstance(arg, (list, tuple)):
            return "[" + ",".join(encode(a) for a in arg) + "]"
        if isinstance(arg, dict):
            return "{" + ",".join(f"{k}:{encode(v)}" for k, v in sorted(arg.items())) + "}"
        return repr(arg)

    lines = []
    for node in graph_module.graph.nodes:
        index[node] = len(index)
        signature = _value_signature(node.meta.get("val"))
        lines.append(
            f"{node.op}|{node.target if node.op != 'placeholder' else ''}|{encode(node.args)}|{encode(node.kwargs)}|{signature}"
        )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def shared_names(instances: Sequence[Sequence[str]]) -> list[str]:
    """Input names for a module shared by several call sites.

    Names equal at every site are kept; names that differ only in numbers have the
    differing numbers replaced by N (`p_layers_0_q_weight`, `p_layers_1_q_weight`
    -> `p_layers_N_q_weight`); anything else, or a clash, falls back to `argI`.
    """
    names = []
    for position, candidates in enumerate(zip(*instances)):
        tokens = [re.findall(r"\d+|\D+", name) for name in candidates]
        first = tokens[0]
        if all(len(t) == len(first) for t in tokens) and all(
            all(a == b or (a.isdigit() and b.isdigit()) for a, b in zip(t, first)) for t in tokens
        ):
            merged = "".join(part if all(t[i] == part for t in tokens) else "N" for i, part in enumerate(first))
        else:
            merged = f"arg{position}"
        names.append(merged)
    if len(set(names)) != len(names):
        names = [f"arg{i}" for i in range(len(names))]
    return names


def group_pieces(pieces: list[Piece]) -> dict[str, list[Piece]]:
    """Compiled pieces by structural key, in order of first appearance."""
    groups: dict[str, list[Piece]] = {}
    for piece in pieces:
        if not piece.is_split:
            groups.setdefault(structural_key(piece.graph_module), []).append(piece)
    return groups
