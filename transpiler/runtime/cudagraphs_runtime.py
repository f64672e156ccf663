"""CUDA graphs of a transpiled package: the compiled forward captured once per capture size,
then replayed. The package's cudagraphs.py binds the runner to its model (the tables of
GraphModel below):

    from PACKAGE import cudagraphs
    runner = cudagraphs.CudaGraphRunner(model.weights)  # mode="piecewise" (default) or "full"
    runner.capture()                  # explicit: logs what it captures and how long it took
    outputs = runner(*inputs)         # replays the graphs of the nearest capture size

A replay launches every kernel of a graph with one call, which removes the per-kernel
launch cost that dominates small sizes. A graph reads and writes fixed addresses, so the
runner owns static buffers for the per-call inputs (token ids, positions, slot mappings):
they are copied in, and a size between two capture sizes is padded up to the next one
(along the dispatch dim of each input) and the outputs sliced back to it. Padded positions
take the input's pad value declared in model.py (`pad_values`, e.g. slot_mapping -1 so
that padded tokens write to a scratch slot, as vLLM pads its slot mapping; "last": the
last valid entry repeated), else zeros for floating inputs and the last valid element
repeated for integer and bool inputs.

Inputs sized by a count of their own rather than the token count (a flattened batch's
per-sequence metadata: block_table [S, max_blocks], seq_lens [S], query_start_loc [S + 1])
are padded too, each along its own dim from its own size, to the capture size (plus the
input's extra rows: 1 for S + 1), at most to the dim's declared maximum: S <= T, every
sequence having at least one token, so the token count's capture size bounds them. Their
pad values (model.py must declare them) make the padded entries inert: seq_lens 0 and
query_start_loc repeating its last offset give padded sequences no tokens and no keys. A
call whose count does not fit those buffers runs the plain forward. Padding is
only correct when the valid positions along the dispatch dim do not read the padded ones
(independent rows, or causal attention with the padding at the end) and padded positions
write no state that valid ones read: a model that writes state in place pads only when it
declares pad values; otherwise (or with pad=False) only the exact capture sizes replay graphs.

State is never copied. Inputs the forward writes in place (a KV cache) and inputs declared
static (`static_inputs` in model.py, --static-inputs) are used by reference: capture() takes
them (`runner.capture()` after `CudaGraphRunner(weights, static_inputs={"kv_cache": cache})`),
the graphs read and write that tensor where it is, and a call with another tensor for one of
them raises ValueError (capture a new runner for another cache). A static input may have a
dim of any size (a paged cache's block count): the tensor bound at capture fixes it. Buffers the forward updates
live in the weights and are used in place too. capture() runs the forward to warm up and, in
piecewise mode, runs the splitting ops for real: the state they write is saved before and
restored after, so capturing leaves the caller's cache as it found it.

Two modes:
- "piecewise": one graph per compiled piece call; the splitting ops (attention) between the
  pieces run eagerly, so they may take any shape and need not be capturable. Outputs of a
  piece feed the next piece in place; only outputs of the eager ops are copied in.
- "full": the whole forward, splitting ops included, as one graph per capture size: fewer
  launches and no copies, but every splitting op must be capturable (no host syncs, no
  allocations outside the graph's pool) and give correct results at the padded size.
Memory: piecewise mode keeps, for every capture size, the outputs of every piece (the
activations passed between pieces) and copies of the eager ops' outputs; full mode keeps
only the final outputs. Fewer capture sizes use less.

All graphs share one memory pool. Sizes above the largest capture size, and every call before
capture(), run the plain forward (stitch.forward). Weights must stay where they are after
capture (update them in place with copy_, never replace the tensors). Not thread-safe.
Copied verbatim into every package from transpiler/runtime/ by transpile; do not edit.
"""

import functools
import gc
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from typing import NamedTuple

import torch

# The graph machinery, looked up through these names at call time so that tests can put
# CPU fakes in their place.
CUDAGraph = torch.cuda.CUDAGraph
graph = torch.cuda.graph
graph_pool_handle = torch.cuda.graph_pool_handle
synchronize = torch.cuda.synchronize

MODES = ("piecewise", "full")


