"""Compile one piece for one variant with Inductor, keeping its wrapper source and kernels.

Each (piece, variant) gets a fresh ShapeEnv: the dispatch symbol is bounded by the
variant's range (or replaced by the exact size), every other symbol keeps the range
torch.export found. A fresh environment keeps guards and replacements made while
compiling one variant from leaking into the next.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import sympy
import torch
import torch.fx

from .errors import TranspileError
from .ir import SizeRange, Variant


@dataclass
class InductorOutput:
    source_code: str  # Inductor's wrapper module
    module_globals: dict  # the loaded wrapper module's namespace: its kernels live here
    compiled_callable: object  # what Inductor returned (transpile time only)
    fake_inputs: list  # the inputs it was compiled for
    align_indices: tuple[int, ...] = ()  # inputs Inductor re-aligns to 16 bytes before `call` (CUDA)


def cpp_kernel_files(module_globals: dict) -> dict[str, str]:
    """Kernel global name -> the CPython extension (.so) Inductor built and loaded for it."""
    kernel_files = {}
    for name, value in module_globals.items():
        owner = getattr(value, "__self__", None)
        file = getattr(owner, "__file__", None)
        if file and file.endswith(".so") and type(value).__name__ == "builtin_function_or_method":
            kernel_files[name] = file
    return kernel_files


def unwrap_call(callable_) -> tuple[dict, tuple[int, ...]]:
    """The wrapper module's globals, and the inputs Inductor re-aligns before calling `call`.

    On CPU `CompiledFxGraph.current_callable` is the module's `call` (a bound method of
    its `Runner`). On CUDA it is `align_inputs_from_check_idxs`'s closure, which copies
    inputs whose data is not 16-byte aligned, then calls `model`, the module's `call`.
    """
    align: tuple[int, ...] = ()
    fn = callable_
    for _ in range(4):
        function = getattr(fn, "__func__", fn)
        code, closure = getattr(function, "__code__", None), getattr(function, "__closure__", None)
        if code is None or not closure:
            break
        cells = {}
        for name, cell in zip(code.co_freevars, closure):
            try:
                cells[name] = cell.cell_contents
            except ValueError:
                pass
        if "model" not in cells or "inputs_to_check" not in cells:
            break
        align = tuple(int(i) for i in cells["inputs_to_check"])
        fn = cells["model"]
    module_globals = getattr(getattr(fn, "__func__", fn), "__globals__", {})
    if "call" not in module_globals:
        raise TranspileError("unexpected Inductor output: cannot find the wrapper module behind the compiled callable")
    return module_globals, align


def _fresh_fake_inputs(
    piece: torch.fx.GraphModule,
    dispatch_symbol: sympy.Symbol,
    variant: Variant,
    symbol_ranges: dict,
    dispatch_hint: int | None = None,
):
    """Fake tensors (and ints) for the piece's placeholders under a fresh ShapeEnv.

    `dispatch_hint` replaces the size Inductor optimizes a range for (a tuned transpile
    compiles and benchmarks each range at a representative size); by default export's hint."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StrictMinMaxConstraint,
    )
    from torch.utils._sympy.value_ranges import ValueRanges

    shape_env = ShapeEnv()
    fake_mode = FakeTensorMode(shape_env=shape_env)
    substitutions: dict[sympy.Symbol, sympy.Expr] = {}
    for symbol in sorted(symbol_ranges, key=str):
        lo, hi, hint = symbol_ranges[symbol]
        if symbol == dispatch_symbol:
            if variant.static:
                substitutions[symbol] = sympy.Integer(variant.range.lo)
                continue
            lo, hi = variant.range.lo, variant.range.hi
            if dispatch_hint is not None:
                hint = dispatch_hint
            hint = min(max(hint, lo), hi if hi is not None else hint)
        # A hint of 0 or 1 would make the ShapeEnv specialize the symbol.
        if hint < 2 and (hi is None or hi >= 2):
            hint = 2
        upper = hi if hi is not None else sympy.oo
        substitutions[symbol] = shape_env.create_symbol(
            hint,
            ConstantSource(str(symbol)),
            dynamic_dim=DimDynamic.DYNAMIC,
            constraint_dim=StrictMinMaxConstraint(vr=ValueRanges(lo, upper), warn_only=False),
        )

    def convert(value):
        if isinstance(value, torch.SymInt):
            expr = value.node.expr.xreplace(substitutions)
            if expr.is_number:
                return int(expr)
            return shape_env.create_symintnode(expr, hint=None)
        return value

    inputs = []
    for node in piece.graph.find_nodes(op="placeholder"):
        value = node.meta["val"]
        if isinstance(value, torch.Tensor):
            with fake_mode:
                inputs.append(
                    torch.empty_strided(
                        [convert(d) for d in value.shape],
                        [convert(s) for s in value.stride()],
                        dtype=value.dtype,
                        device=value.device,
                    )
                )
        else:
            inputs.append(convert(value))
    return inputs, fake_mode, substitutions.get(dispatch_symbol)


