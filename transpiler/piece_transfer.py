"""The unique pieces as plain data, so that compile workers (-j N) get them from this
process instead of loading MODEL.py and capturing the model themselves.

A piece travels as its nodes (op, name, target named by its qualified name, arguments
with nodes named) and its placeholders' metadata: dtype, device, and shape, strides and
SymInt inputs as sympy expressions over the captured symbols, whose ranges and example
sizes travel too. Nothing else of a node's metadata matters to Inductor's output here
(tested): it re-derives every intermediate value from the inputs. This process compiles
the very same rebuilt pieces as the workers, so the output cannot depend on -j.
"""

from __future__ import annotations

import builtins
import importlib
import math
import operator
import pickle
from dataclasses import dataclass, field

import sympy
import torch
import torch.fx

from .errors import TranspileError


@dataclass(frozen=True)
class _Node:
    name: str


@dataclass(frozen=True)
class _TensorMeta:
    dtype: torch.dtype
    device: torch.device
    shape: tuple  # ints and sympy expressions
    stride: tuple


@dataclass(frozen=True)
class _SymMeta:
    expr: object  # a sympy expression


@dataclass
class CompilePlan:
    """What compiling every (unique piece, variant) needs, nothing of the model's weights."""

    pieces: list[bytes]  # one packed graph per unique piece, in order
    groups: list[tuple[str, tuple[str, ...]]]  # each piece's module name and input names
    symbol_ranges: dict  # sympy symbol -> (lo, hi or None, example size)
    dispatch_symbol: object
    tuning: object = None  # tuning.Tuning of a tuned transpile
    imports: list[str] = field(default_factory=list)  # --import modules (custom ops in pieces)
    import_paths: list[str] = field(default_factory=list)  # where they are found
    _graphs: list | None = field(default=None, repr=False, compare=False)

    def graph(self, index: int) -> torch.fx.GraphModule:
        if self._graphs is None:
            self._graphs = [unpack_graph(data, self.symbol_ranges) for data in self.pieces]
        return self._graphs[index]

    def prepare_process(self) -> None:
        """In a worker: register what the pieces call (--import modules' custom ops, found
        from MODEL.py's folder, which is not run) and rebuild every piece once."""
        import sys

        from .model_file import import_modules

        for path in self.import_paths:
            if path not in sys.path:
                sys.path.insert(0, path)
        import_modules(self.imports)
        for index in range(len(self.pieces)):
            self.graph(index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_graphs"] = None
        return state


def plan_of(split, options) -> CompilePlan:
    """The plan of a split model (prepare.SplitModel): its piece groups' compiled pieces, packed."""
    return make_plan(
        [group.compiled.graph_module for group in split.groups],
        split.groups,
        split.captured.symbol_ranges,
        split.dispatch_symbol,
        split.tuning,
        options.imports,
        [str(split.model_file.path.resolve().parent)],
    )


def make_plan(graph_modules, groups, symbol_ranges, dispatch_symbol, tuning, imports, import_paths) -> CompilePlan:
    return CompilePlan(
        pieces=[pack_graph(gm) for gm in graph_modules],
        groups=[(group.module_name, tuple(group.input_names)) for group in groups],
        symbol_ranges=dict(symbol_ranges),
        dispatch_symbol=dispatch_symbol,
        tuning=tuning,
        imports=list(imports),
        import_paths=list(import_paths),
    )


# ---- packing -------------------------------------------------------------------------


def _target_name(target) -> tuple:
    if isinstance(target, str):
        return ("str", target)
    if isinstance(target, torch._ops.OpOverload):
        return ("op", target._schema.name, target._overloadname)
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if module is None or name is None:
        raise TranspileError(f"cannot send {target!r} to a compile worker; run with -j 1")
    return ("py", module, name)


def _arg(value):
    if isinstance(value, torch.fx.Node):
        return _Node(value.name)
    if isinstance(value, (list, tuple)):
        return type(value)(_arg(v) for v in value)
    if isinstance(value, dict):
        return {k: _arg(v) for k, v in value.items()}
    if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return _SymMeta(value.node.expr)
    return value


def _meta(value):
    if isinstance(value, torch.Tensor):
        return _TensorMeta(
            value.dtype, value.device, tuple(_size(d) for d in value.shape), tuple(_size(s) for s in value.stride())
        )
    if isinstance(value, torch.SymInt):
        return _SymMeta(value.node.expr)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    raise TranspileError(f"cannot send a piece input of type {type(value).__name__} to a compile worker; run with -j 1")


def _size(value):
    return value.node.expr if isinstance(value, torch.SymInt) else int(value)


def pack_graph(graph_module: torch.fx.GraphModule) -> bytes:
    nodes = []
    for node in graph_module.graph.nodes:
        meta = {}
        if node.op == "placeholder" and "val" in node.meta:
            meta["val"] = _meta(node.meta["val"])
        nodes.append((node.op, node.name, _target_name(node.target), _arg(node.args), _arg(node.kwargs), meta))
    return pickle.dumps(nodes, protocol=pickle.HIGHEST_PROTOCOL)


# ---- unpacking -----------------------------------------------------------------------

_PY_MODULES = {"_operator": operator, "operator": operator, "math": math, "builtins": builtins}


def _resolve(name: tuple):
    kind = name[0]
    if kind == "str":
        return name[1]
    if kind == "op":
        namespace, _, op = name[1].partition("::")
        try:
            return getattr(getattr(getattr(torch.ops, namespace), op), name[2])
        except (AttributeError, RuntimeError) as error:
            raise LookupError(f"op {name[1]}.{name[2]} is not registered in this process") from error
    module = _PY_MODULES.get(name[1]) or importlib.import_module(name[1])
    value = module
    for part in name[2].split("."):
        value = getattr(value, part)
    return value


def _shape_env(symbol_ranges: dict):
    """A ShapeEnv that knows the captured symbols by their own names, ranges and example sizes."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch.utils._sympy.value_ranges import ValueRanges

    env = ShapeEnv()
    # torch 2.13 renamed var_to_val (kept as a deprecated alias); 2.11 has only the old name.
    values = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
    for symbol, (lo, hi, hint) in symbol_ranges.items():
        values[symbol] = sympy.Integer(hint)
        env.var_to_range[symbol] = ValueRanges(lo, hi if hi is not None else sympy.oo)
    return env


def unpack_graph(data: bytes, symbol_ranges: dict) -> torch.fx.GraphModule:
    from torch._subclasses.fake_tensor import FakeTensorMode

    env = _shape_env(symbol_ranges)
    mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=True)
    hints = {symbol: sympy.Integer(hint) for symbol, (_, _, hint) in symbol_ranges.items()}

    def symint(expr):
        if isinstance(expr, int):
            return expr
        expr = sympy.sympify(expr)
        if expr.is_number:
            return int(expr)
        return env.create_symintnode(expr, hint=int(expr.xreplace(hints)))

    def value_of(meta):
        if isinstance(meta, _TensorMeta):
            with mode:
                return torch.empty_strided(
                    [symint(d) for d in meta.shape],
                    [symint(s) for s in meta.stride],
                    dtype=meta.dtype,
                    device=meta.device,
                )
        if isinstance(meta, _SymMeta):
            return symint(meta.expr)
        return meta

    graph = torch.fx.Graph()
    made: dict[str, torch.fx.Node] = {}

    def arg(value):
        if isinstance(value, _Node):
            return made[value.name]
        if isinstance(value, _SymMeta):
            return symint(value.expr)
        if isinstance(value, (list, tuple)):
            return type(value)(arg(v) for v in value)
        if isinstance(value, dict):
            return {k: arg(v) for k, v in value.items()}
        return value

    for op, name, target, args, kwargs, meta in pickle.loads(data):
        node = graph.create_node(op, _resolve(target), arg(args), arg(kwargs), name=name)
        if node.name != name:
            raise TranspileError(
                f"piece node {name} was renamed {node.name} when rebuilt; this is a bug, run with -j 1"
            )
        if "val" in meta:
            node.meta["val"] = value_of(meta["val"])
        made[name] = node
    return torch.fx.GraphModule(torch.nn.Module(), graph)
