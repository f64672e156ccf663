"""CUDA graphs for the CUDA target: capture sizes, output dispatch dims, and the context
of the emitted `cudagraphs.py` (templates/cudagraphs.py.jinja), the data module that binds
the package's runner (transpiler/runtime/cudagraphs_runtime.py, copied verbatim) to the model.

The runner replays the compiled forward from CUDA graphs captured once per capture size
(vLLM's CUDAPiecewiseBackend semantics). Everything it needs to know about the model is
computed here, from plain values, and printed by the template:

- the capture sizes (vLLM's defaults, or a validated `--capture-sizes` list);
- per user input, the dim padded up to the capture size: the dim whose size is the
  dispatch symbol (the token count T), or, for an input sized by a count of its own (the
  number of sequences S of a flattened batch: S or S + 1), that dim, with the extra rows
  and the declared maximum (input_padded_dims); a static input may keep dims of any size
  (the tensor bound at capture fixes them); every other dim static;
- per flat output leaf, the dim sliced back from the capture size to the runtime size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

import sympy
import torch
import torch.fx

from .errors import TranspileError

TEMPLATE = "cudagraphs.py.jinja"

# vLLM's default capture sizes: 1, 2, 4, then every multiple of 8 up to this.
MAX_DEFAULT_CAPTURE_SIZE = 512


# --- capture sizes ------------------------------------------------------------------


def default_capture_sizes(lo: int, hi: int | None) -> list[int]:
    """1, 2, 4, 8, 16, ..., 512 (vLLM's), keeping those inside [lo, hi] (hi None: unbounded).

    Pass the span of the dispatch dim that the compiled variants cover. The list may be
    empty (a narrow range such as 5-7): then no size is captured and the runner always
    runs the plain forward.
    """
    top = MAX_DEFAULT_CAPTURE_SIZE if hi is None else min(hi, MAX_DEFAULT_CAPTURE_SIZE)
    candidates = [1, 2, 4, *range(8, MAX_DEFAULT_CAPTURE_SIZE + 1, 8)]
    return [size for size in candidates if lo <= size <= top]


def _bounds(lo: int, hi: int | None) -> str:
    return f"[{lo}, {'inf' if hi is None else hi}]"


def validate_capture_sizes(sizes: Sequence[int], lo: int, hi: int | None) -> list[int]:
    """Check a user's capture sizes: positive whole numbers inside [lo, hi], each once, in
    increasing order. Returns them as a list; raises TranspileError (one line) otherwise."""
    example = "for example 1,2,4,8"
    if not sizes:
        raise TranspileError(f"--capture-sizes: no size given; list at least one, {example}")
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TranspileError(f"--capture-sizes: {size!r} is not a whole number; {example}")
        if size < 1:
            raise TranspileError(f"--capture-sizes: {size} is not positive; capture sizes start at 1")
        if size < lo or (hi is not None and size > hi):
            raise TranspileError(
                f"--capture-sizes: {size} falls outside the compiled sizes {_bounds(lo, hi)}; "
                "keep capture sizes inside them"
            )
    for previous, current in zip(sizes, sizes[1:]):
        if current == previous:
            raise TranspileError(f"--capture-sizes: {current} appears twice; list each size once")
        if current < previous:
            raise TranspileError(
                f"--capture-sizes: {current} comes after {previous}; list the sizes in increasing order"
            )
    return list(sizes)


def capture_sizes_within(sizes: Sequence[int] | None, lo: int, hi: int | None) -> list[int]:
    """The sizes to capture for compiled sizes [lo, hi]: the defaults when none were given
    (--capture-sizes, parsed by options.parse_capture_sizes), else the given ones, checked."""
    if sizes is None:
        return default_capture_sizes(lo, hi)
    return validate_capture_sizes(sizes, lo, hi)


def sizes_literal(sizes: Sequence[int]) -> str:
    """A tuple literal of increasing sizes, a long evenly spaced tail written as a range:
    "(1, 2, 4, *range(8, 257, 8))" rather than 35 numbers one per line."""
    sizes = list(sizes)
    start = len(sizes)
    if len(sizes) >= 4:
        step = sizes[-1] - sizes[-2]
        start = len(sizes) - 2
        while start > 0 and sizes[start] - sizes[start - 1] == step:
            start -= 1
        if step <= 0 or len(sizes) - start < 4:
            start = len(sizes)
    items = [str(size) for size in sizes[:start]]
    if start < len(sizes):
        items.append(f"*range({sizes[start]}, {sizes[-1] + 1}, {sizes[-1] - sizes[-2]})")
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


# --- dispatch dims of the exported graph's inputs and outputs -----------------------


@dataclass(frozen=True)
class PaddedDim:
    """The dim of one input that CUDA graphs pad up to the capture size."""

    dim: int
    # False: the dim is sized by a count of its own (sequences), not the dispatch size.
    dispatch: bool = True
    # Rows past the capture size: 1 for an S + 1 dim.
    extra_rows: int = 0
    # The dim's declared maximum (None: unbounded): buffers never exceed it.
    max_rows: int | None = None
    # The symbol of a count of its own (for messages and output checks), else None.
    symbol: object = None


def _count_of_its_own(expr, dispatch_symbol):
    """(symbol, offset) when expr is `s` or `s + k` (k >= 0) for one symbol other than the
    dispatch symbol; else None."""
    symbols = expr.free_symbols
    if len(symbols) != 1 or dispatch_symbol in symbols:
        return None
    (symbol,) = symbols
    offset = sympy.simplify(expr - symbol)
    if not offset.is_Integer or offset < 0:
        return None
    return symbol, int(offset)


def _size_expressions(value: torch.Tensor) -> list:
    return [sympy.sympify(d.node.expr) if isinstance(d, torch.SymInt) else sympy.Integer(int(d)) for d in value.shape]


def _dispatch_dim_of(value, symbol: sympy.Symbol, what: str) -> int | None:
    """The one dim of `value` whose size is exactly `symbol`; None if no dim involves it."""
    if isinstance(value, torch.SymInt):
        if symbol in sympy.sympify(value.node.expr).free_symbols:
            raise TranspileError(
                f"{what} is a size computed from the dispatch size ({value.node.expr}); under CUDA "
                "graphs it would be the padded capture size, so return it from outside the model"
            )
        return None
    if not isinstance(value, torch.Tensor):
        return None
    dims = []
    for dim, expr in enumerate(_size_expressions(value)):
        if expr == symbol:
            dims.append(dim)
        elif symbol in expr.free_symbols:
            raise TranspileError(
                f"{what} dim {dim} has size {expr}, computed from the dispatch size {symbol}; CUDA-graph "
                "padding cannot be undone along it by slicing, so make the dispatch size a dim of its "
                "own (reshape outside the model)"
            )
    if len(dims) > 1:
        raise TranspileError(
            f"{what} has the dispatch size {symbol} in dims {dims[0]} and {dims[1]}; CUDA-graph padding "
            "can be undone along one dim only"
        )
    return dims[0] if dims else None


def output_dispatch_dims(
    graph_module: torch.fx.GraphModule, symbol: sympy.Symbol, padded_counts: Sequence = ()
) -> tuple[int | None, ...]:
    """Per flat output leaf of a torch.export graph: the dim whose size is the dispatch
    symbol (sliced back to the runtime size after a padded replay), or None.
    padded_counts: the symbols of counts of their own that inputs are padded along
    (sequences); an output sized by one is refused, as it would come back padded."""
    (output_node,) = graph_module.graph.find_nodes(op="output")
    leaves = output_node.args[0]
    if not isinstance(leaves, (tuple, list)):
        leaves = (leaves,)
    dims = []
    for index, leaf in enumerate(leaves):
        value = leaf.meta.get("val") if isinstance(leaf, torch.fx.Node) else leaf
        dims.append(_dispatch_dim_of(value, symbol, f"output {index}"))
        if isinstance(value, torch.Tensor):
            for dim, expr in enumerate(_size_expressions(value)):
                if expr.free_symbols & set(padded_counts):
                    raise TranspileError(
                        f"output {index} dim {dim} has size {expr}, a per-call count that CUDA graphs pad to the "
                        "capture size and cannot slice back; return per-token outputs (dims of the token count)"
                    )
    return tuple(dims)


def input_padded_dims(
    graph_module: torch.fx.GraphModule,
    symbol: sympy.Symbol,
    user_inputs: Sequence[str],
    symbol_ranges: dict | None = None,
) -> tuple[PaddedDim | None, ...]:
    """Per user input: the dim CUDA graphs may pad, or None. The dim whose size is the
    dispatch symbol; else, in an input with one dynamic dim whose size is another symbol
    `s` or `s + k` (a count of its own, such as the number of sequences), that dim, its
    maximum from symbol_ranges. Whether that input is padded (its pad value declared) or
    static, and every other dynamic dim, cudagraphs_context decides."""
    placeholders = {node.name: node for node in graph_module.graph.find_nodes(op="placeholder")}
    symbol_ranges = symbol_ranges or {}
    padded = []
    for name in user_inputs:
        value = placeholders[name].meta["val"]
        dim = _dispatch_dim_of(value, symbol, f"input {name}")
        if dim is not None:
            padded.append(PaddedDim(dim))
            continue
        dynamic = (
            [(d, e) for d, e in enumerate(_size_expressions(value)) if e.free_symbols]
            if isinstance(value, torch.Tensor)
            else []
        )
        count = _count_of_its_own(dynamic[0][1], symbol) if len(dynamic) == 1 else None
        if count is None:
            padded.append(None)
            continue
        count_symbol, offset = count
        hi = symbol_ranges.get(count_symbol, (None, None, None))[1]
        padded.append(
            PaddedDim(
                dynamic[0][0],
                dispatch=False,
                extra_rows=offset,
                max_rows=None if hi is None else int(hi) + offset,
                symbol=count_symbol,
            )
        )
    return tuple(padded)


# --- the template's context ---------------------------------------------------------


@dataclass(frozen=True)
class CudaGraphInput:
    """One user input as the emitted INPUTS table prints it."""

    name: str
    dtype: str  # "torch.int64"
    shape_literal: str  # "(1, None)": None at the padded dim (and a static input's free dims)
    padded_dim_literal: str  # "1", or "None" for an input copied whole
    static: bool = False  # used by reference (state such as a KV cache), never copied
    pad_literal: str = "None"  # the value of padded positions, or None: the default rule
    # ", 1, 129": the extra rows and maximum rows of a dim sized by a count of its own
    # (query_start_loc [S + 1]); "" when the dim is the dispatch dim.
    rows_literal: str = ""


@dataclass(frozen=True)
class CudaGraphsContext:
    """What templates/cudagraphs.py.jinja prints; every value is ready to print."""

    name: str  # the package name (also the logger's name)
    dispatch_input_index: int
    dispatch_input_name: str
    dispatch_dim: int
    capture_sizes: tuple[int, ...]
    capture_sizes_literal: str  # "(1, 2, 4, 8)"
    largest_capture_size: int | None
    inputs: tuple[CudaGraphInput, ...]
    output_dispatch_dims_literal: str  # "(1, None)"
    # Padding is safe when nothing is written in place, or when model.py declares the pad
    # values that send padded tokens' writes to a scratch slot.
    pad_by_default: bool = True
    # Positions in the weights tuple of buffers the forward writes in place.
    mutated_weight_indices_literal: str = "()"
    mutated_input_names_literal: str = "()"

    def template_vars(self) -> dict:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def _spec_fields(spec) -> tuple[str, str, tuple]:
    """(name, dtype string, shape) from a (name, dtype, shape) tuple or an ir.TensorSpec."""
    if hasattr(spec, "name"):
        return spec.name, spec.dtype, tuple(spec.shape)
    name, dtype, shape = spec
    return name, str(dtype), tuple(shape)


def cudagraphs_context(
    name: str,
    capture_sizes: Iterable[int],
    inputs: Sequence,
    dispatch_input_index: int,
    dispatch_dim: int,
    output_dispatch_dims: Sequence[int | None],
    input_dispatch_dims: Sequence[int | PaddedDim | None] | None = None,
    state=None,
    weight_keys: Sequence[str] = (),
) -> CudaGraphsContext:
    """The context of the emitted cudagraphs.py, from plain values.

    inputs: per user input, (name, dtype string, shape with None for dynamic dims), or
    ir.TensorSpec. input_dispatch_dims (from input_padded_dims(), or plain dims) says which
    dim of each input is padded; without it, an input is padded along `dispatch_dim` where
    its shape has None there. Any other None is refused, but in a static input (the tensor
    bound at capture fixes it). An input sized by a count of its own (PaddedDim with
    dispatch False) is padded only when the state declares its pad value.
    """
    sizes = sorted(capture_sizes)
    if len(set(sizes)) != len(sizes) or any(size < 1 for size in sizes):
        raise TranspileError(f"capture sizes {sizes} must be positive and distinct")
    specs = [_spec_fields(spec) for spec in inputs]
    if not 0 <= dispatch_input_index < len(specs):
        raise TranspileError(f"dispatch input {dispatch_input_index} is not one of the {len(specs)} inputs")
    if input_dispatch_dims is None:
        input_dispatch_dims = [
            dispatch_dim if dispatch_dim < len(shape) and shape[dispatch_dim] is None else None for _, _, shape in specs
        ]
    if len(input_dispatch_dims) != len(specs):
        raise TranspileError(f"{len(input_dispatch_dims)} input dispatch dims for {len(specs)} inputs")
    input_dispatch_dims = [PaddedDim(d) if isinstance(d, int) else d for d in input_dispatch_dims]
    dispatch_padding = input_dispatch_dims[dispatch_input_index]
    if dispatch_padding is None or not dispatch_padding.dispatch or dispatch_padding.dim != dispatch_dim:
        raise TranspileError(
            f"input {specs[dispatch_input_index][0]} dim {dispatch_dim} is the dispatch dim, but it is not dynamic"
        )
    static = set(state.static_inputs) if state is not None else set()
    mutated = set(state.mutated_inputs) if state is not None else set()
    pad_values = dict(state.pad_values) if state is not None else {}
    rows = []
    for (input_name, dtype, shape), padding in zip(specs, input_dispatch_dims):
        if input_name in static:
            if padding is not None and padding.dispatch:
                written = "is written in place" if input_name in mutated else "is declared static"
                raise TranspileError(
                    f"input {input_name} {written} but its dim {padding.dim} is the dispatch size; CUDA graphs use "
                    "such an input by reference at one fixed shape: give it a fixed shape (a cache sized for the most tokens)"
                )
            padding = None  # used by reference: the tensor bound at capture fixes its dynamic dims
        elif padding is not None and not padding.dispatch and input_name not in pad_values:
            raise TranspileError(
                f"input {input_name} dim {padding.dim} has a size of its own ({padding.symbol}{f' + {padding.extra_rows}' if padding.extra_rows else ''}), "
                f'not the dispatch size; declare its pad value in pad_values (a number, or "last") so that CUDA graphs '
                "pad it to the capture size with entries that change nothing (seq_lens 0), or make it static"
            )
        dim = None if padding is None else padding.dim
        if input_name in pad_values and dim is None:
            raise TranspileError(
                f"pad value for input {input_name}, which has no padded dim and so is never padded; "
                "declare pad values only for inputs sized by the dispatch size or by a count of their own"
            )
        for other, size in enumerate(shape):
            if size is None and other != dim and input_name not in static:
                raise TranspileError(
                    f"input {input_name} dim {other} varies independently of the dispatch dim; CUDA graphs "
                    "need static buffers, so make it static or make it the dispatch dim"
                )
        # The padded dim prints as None: the runner fills in the capture size.
        printed_shape = tuple(None if index == dim else size for index, size in enumerate(shape))
        rows_literal = ""
        if padding is not None and not padding.dispatch:
            rows_literal = f", {padding.extra_rows}, {padding.max_rows!r}"
        rows.append(
            CudaGraphInput(
                name=input_name,
                dtype=dtype,
                shape_literal=repr(printed_shape),
                padded_dim_literal=repr(dim),
                static=input_name in static,
                pad_literal=repr(pad_values.get(input_name)),
                rows_literal=rows_literal,
            )
        )
    mutated_weights = set(state.mutated_weights) if state is not None else set()
    return CudaGraphsContext(
        name=name,
        dispatch_input_index=dispatch_input_index,
        dispatch_input_name=specs[dispatch_input_index][0],
        dispatch_dim=dispatch_dim,
        capture_sizes=tuple(sizes),
        capture_sizes_literal=sizes_literal(sizes),
        largest_capture_size=sizes[-1] if sizes else None,
        inputs=tuple(rows),
        output_dispatch_dims_literal=repr(tuple(output_dispatch_dims)),
        pad_by_default=state is None or not state.mutated or bool(pad_values),
        mutated_weight_indices_literal=repr(tuple(i for i, key in enumerate(weight_keys) if key in mutated_weights)),
        mutated_input_names_literal=repr(tuple(name for name, _, _ in specs if name in mutated)),
    )


def template_environment():
    """The Jinja environment emit.py uses."""
    from .templating import environment

    return environment()


def render_source(context: CudaGraphsContext, environment=None) -> str:
    """cudagraphs.py's source, before black (emit.py formats it with the other modules)."""
    environment = environment or template_environment()
    return environment.get_template(TEMPLATE).render(**context.template_vars())
