"""Build the stitching function: the split graph as straight-line Python.

Compiled pieces are called through the variant picked once per forward; splitting
ops are called directly as torch ops. Each value is deleted after its last use
(torch.fx's codegen does the same), and each call says which source lines it runs.
"""

from __future__ import annotations

import math
import operator
import re
import sys
from pathlib import Path

import torch
import torch.fx
from torch.utils import _pytree as pytree

from .errors import TranspileError
from .ir import SourceLines, Stitch, StitchLine
from .split import Piece

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
_TORCH_DIR = str(Path(torch.__file__).parent)


def _innermost_user_frame(node: torch.fx.Node) -> tuple[str, int] | None:
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    for file, line in reversed(frames):
        # Frames inside torch itself (some passes record them relative) say nothing of the model.
        if not file.startswith((_TORCH_DIR, "torch/", "<")):
            return file, int(line)
    return None


def _relative(file: str, model_dir: Path) -> str:
    path = Path(file)
    try:
        return path.resolve().relative_to(model_dir).as_posix()
    except ValueError:
        pass
    # A library file: relative to the sys.path entry that holds it.
    for entry in sorted((p for p in sys.path if p), key=len, reverse=True):
        try:
            return path.resolve().relative_to(Path(entry).resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def source_lines(nodes: list[torch.fx.Node], model_dir: Path) -> list[SourceLines]:
    by_file: dict[str, set[int]] = {}
    for node in nodes:
        frame = _innermost_user_frame(node)
        if frame is not None:
            by_file.setdefault(_relative(frame[0], model_dir), set()).add(frame[1])
    return [SourceLines(path, tuple(sorted(lines))) for path, lines in by_file.items()]


def _op_path(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target._schema.name.split("::")
        return f"torch.ops.{namespace}.{name}.{target._overloadname}"
    raise TranspileError(f"splitting piece calls {target!r}, which is not a torch op; split only at torch ops")


def format_arg(arg) -> str:
    if isinstance(arg, torch.fx.Node):
        return arg.name
    if isinstance(arg, tuple):
        return "(" + "".join(f"{format_arg(a)}, " for a in arg) + ")"
    if isinstance(arg, list):
        return "[" + ", ".join(format_arg(a) for a in arg) + "]"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k!r}: {format_arg(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, float) and not math.isfinite(arg):
        return f'float("{arg}")'
    if isinstance(arg, (torch.dtype, torch.layout, torch.memory_format)):
        return str(arg)
    if isinstance(arg, torch.device):
        return f"torch.device({str(arg)!r})"
    if arg is None or isinstance(arg, (bool, int, float, str)):
        return repr(arg)
    raise TranspileError(f"cannot emit argument {arg!r} of type {type(arg).__name__} in the stitching function")


def _split_piece_statements(piece: Piece, where: str | None) -> list[tuple]:
    """(comment, code, defined names, read names) for each op of a splitting piece."""
    statements = []
    for number, node in enumerate(piece.nodes):
        if node.target is operator.getitem:
            code = f"{node.name} = {node.args[0].name}[{node.args[1]!r}]"
        else:
            arguments = [format_arg(a) for a in node.args]
            arguments += [f"{k}={format_arg(v)}" for k, v in node.kwargs.items()]
            call = f"{_op_path(node.target)}({', '.join(arguments)})"
            # An op called for what it writes in place (its result unused) gets no name.
            code = f"{node.name} = {call}" if node.users else call
        reads = [arg.name for arg in node.all_input_nodes]
        defined = [node.name] if node.users else []
        statements.append((where if number == 0 else None, code, defined, reads))
    return statements


def _return_expression(outputs, spec: pytree.TreeSpec) -> str:
    leaves = iter(outputs)

    def render(node_spec: pytree.TreeSpec) -> str:
        if node_spec.is_leaf():
            return format_arg(next(leaves))
        children = [render(child) for child in node_spec.children_specs]
        if node_spec.type is tuple:
            return "(" + "".join(f"{c}, " for c in children) + ")"
        if node_spec.type is list:
            return "[" + ", ".join(children) + "]"
        if node_spec.type is dict:
            return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(node_spec.context, children)) + "}"
        raise TranspileError(
            f"forward returns a {node_spec.type.__name__}; return a tensor, or a tuple, list or dict of tensors"
        )

    return render(spec)


def build_stitch(
    graph_module: torch.fx.GraphModule,
    pieces: list[Piece],
    piece_modules: dict[int, str],
    user_inputs: list[str],
    weight_names: list[str],
    dispatch_expr: str,
    out_spec: pytree.TreeSpec,
    model_dir: Path,
) -> Stitch:
    statements = []  # (comment, code, defined names, read names)
    for piece in pieces:
        where = ", ".join(s.render() for s in source_lines(piece.nodes, model_dir)) or None
        if piece.is_split:
            statements.extend(_split_piece_statements(piece, where))
            continue
        targets = "".join(f"{node.name}, " for node in piece.outputs)
        reads = [node.name for node in piece.inputs]
        call = f"variant.{piece_modules[piece.index]}([{', '.join(reads)}])"
        # A piece that only writes state in place returns nothing.
        code = f"({targets}) = {call}" if targets else call
        statements.append((where, code, [node.name for node in piece.outputs], reads))

    outputs = list(graph_module.graph.output_node().args[0])
    returned = {a.name for a in outputs if isinstance(a, torch.fx.Node)}
    # Liveness: a value computed here dies after the last statement that reads it.
    # Inputs and weights belong to the caller and the model, so they are never deleted.
    computed = {name for _, _, defined, _ in statements for name in defined}
    last_use = {}
    for number, (_, _, _, reads) in enumerate(statements):
        for name in reads:
            last_use[name] = number
    deletes: list[list[str]] = [[] for _ in statements]
    for name, number in last_use.items():
        if name in computed and name not in returned:
            deletes[number].append(name)
    lines = [
        StitchLine(comment=comment, code=code, deletes=sorted(deletes[number], key=_natural))
        for number, (comment, code, _, _) in enumerate(statements)
    ]
    return Stitch(
        params=user_inputs,
        weight_names=weight_names,
        dispatch_expr=dispatch_expr,
        lines=lines,
        return_expr=_return_expression(outputs, out_spec),
    )


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.findall(r"\d+|\D+", name)]