class InputSpec(NamedTuple):
    name: str
    dtype: torch.dtype
    # None at the padded dim, which takes the capture size; for a static input, None at
    # the dims the tensor bound at capture fixes (a paged cache's block count).
    shape: tuple
    # The dim padded up to the capture size; None: the input is copied whole.
    padded_dim: int | None
    # Used by reference (state such as a KV cache): bound at capture, never copied.
    static: bool = False
    # The value of padded positions: a number, or LAST (the last valid entry repeated);
    # None: zeros (floating) or the last valid entry (integer, bool).
    pad_value: float | str | None = None
    # The padded dim's rows past the capture size: 1 for an S + 1 input (query_start_loc).
    extra_rows: int = 0
    # At most this many rows along the padded dim (its declared maximum); None: no limit.
    max_rows: int | None = None


# A pad value: the last valid entry along the padded dim, repeated.
LAST = "last"


class GraphModel(NamedTuple):
    """What the runner knows of one model (the package's cudagraphs.py fills it in)."""

    # The package's name: the logger's name, and the start of every message.
    name: str
    # The forward's inputs, in order.
    inputs: tuple
    # The size of this input dimension picks the capture size.
    dispatch_input: int
    dispatch_dim: int
    # Per flat output (in return order): the dim sliced back to the runtime size, or None.
    output_dispatch_dims: tuple
    # The sizes captured unless the caller gives others.
    capture_sizes: tuple
    # Inputs the forward writes in place, and positions in the weights of buffers it updates.
    mutated_inputs: tuple
    mutated_weights: tuple
    # Whether sizes between capture sizes are padded by default (see the module's docstring).
    pad_by_default: bool
    # stitch.forward(weights, *inputs, select=...): the plain forward.
    forward: Callable
    # dispatch.select(size): the row of compiled piece functions of a size.
    select: Callable
    # dispatch.Variant: the NamedTuple of a row, one field per piece module.
    variant: type


def runner_class(model: GraphModel) -> type:
    """CudaGraphRunner bound to one model: the package's cudagraphs.CudaGraphRunner."""
    return type(
        "CudaGraphRunner",
        (CudaGraphRunner,),
        {"model": model, "__doc__": CudaGraphRunner.__doc__},
    )


