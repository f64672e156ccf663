"""Capture the model with torch.export (non-strict), weights lifted to graph inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from . import fake_weights, foreign_ops, mutation, runtime_asserts
from . import opaque_attention as opaque_attention_stage
from .errors import TranspileError
from .ir import DispatchDim, TensorSpec, Weight
from .model_file import ModelFile


@dataclass(frozen=True)
class Capture:
    """The captured model: the first stage's result."""

    program: ExportedProgram | None  # None in a compile worker, which needs the graph only
    graph_module: torch.fx.GraphModule  # the lifted graph: weights are placeholders
    user_inputs: tuple[str, ...]  # placeholder names of forward's arguments, in order
    weights: tuple[Weight, ...]
    weight_tensors: dict[str, torch.Tensor]
    symbol_ranges: dict[sympy.Symbol, tuple[int, int | None, int]]  # symbol -> (lo, hi or None, hint)
    inlined_ops: tuple[str, ...] = ()  # foreign custom ops captured as their bodies
    untraceable_ops: dict[str, str] = field(default_factory=dict)  # foreign custom ops kept: op -> why


# Lines of torch.export's message worth keeping: the failing guard and the suggested fix.
_USEFUL = (
    "Constraints violated",
    "Not all values",
    "satisfy the generated guard",
    "Suggested fix",
    "You marked",
    "specialized",
    "guard",
    "dynamic_shapes",
    "Dim(",
    "Could not guard",
    "Caused by",
)


def export_error_summary(error: BaseException, limit: int = 8) -> str:
    """The first line of an export error, then its specific lines (the failing guard,
    the suggested fix), without the stack dumps and blank lines around them."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    kept = [lines[0]]
    for line in lines[1:]:
        if len(kept) > limit:
            break
        if any(marker in line for marker in _USEFUL) and line not in kept and not line.startswith("File "):
            kept.append(line)
    return " | ".join(kept)


def export_model(model_file: ModelFile, device: str = "cpu", opaque_attention: bool = False, keep_ops=()) -> Capture:
    """opaque_attention: capture F.scaled_dot_product_attention as transpile::sdpa. Foreign
    custom ops other than `keep_ops` (the splitting ops) are captured as their bodies where
    export can trace them (foreign_ops.py)."""
    model = fake_weights.model_to(model_file.model.eval(), device)
    example_inputs = tuple(t.to(device) for t in model_file.example_inputs)
    candidates = foreign_ops.inline_candidates(keep_ops)
    inlining = {"inlined": [], "untraceable": {}}

    def export_once(**options):
        with torch.no_grad(), opaque_attention_stage.routed(opaque_attention):
            return torch.export.export(
                model, example_inputs, dynamic_shapes=model_file.dynamic_shapes, strict=False, **options
            )

    def export(**options):
        program, inlining["inlined"], inlining["untraceable"] = foreign_ops.export_inlining(
            lambda: export_once(**options), candidates
        )
        return program

    def refuse(error):
        own = _transpile_error_in(error)
        if own is not None:  # one of the transpiler's checks, raised while the forward ran
            return own
        return TranspileError(
            f"torch.export could not capture {model_file.path.name}'s forward: {export_error_summary(error)}; "
            "make the forward traceable (no data-dependent Python control flow; use torch.cond or "
            "compute on shapes) and check `dynamic_shapes`"
        )

    try:
        program = export()
    except Exception as error:
        if "Constraints violated" not in str(error):
            raise refuse(error) from error
        # Some torch versions (2.11) cannot prove guards that hold for every size, such as
        # min(16*s, 32*s) == 16*s. Export again with guards as runtime asserts, and keep
        # the program only if every assert holds over the declared ranges.
        try:
            program = export(prefer_deferred_runtime_asserts_over_guards=True)
        except Exception:
            raise refuse(error) from error
        if not runtime_asserts.drop_proven_asserts(program):
            raise refuse(error) from error

    signature = program.graph_signature
    placeholders = {node.name: node for node in program.graph.find_nodes(op="placeholder")}
    user_inputs, weights, tensors = [], [], {}
    for spec in signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            if not isinstance(placeholders[spec.arg.name].meta.get("val"), torch.Tensor):
                raise TranspileError("forward takes a non-tensor argument; pass only tensors in `example_inputs`")
            user_inputs.append(spec.arg.name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = program.state_dict.get(spec.target)
            if value is None:
                value = program.constants[spec.target]
            # A checkpoint (a state_dict) holds parameters and persistent buffers; constants
            # and non-persistent buffers (rotary frequencies, say) always come from the package.
            in_checkpoint = spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent)
            weights.append(Weight(name=spec.arg.name, key=spec.target, user_supplied=bool(in_checkpoint)))
            tensors[spec.target] = value.detach()
        else:
            raise TranspileError(
                f"unsupported graph input kind {spec.kind.name}; the model must not take custom objects"
            )
    # The package ships these (fake_weights.py: only parameters may be fakes).
    fake_weights.real_tensors_only(
        {w.key: tensors[w.key] for w in weights if not w.user_supplied}, model_file.path.name
    )
    if any(spec.kind.name != "USER_OUTPUT" for spec in signature.output_specs):
        # torch.export's training IR keeps in-place ops in the graph; a functionalized
        # signature (mutations as extra outputs) would mean an export mode we do not read.
        kinds = sorted({spec.kind.name for spec in signature.output_specs} - {"USER_OUTPUT"})
        raise TranspileError(
            f"torch.export returned a functionalized graph ({', '.join(kinds)} outputs); this torch "
            "version's export is not supported for models that write state in place"
        )

    graph_module = torch.fx.GraphModule(program.graph_module, program.graph)
    # `y = cache.index_copy_(...)`: y is the cache; later uses read it directly.
    mutation.redirect_inplace_results(graph_module)
    mutation.check_outputs_not_views(graph_module)

    symbol_ranges = {}
    for symbol, value_range in program.range_constraints.items():
        if not isinstance(symbol, sympy.Symbol):
            continue
        upper = value_range.upper
        hi = None if upper.is_infinite else int(upper)
        symbol_ranges[symbol] = (int(value_range.lower), hi, _hint(program, symbol))
    return Capture(
        program=program,
        graph_module=graph_module,
        user_inputs=tuple(user_inputs),
        weights=tuple(weights),
        weight_tensors=tensors,
        symbol_ranges=symbol_ranges,
        inlined_ops=tuple(inlining["inlined"]),
        untraceable_ops=inlining["untraceable"],
    )


def _transpile_error_in(error: BaseException) -> TranspileError | None:
    """The TranspileError an export error wraps, if any (torch re-raises some errors as its own)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, TranspileError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _hint(program: ExportedProgram, symbol) -> int:
    """The size the symbol had in the example inputs."""
    for node in program.graph.find_nodes(op="placeholder"):
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            for dim in value.shape:
                if isinstance(dim, torch.SymInt) and dim.node.expr == symbol:
                    return int(dim.node.hint)
    return 2


