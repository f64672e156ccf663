"""State the forward writes in place: which inputs and buffers, by which op, and how.

torch.export (non-strict, training IR) keeps in-place ops as they are: `index_copy_`
on a cache input, `add_` on a buffer, a custom op whose schema writes an argument
(`Tensor(a!)`). The emitted package runs them on the caller's tensors and the model's
buffers, so they are updated in place exactly as eager updates them:

- in a compiled piece, Inductor keeps the write (it copies into the input at the end);
- a splitting op is called by the stitching function on the tensor itself.

Two passes over the exported graph, each with one job:

- `redirect_inplace_results`: an in-place op returns its argument; uses of that result
  read the argument itself, so no piece returns an alias of an input (which the
  emitted code could not reproduce) and a returned cache is the caller's tensor.
- `find_mutations`: which graph inputs are written, by which op; refuses, with one
  line naming the input and the op, the writes the package cannot keep.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx

from .errors import TranspileError


@dataclass(frozen=True)
class Mutation:
    """A graph input written in place."""

    name: str  # the placeholder name
    ops: tuple[str, ...]  # the ops that write it, as namespace::name, in graph order
    by_splitting_op: bool  # written (also) by a splitting op, called from the stitching function


def _written_arguments(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The node arguments that the op's schema marks as written (`Tensor(a!)`)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return []
    written = []
    schema = node.target._schema
    for position, argument in enumerate(schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        if argument.kwarg_only or position >= len(node.args):
            value = node.kwargs.get(argument.name)
        else:
            value = node.args[position]
        values = value if isinstance(value, (list, tuple)) else [value]
        written.extend(v for v in values if isinstance(v, torch.fx.Node))
    return written


def _op_name(node: torch.fx.Node) -> str:
    return node.target._schema.name


def redirect_inplace_results(graph_module: torch.fx.GraphModule) -> int:
    """Make uses of an in-place op's result (`y = x.add_(1)`: y is x) use the argument.

    Returns how many nodes were redirected.
    """
    redirected = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        returns = node.target._schema.returns
        if len(returns) != 1 or returns[0].alias_info is None or not returns[0].alias_info.is_write:
            continue
        written = _written_arguments(node)
        # The return aliases the argument with the same alias set (`Tensor(a!) self -> Tensor(a!)`).
        alias_set = returns[0].alias_info.before_set
        for position, argument in enumerate(node.target._schema.arguments):
            if argument.alias_info is not None and argument.alias_info.before_set == alias_set:
                target = node.args[position] if position < len(node.args) else node.kwargs.get(argument.name)
                break
        else:
            target = written[0] if len(written) == 1 else None
        if isinstance(target, torch.fx.Node) and node.users:
            node.replace_all_uses_with(target)
            redirected += 1
    if redirected:
        graph_module.recompile()
    return redirected


def _root_input(node: torch.fx.Node) -> torch.fx.Node | None:
    """The placeholder a node is a view of (through view ops), or None."""
    seen = 0
    while node.op != "placeholder" and seen < 64:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            return None
        if not node.target.is_view or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return None
        node = node.args[0]
        seen += 1
    return node if node.op == "placeholder" else None


def find_mutations(
    graph_module: torch.fx.GraphModule,
    split_ops: frozenset[str],
    is_splitting_node,
) -> list[Mutation]:
    """The graph inputs written in place, in placeholder order.

    Refuses (TranspileError, one line) a splitting op that writes to anything but a
    graph input itself: a view computed inside the model would have to leave a compiled
    piece as an alias of the input, which the emitted code cannot reproduce.
    """
    writes: dict[str, list[str]] = {}
    by_split: set[str] = set()
    for node in graph_module.graph.nodes:
        splitting = is_splitting_node(node, split_ops)
        for argument in _written_arguments(node):
            root = _root_input(argument)
            if splitting and argument.op != "placeholder":
                where = f"a view of input `{root.name}`" if root is not None else f"`{argument.name}`"
                raise TranspileError(
                    f"splitting op {_op_name(node)} writes in place to {where}, computed inside the model; "
                    "pass the input tensor itself to the op (index it inside the op), or do not split at it"
                )
            if root is None:
                continue  # a temporary of the forward: nobody outside sees it
            ops = writes.setdefault(root.name, [])
            if _op_name(node) not in ops:
                ops.append(_op_name(node))
            if splitting:
                by_split.add(root.name)
    order = [node.name for node in graph_module.graph.find_nodes(op="placeholder")]
    return [
        Mutation(name=name, ops=tuple(writes[name]), by_splitting_op=name in by_split)
        for name in order
        if name in writes
    ]


def check_outputs_not_views(graph_module: torch.fx.GraphModule) -> None:
    """An output that is a view of an input (`return cache[0]`) would come out of a compiled
    piece as an alias, which the emitted code cannot reproduce: refuse it by name."""
    output = graph_module.graph.output_node()
    for leaf in torch.utils._pytree.tree_leaves(output.args[0]):
        if not isinstance(leaf, torch.fx.Node) or leaf.op == "placeholder":
            continue
        root = _root_input(leaf)
        if root is not None and leaf.target is not operator.getitem:
            raise TranspileError(
                f"the forward returns `{leaf.name}`, a view of input `{root.name}`; return the input itself "
                "or a copy (.clone()) of the view"
            )


def state_of(
    mutations: list[Mutation],
    user_inputs: list[str],
    weight_keys: dict[str, str],
    declared_static: list[str] | None,
    pad_values: dict | None,
    where: str,
):
    """The package's State: mutated inputs and buffers, static inputs, padding values.

    weight_keys: placeholder name -> state-dict key. `where` names the source of the
    declarations in messages ("model.py" or "--static-inputs").
    """
    from .ir import State

    for name in declared_static or ():
        if name not in user_inputs:
            raise TranspileError(
                f"{where}: static input {name!r} is not an input of forward; inputs are {', '.join(user_inputs)}"
            )
    for name in pad_values or {}:
        if name not in user_inputs:
            raise TranspileError(
                f"{where}: pad value for {name!r}, which is not an input of forward; inputs are {', '.join(user_inputs)}"
            )
    mutated_inputs = tuple(m.name for m in mutations if m.name in user_inputs)
    mutated_weights = tuple(weight_keys[m.name] for m in mutations if m.name in weight_keys)
    writers = tuple((m.name if m.name in user_inputs else weight_keys[m.name], m.ops) for m in mutations)
    static = [name for name in user_inputs if name in mutated_inputs or name in (declared_static or ())]
    return State(
        mutated_inputs=mutated_inputs,
        mutated_weights=mutated_weights,
        writers=writers,
        static_inputs=tuple(static),
        pad_values=tuple(sorted((pad_values or {}).items())),
    )