class CudaGraphRunner:
    """The forward replayed from CUDA graphs, one set per capture size.

    Call capture() once, before serving; until then a call runs the plain forward.
    capture(lazy=True) instead captures each capture size's graphs at the first call
    that maps to it (start-up pays for no size that is never called).

    The tensors a call returns are the graphs' static output buffers (or views of them):
    they stay valid until the next call whose size maps to the same capture size, which
    overwrites them. Call .clone() on an output to keep it longer.
    """

    model: GraphModel | None = None  # set by runner_class()

    def __init__(
        self,
        weights,
        capture_sizes=None,
        mode="piecewise",
        pad=None,
        warmup_runs=1,
        device=None,
        static_inputs=None,
    ):
        model = self.model
        if model is None:
            raise TypeError(
                "CudaGraphRunner needs a model: use runner_class(model), or the package's cudagraphs.CudaGraphRunner"
            )
        self.logger = logging.getLogger(model.name)
        if mode not in MODES:
            raise ValueError(f"{model.name}: mode {mode!r} is not one of {MODES}")
        if capture_sizes is None:
            capture_sizes = model.capture_sizes
        sizes = sorted({int(size) for size in capture_sizes})
        if sizes and sizes[0] < 1:
            raise ValueError(
                f"{model.name}: capture sizes must be positive, got {sizes[0]}"
            )
        self.weights = tuple(weights)
        self.capture_sizes = tuple(sizes)
        self.mode = mode
        self.pad = model.pad_by_default if pad is None else pad
        self.warmup_runs = warmup_runs
        self.device = (
            torch.device(device) if device is not None else _device_of(self.weights)
        )
        # Input position -> the caller's tensor the graphs use in place.
        self.static_inputs = _bind_static_inputs(
            model, static_inputs or {}, self.device
        )
        # Capture size -> _PiecewiseGraphs or _FullGraph, filled by capture() (lazily:
        # by the first call of each size, into the pool capture(lazy=True) made).
        self._graphs = {}
        self._lazy_pool = None
        # torch.cuda.graph empties the allocator's cache (and may collect garbage) as it
        # enters: before this runner's first graph only, not before every size's, whose
        # warm-up would otherwise allocate its memory from the driver again.
        self._cache_emptied = False

    @property
    def captured(self) -> bool:
        return bool(self._graphs) or self._lazy_pool is not None

    def capture(self, lazy=False) -> None:
        """Capture the graphs of every capture size, largest first, into one shared pool.

        Largest first: memory the pool holds for a large size is reused by smaller ones.
        Each size runs warmup_runs plain forwards first, so that lazy initialisation (kernel
        loading, library workspaces) happens outside the capture.

        lazy=True captures nothing now: each size is captured (the same way, into one
        pool) by the first call that maps to it, which takes that much longer.
        """
        name = self.model.name
        if self.captured:
            raise RuntimeError(
                f"{name}: the CUDA graphs are already captured; make a new runner to capture again"
            )
        if lazy and self.capture_sizes:
            self._lazy_pool = graph_pool_handle()
            self.logger.info(
                "%s: %s CUDA graphs of %d sizes (%d to %d) will be captured at each size's first call",
                name,
                self.mode,
                len(self.capture_sizes),
                self.capture_sizes[0],
                self.capture_sizes[-1],
            )
            return
        if not self.capture_sizes:
            self.logger.info(
                "%s: no capture sizes, nothing to capture; every call runs the plain forward",
                name,
            )
            return
        order = sorted(self.capture_sizes, reverse=True)
        self.logger.info(
            "%s: capturing %s CUDA graphs for %d sizes (%d down to %d) on %s",
            name,
            self.mode,
            len(order),
            order[0],
            order[-1],
            self.device,
        )
        started = time.perf_counter()
        graphs = self._capture_keeping_state(order, graph_pool_handle())
        # Only now: a failed capture leaves the runner on the plain forward.
        self._graphs = graphs
        self.logger.info(
            "%s: captured %d CUDA graphs for %d sizes in %.2f s",
            name,
            sum(g.graph_count for g in graphs.values()),
            len(graphs),
            time.perf_counter() - started,
        )

    def _capture_keeping_state(self, order, pool):
        """The graphs of each size in `order`, captured into `pool`. Capturing runs the
        forward: the caller's state (a KV cache, buffers) is saved before and put back.
        """
        saved_state = _save_state(self.model, self.weights, self.static_inputs)
        try:
            graphs = {size: self._capture_size(size, pool) for size in order}
        finally:
            _restore_state(saved_state)
        synchronize()
        return graphs

    def _capture_size(self, size, pool):
        """The graphs of one capture size (warm-up runs first), captured into `pool`."""
        model = self.model
        size_started = time.perf_counter()
        input_buffers = _allocate_input_buffers(
            model.inputs, size, self.device, self.static_inputs
        )
        if self.mode == "piecewise":
            size_graphs = _PiecewiseGraphs(
                model, self.weights, input_buffers, size, pool
            )
        else:
            size_graphs = _FullGraph(model, self.weights, input_buffers, size, pool)
        try:
            for _ in range(self.warmup_runs):
                model.forward(self.weights, *input_buffers)
            size_graphs.capture(collect_garbage=not self._cache_emptied)
            self._cache_emptied = True
        except Exception as error:
            raise RuntimeError(
                f"{model.name}: capturing the CUDA graphs of size {size} failed: {error}"
            ) from error
        self.logger.debug(
            "%s: captured size %d: %d graphs in %.3f s",
            model.name,
            size,
            size_graphs.graph_count,
            time.perf_counter() - size_started,
        )
        return size_graphs

    def _capture_lazily(self, size):
        """Capture one size at its first call (state kept, as capture() keeps it)."""
        started = time.perf_counter()
        size_graphs = self._capture_keeping_state([size], self._lazy_pool)[size]
        self._graphs[size] = size_graphs
        self.logger.info(
            "%s: captured the %s CUDA graphs of size %d at its first call in %.3f s",
            self.model.name,
            self.mode,
            size,
            time.perf_counter() - started,
        )
        return size_graphs

    def capture_size_for(self, size: int) -> int | None:
        """The capture size whose graphs serve a runtime size, or None: the plain forward."""
        if not self.captured:
            return None
        index = bisect_left(self.capture_sizes, size)
        if index == len(self.capture_sizes):
            return None  # above the largest capture size
        capture_size = self.capture_sizes[index]
        if capture_size != size and not self.pad:
            return None
        return capture_size

    def __call__(self, *inputs):
        """Run the forward on inputs as the package's model takes them (already checked).

        The outputs are valid until the next call at a size with the same capture size;
        .clone() them to keep them.
        """
        model = self.model
        _check_static_inputs(model, inputs, self.static_inputs)
        size = inputs[model.dispatch_input].size(model.dispatch_dim)
        capture_size = self.capture_size_for(size)
        if capture_size is None:
            return model.forward(self.weights, *inputs)
        size_graphs = self._graphs.get(capture_size)
        if size_graphs is None:
            size_graphs = self._capture_lazily(capture_size)
        if not _fits(model.inputs, inputs, size_graphs.input_buffers):
            # More sequences than the buffers hold: the plain forward.
            return model.forward(self.weights, *inputs)
        _copy_into_buffers(model.inputs, inputs, size_graphs.input_buffers)
        outputs = size_graphs.replay()
        if size == capture_size:
            return outputs
        return _slice_outputs(outputs, size, model.output_dispatch_dims)