def input_specs(capture: Capture) -> tuple[TensorSpec, ...]:
    placeholders = {node.name: node for node in capture.program.graph.find_nodes(op="placeholder")}
    specs = []
    for name in capture.user_inputs:
        value = placeholders[name].meta["val"]
        shape = tuple(None if isinstance(d, torch.SymInt) else int(d) for d in value.shape)
        specs.append(TensorSpec(name=name, dtype=str(value.dtype), shape=shape))
    return tuple(specs)


def resolve_dispatch_dim(capture: Capture, requested: str | None) -> tuple[DispatchDim, sympy.Symbol]:
    """The dimension whose runtime size picks the compiled variant."""
    placeholders = {node.name: node for node in capture.program.graph.find_nodes(op="placeholder")}

    def symbol_of(index: int, dim: int):
        value = placeholders[capture.user_inputs[index]].meta["val"]
        if dim >= value.dim() or dim < -value.dim():
            return None
        size = value.shape[dim]
        if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
            return size.node.expr
        return None

    if requested is None:
        for index in range(len(capture.user_inputs)):
            value = placeholders[capture.user_inputs[index]].meta["val"]
            for dim in range(value.dim()):
                if symbol_of(index, dim) is not None:
                    return _dispatch(capture, index, dim, symbol_of(index, dim))
        raise TranspileError(
            "no input has a dynamic dimension; declare one in `dynamic_shapes` (torch.export.Dim) "
            "so that sizes can be dispatched"
        )
    name, _, dim_text = requested.rpartition(":")
    if not name or not dim_text.lstrip("-").isdigit():
        raise TranspileError(f"--dispatch-dim {requested}: expected INPUT:DIM, for example input_ids:1")
    index = int(name) if name.isdigit() else (capture.user_inputs.index(name) if name in capture.user_inputs else -1)
    if not 0 <= index < len(capture.user_inputs):
        raise TranspileError(
            f"--dispatch-dim {requested}: no input {name!r}; inputs are {', '.join(capture.user_inputs)}"
        )
    dim = int(dim_text)
    symbol = symbol_of(index, dim)
    if symbol is None:
        raise TranspileError(
            f"--dispatch-dim {requested}: that dimension is not dynamic; declare it in `dynamic_shapes`"
        )
    return _dispatch(capture, index, dim % placeholders[capture.user_inputs[index]].meta["val"].dim(), symbol)


def _dispatch(capture: Capture, index: int, dim: int, symbol) -> tuple[DispatchDim, sympy.Symbol]:
    lo, hi, _ = capture.symbol_ranges[symbol]
    return DispatchDim(input_index=index, input_name=capture.user_inputs[index], dim=dim, lo=lo, hi=hi), symbol