@contextlib.contextmanager
def inductor_config(target_patches: dict, compile_threads: int | None = None):
    """Inductor's settings for every compile: these, and the target's (targets/, which adds
    those of --autotune and its replays). `compile_threads`: how many kernels one process
    builds at once (with -j N each process takes a share of the cores; it does not change
    what is built)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as config

    patches: dict = {
        # One kernel per fused region, no autotuning across processes, and no
        # freezing: weights are inputs, so one binary serves any weights.
        "freezing": False,
        "fx_graph_remote_cache": False,
        # Inductor's FX graph cache keys a graph without the size hints its code depends on
        # (whether a loop is parallelized, say): a range would reuse the code another range
        # compiled first, so the output would depend on compile order and cache state.
        "fx_graph_cache": False,
        **target_patches,
    }
    if compile_threads is not None:
        patches["compile_threads"] = compile_threads
    # AOTAutograd's own cache would skip the inner compile we read the output of.
    with config.patch(patches), functorch_config.patch(enable_autograd_cache=False):
        yield


def compile_variant(
    piece: torch.fx.GraphModule,
    dispatch_symbol: sympy.Symbol,
    variant: Variant,
    symbol_ranges: dict,
    dispatch_hint: int | None = None,
) -> InductorOutput:
    """Run Inductor on `piece` for `variant`; return its wrapper module, loaded."""
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    inputs, fake_mode, range_symbol = _fresh_fake_inputs(piece, dispatch_symbol, variant, symbol_ranges, dispatch_hint)
    for node in piece.graph.nodes:
        if "val" in node.meta:
            node.meta["example_value"] = node.meta["val"]

    captured = []

    def inner_compile(gm, example_inputs, **kwargs):
        compiled = compile_fx_inner(gm, example_inputs, **kwargs)
        captured.append((gm, compiled))
        return compiled

    with fake_mode:
        compile_fx(piece, inputs, inner_compile=inner_compile)
    if len(captured) != 1:
        raise TranspileError(f"Inductor produced {len(captured)} graphs for one piece; expected one")
    inner_graph, compiled = captured[0]
    _check_calling_convention(piece, inner_graph)
    if not variant.static:
        _check_guards_hold(fake_mode.shape_env, range_symbol, variant)
    module_globals, align_indices = unwrap_call(compiled.current_callable)
    return InductorOutput(
        source_code=compiled.source_code,
        module_globals=module_globals,
        compiled_callable=compiled.current_callable,
        fake_inputs=inputs,
        align_indices=align_indices,
    )


# Past this many sizes a range's guards are checked at its bounds and a sample between.
_GUARD_CHECK_LIMIT = 4096


class RangeSpecialized(TranspileError):
    """Inductor assumed something about the dispatch size that fails inside a range.

    `parts` splits the range where the guards' truth changes: each part compiled on
    its own holds its guards throughout (the pipeline recompiles them).
    """

    def __init__(self, variant: Variant, guard, failing_size: int, parts: list[SizeRange]):
        self.variant, self.guard, self.failing_size, self.parts = variant, guard, failing_size, parts
        self._arguments = (variant, guard, failing_size, parts)
        super().__init__(
            f"Inductor specialized range {variant.range.label()} on `{guard}`, which fails at size {failing_size}; "
            f"split the range at {failing_size} (--ranges) or add {failing_size} to --sizes"
        )

    def __reduce__(self):  # raised in a pool worker, re-raised in the parent
        return (RangeSpecialized, self._arguments)


def _guard_sizes(lo: int, hi: int) -> list[int]:
    if hi - lo <= _GUARD_CHECK_LIMIT:
        return list(range(lo, hi + 1))
    step = (hi - lo) // _GUARD_CHECK_LIMIT + 1
    return sorted({*range(lo, hi + 1, step), hi})


def _check_guards_hold(shape_env, symbol: sympy.Symbol, variant: Variant) -> None:
    """The emitted code runs without guards, so whatever Inductor assumed about the
    dispatch size while compiling must hold for every size of the range."""
    lo = variant.range.lo
    hi = variant.range.hi if variant.range.hi is not None else variant.range.lo + _GUARD_CHECK_LIMIT
    guards = [g.expr for g in shape_env.guards if g.expr.free_symbols == {symbol}]

    def truth(size: int) -> tuple[bool, ...]:
        return tuple(expr.xreplace({symbol: sympy.Integer(size)}) is not sympy.false for expr in guards)

    sizes = _guard_sizes(lo, hi)
    for size in sizes:
        values = truth(size)
        if all(values):
            continue
        guard = guards[values.index(False)]
        raise RangeSpecialized(variant, guard, size, _split_where_truth_changes(truth, sizes, variant.range))


def _split_where_truth_changes(truth, sizes: list[int], size_range: SizeRange) -> list[SizeRange]:
    """Cut the range wherever the guards' truth values change (bisecting between samples)."""
    cuts = []
    for before, after in zip(sizes, sizes[1:]):
        if truth(before) == truth(after):
            continue
        low, high = before, after  # truth(low) != truth(high): find the first size like `high`
        while high - low > 1:
            middle = (low + high) // 2
            if truth(middle) == truth(low):
                low = middle
            else:
                high = middle
        cuts.append(high)
    bounds = [size_range.lo, *cuts]
    return [
        SizeRange(start, (bounds[i + 1] - 1) if i + 1 < len(bounds) else size_range.hi)
        for i, start in enumerate(bounds)
    ]


def _check_calling_convention(piece: torch.fx.GraphModule, inner_graph: torch.fx.GraphModule) -> None:
    """The emitted code calls Inductor's `call` directly, without AOTAutograd's runtime
    wrappers; that is only right when those wrappers pass arguments and results through."""
    outer_inputs = len(piece.graph.find_nodes(op="placeholder"))
    inner_inputs = len(inner_graph.graph.find_nodes(op="placeholder"))
    outer_outputs = len(piece.graph.output_node().args[0])
    inner_outputs = len(inner_graph.graph.output_node().args[0])
    if (outer_inputs, outer_outputs) != (inner_inputs, inner_outputs):
        raise TranspileError(
            "a piece mutates an input or returns an alias of one, which the emitted code cannot "
            f"reproduce ({outer_inputs}->{inner_inputs} inputs, {outer_outputs}->{inner_outputs} outputs); "
            "move the op into a splitting op or make the model functional"
        )