class _PieceGraph:
    """The CUDA graph of one call of a compiled piece at one capture size."""

    def __init__(self, piece, cuda_graph, copied_args, outputs):
        self.piece = piece  # the piece module's name, checked at replay
        self.cuda_graph = cuda_graph
        # (position in the argument list, static buffer): arguments whose address is not fixed
        # (outputs of the eager splitting ops), copied into the buffer the graph reads.
        self.copied_args = copied_args
        self.outputs = outputs  # the static outputs the graph writes

    def replay(self, args):
        for position, buffer in self.copied_args:
            buffer.copy_(args[position])
        args.clear()  # Inductor's convention: the callee clears its argument list
        self.cuda_graph.replay()
        return self.outputs


class _PiecewiseGraphs:
    """One capture size in piecewise mode: a graph per piece call, splitting ops eager.

    The forward runs as usual with `select` returning a row of this object's methods in
    place of the compiled functions: the first run (capture) captures each piece call into
    a graph, later runs replay them in the same order.
    """

    def __init__(self, model, weights, input_buffers, size, pool):
        self.model = model
        self.weights = weights
        self.input_buffers = input_buffers
        self.size = size
        self.pool = pool
        # One per piece call, in the order the forward makes them.
        self.piece_graphs = []
        self.next_call = 0
        self.capturing = False
        # Tensors whose address stays the same from capture to every replay: weights, the
        # static input buffers and the static outputs of the pieces captured so far. A graph
        # reads them where they are, without a copy. Keyed by id(); the values keep them alive.
        self.fixed_tensors = {
            id(t): t for t in (*weights, *input_buffers) if isinstance(t, torch.Tensor)
        }
        self.row = model.variant(
            *(
                functools.partial(self.call_piece, piece)
                for piece in model.variant._fields
            )
        )

    @property
    def graph_count(self) -> int:
        return len(self.piece_graphs)

    def select(self, size):
        """The forward's `select`: this size's row, with the call order restarted."""
        if size != self.size:
            raise RuntimeError(
                f"{self.model.name}: graphs of size {self.size} asked for size {size}"
            )
        self.next_call = 0
        return self.row

    def capture(self, collect_garbage=True):
        # Before the first piece's graph only: a collection before each would be slow.
        self.collect_garbage = collect_garbage
        self.capturing = True
        try:
            self.model.forward(self.weights, *self.input_buffers, select=self.select)
        finally:
            self.capturing = False

    def replay(self):
        return self.model.forward(self.weights, *self.input_buffers, select=self.select)

    def call_piece(self, piece, args):
        if self.capturing:
            return self._capture_piece(piece, args)
        piece_graph = self.piece_graphs[self.next_call]
        if piece_graph.piece != piece:
            raise RuntimeError(
                f"{self.model.name}: piece call {self.next_call} is {piece}, captured as {piece_graph.piece}"
            )
        self.next_call += 1
        return piece_graph.replay(args)

    def _capture_piece(self, piece, args):
        compiled = getattr(self.model.select(self.size), piece)
        static_args = []
        copied_args = []
        for position, arg in enumerate(args):
            if isinstance(arg, torch.Tensor) and id(arg) not in self.fixed_tensors:
                arg = _static_copy(arg)
                copied_args.append((position, arg))
            # Ints (sizes) are baked into the graph: every replay has this same size.
            static_args.append(arg)
        args.clear()
        first = self.collect_garbage and not self.piece_graphs
        # A fresh list per run: the callee clears it, and the function stays re-runnable.
        cuda_graph, outputs = _capture_graph(
            lambda: compiled(list(static_args)), self.pool, collect_garbage=first
        )
        self.fixed_tensors.update(
            (id(t), t) for t in outputs if isinstance(t, torch.Tensor)
        )
        self.piece_graphs.append(
            _PieceGraph(piece, cuda_graph, tuple(copied_args), outputs)
        )
        self.next_call += 1
        return outputs


class _FullGraph:
    """One capture size in full mode: the whole forward, splitting ops included, as one graph."""

    def __init__(self, model, weights, input_buffers, size, pool):
        self.model = model
        self.weights = weights
        self.input_buffers = input_buffers
        self.size = size
        self.pool = pool
        self.cuda_graph = None
        self.outputs = None

    @property
    def graph_count(self) -> int:
        return 0 if self.cuda_graph is None else 1

    def capture(self, collect_garbage=True):
        self.cuda_graph, self.outputs = _capture_graph(
            lambda: self.model.forward(self.weights, *self.input_buffers),
            self.pool,
            collect_garbage=collect_garbage,
        )

    def replay(self):
        self.cuda_graph.replay()
        return self.outputs


def _capture_graph(run, pool, collect_garbage):
    """Capture what run() launches into a new CUDA graph; return the graph and run()'s outputs."""
    cuda_graph = CUDAGraph()
    with ExitStack() as stack:
        if not collect_garbage:
            stack.enter_context(_garbage_collection_skipped())
        with graph(cuda_graph, pool=pool):
            outputs = run()
    return cuda_graph, outputs


def _skip(*args, **kwargs):
    return 0


@contextmanager
def _garbage_collection_skipped():
    """gc.collect and torch.cuda.empty_cache as no-ops, as torch.cuda.graph calls them on entry."""
    collect, empty_cache = gc.collect, torch.cuda.empty_cache
    gc.collect = _skip
    torch.cuda.empty_cache = _skip
    try:
        yield
    finally:
        gc.collect = collect
        torch.cuda.empty_cache = empty_cache


def _device_of(weights):
    for weight in weights:
        if isinstance(weight, torch.Tensor):
            return weight.device
    return torch.device("cuda")


def _bind_static_inputs(model, given, device):
    """Check the tensors given for the static inputs; return position -> tensor."""
    names = [spec.name for spec in model.inputs if spec.static]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(
            f"{model.name}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not static inputs; "
            f"the static inputs are: {', '.join(names) or 'none'}"
        )
    missing = [name for name in names if name not in given]
    if missing:
        example = ", ".join(f"{name}={name}" for name in missing)
        raise TypeError(
            f"{model.name}: CUDA graphs use {', '.join(missing)} in place and need the tensor{'s' if len(missing) > 1 else ''} "
            f"they will write to; pass them to capture: model.capture(mode, {example})"
        )
    bound = {}
    for position, spec in enumerate(model.inputs):
        if not spec.static:
            continue
        tensor = given[spec.name]
        if (
            not isinstance(tensor, torch.Tensor)
            or tensor.dtype != spec.dtype
            or not _shape_matches(tensor.shape, spec.shape)
        ):
            found = (
                f"{tensor.dtype} {tuple(tensor.shape)}"
                if isinstance(tensor, torch.Tensor)
                else type(tensor).__name__
            )
            raise ValueError(
                f"{model.name}: static input {spec.name} must be {spec.dtype} {_shape_text(spec.shape)}, got {found}"
            )
        if tensor.device != torch.device(device) or not tensor.is_contiguous():
            raise ValueError(
                f"{model.name}: static input {spec.name} must be a contiguous tensor on {device}"
            )
        bound[position] = tensor
    return bound


def _shape_matches(shape, expected):
    """Whether a shape matches a spec's, None matching any size."""
    return len(shape) == len(expected) and all(
        want is None or want == got for got, want in zip(shape, expected)
    )


def _shape_text(shape):
    """(9, 4); a dim of any size as N: (2, N, 16)."""
    items = ["N" if extent is None else str(extent) for extent in shape]
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def _check_static_inputs(model, inputs, bound):
    """A call must pass the very tensors the graphs were captured on (they write them)."""
    for position, tensor in bound.items():
        value = inputs[position]
        if value.data_ptr() != tensor.data_ptr() or value.stride() != tensor.stride():
            raise ValueError(
                f"{model.name}: {model.inputs[position].name} is not the tensor the CUDA graphs were captured on; "
                "pass that tensor (the graphs write it in place), or capture a new runner for this one"
            )


def _save_state(model, weights, bound):
    """Copies (on the host) of the state the forward writes: capture runs the forward."""
    tensors = [weights[index] for index in model.mutated_weights]
    tensors += [
        tensor
        for position, tensor in bound.items()
        if model.inputs[position].name in model.mutated_inputs
    ]
    return [(tensor, tensor.to("cpu", copy=True)) for tensor in tensors]


def _restore_state(saved):
    for tensor, copy in saved:
        tensor.copy_(copy)


def padded_rows(spec, size):
    """The rows of an input's padded dim at a capture size: the size plus the input's extra
    rows, at most its declared maximum."""
    rows = size + spec.extra_rows
    return rows if spec.max_rows is None else min(rows, spec.max_rows)


def _allocate_input_buffers(specs, size, device, bound=None):
    """Static input buffers of one capture size: the padded dim takes the capture size
    (padded_rows). Static inputs are not buffers: the graphs use the bound tensors
    themselves. A buffer starts out as padding (its pad value where it has a number), so
    the forwards that warm-up and capture run see a batch of padding only: with
    slot_mapping -1 and seq_lens 0 they write no state and pass the ops' own checks."""
    bound = bound or {}
    buffers = []
    for position, spec in enumerate(specs):
        if position in bound:
            buffers.append(bound[position])
            continue
        shape = tuple(
            padded_rows(spec, size) if dim == spec.padded_dim else extent
            for dim, extent in enumerate(spec.shape)
        )
        buffer = torch.zeros(shape, dtype=spec.dtype, device=device)
        if spec.pad_value is not None and spec.pad_value != LAST:
            buffer.fill_(spec.pad_value)
        buffers.append(buffer)
    return tuple(buffers)


def _static_copy(tensor):
    """A buffer with the tensor's exact sizes and strides (compiled code checks strides)."""
    buffer = torch.empty_strided(
        tensor.size(), tensor.stride(), dtype=tensor.dtype, device=tensor.device
    )
    return buffer.copy_(tensor)


def _fits(specs, inputs, buffers):
    """Whether every padded input fits its buffer. Inputs padded along the token count
    always do; one sized by a count of its own (sequences) may not, if that count exceeds
    the token count."""
    for spec, value, buffer in zip(specs, inputs, buffers):
        dim = spec.padded_dim
        if not spec.static and dim is not None and value.size(dim) > buffer.size(dim):
            return False
    return True


def _copy_into_buffers(specs, inputs, buffers):
    """Copy the inputs into the static buffers and fill each one's padding: an input is
    narrowed by its own size along its padded dim (tokens, or sequences)."""
    for spec, value, buffer in zip(specs, inputs, buffers):
        if spec.static:
            continue  # the graphs use the caller's tensor itself
        dim = spec.padded_dim
        if dim is None:
            buffer.copy_(value)
            continue
        rows = value.size(dim)
        buffer.narrow(dim, 0, rows).copy_(value)
        padding = buffer.narrow(dim, rows, buffer.size(dim) - rows)
        if padding.numel() == 0:
            continue
        if spec.pad_value is not None and spec.pad_value != LAST:
            padding.fill_(spec.pad_value)
        elif rows == 0 or (spec.pad_value is None and buffer.is_floating_point()):
            padding.zero_()
        else:
            padding.copy_(value.narrow(dim, rows - 1, 1))  # broadcast along the padding


def _slice_outputs(outputs, size, output_dispatch_dims):
    """Cut each output back from the capture size to the runtime size (views: no copy)."""
    dims = iter(output_dispatch_dims)

    def cut(value):
        if isinstance(value, tuple):
            return tuple(cut(item) for item in value)
        if isinstance(value, list):
            return [cut(item) for item in value]
        if isinstance(value, dict):
            return {key: cut(item) for key, item in value.items()}
        dim = next(dims)
        return value if dim is None else value.narrow(dim, 0, size)

    return cut(outputs)
