"""The typed intermediate model passed between stages, and rendered by the templates.

Everything a template prints is computed here or in the stage that fills these
classes: templates only loop and print.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:  # for annotations only: this module stays free of torch
    import torch

    from .cudagraphs import CudaGraphsContext
    from .exports import Exports
    from .foreign_ops import RequiredOp
    from .targets.cpu_isa import CpuIsa


@dataclass(frozen=True, order=True)
class SizeRange:
    """A closed interval of the dispatch dimension; `hi` None means unbounded."""

    lo: int
    hi: int | None

    @property
    def is_exact(self) -> bool:
        return self.hi == self.lo

    def __contains__(self, size: int) -> bool:
        return self.lo <= size and (self.hi is None or size <= self.hi)

    def label(self) -> str:
        return f"{self.lo}-{'max' if self.hi is None else self.hi}"


@dataclass(frozen=True)
class Variant:
    """One compiled form of every piece: an exact size (static shapes) or a range."""

    name: str  # "size_8" or "range_1_16": the function name in each piece module
    range: SizeRange
    static: bool  # compiled with static shapes (an exact size from --sizes)


@dataclass(frozen=True)
class DispatchDim:
    input_index: int
    input_name: str
    dim: int
    lo: int
    hi: int | None  # None: unbounded above


@dataclass(frozen=True)
class TensorSpec:
    """What the package checks about one user input before running."""

    name: str
    dtype: str  # "torch.float32"
    shape: tuple[int | None, ...]  # None where the dim is dynamic


@dataclass
class Kernel:
    """A compiled kernel: its global name in the piece module and its source. Each kind
    (targets/cpu.py's CppKernel, targets/cuda.py's CubinKernel) names the template of the
    piece module that loads it, the files it ships and what that module imports for it,
    as torch.fx's CodeGen subclasses override a few named hooks."""

    name: str  # e.g. "range_1_16_cpp_fused_add_0"
    source: str  # the C++ the binary was built from, or the Triton source
    alias_of: str | None = None  # an earlier kernel of the piece with the same source

    piece_template: ClassVar[str]  # the template of a piece module whose kernels are of this kind

    def identity(self) -> str:
        """Equal for kernels that are interchangeable (then shipped once)."""
        return self.source

    def files(self, folder: str) -> tuple[dict[str, str], dict[str, str | bytes]]:
        """Text files and binaries (a path to copy, or bytes) of this kernel, once shipped."""
        raise NotImplementedError

    @classmethod
    def piece_context(cls, piece: UniquePiece, shipped: list[Kernel]) -> dict[str, object]:
        """What the piece template prints about the kernels: the names it imports from the
        package runtime, and what it defines for each kernel."""
        raise NotImplementedError


@dataclass
class CompiledVariant:
    variant: Variant
    canonical_code: str  # the code with variant-neutral names: equal means interchangeable
    function_source: str  # `def range_1_16(args): ...`, standalone
    kernels: list[Kernel]
    runtime_names: list[str]  # names the function needs from the package runtime
    module_names: list[str]  # modules it needs imported (torch, math)
    target_runtime_names: list[str] = field(default_factory=list)  # from the target's runtime module (cuda_runtime)
    alias_of: str | None = None  # an earlier variant of the piece with the same code
    tuning: dict[str, object] | None = None  # tuned transpiles: this variant's lockfile entry (tuning.py)


@dataclass
class SourceLines:
    """Lines of MODEL.py (or a library file) that a piece or call comes from."""

    path: str  # relative: to MODEL.py's folder, or to the sys.path entry holding it
    lines: tuple[int, ...]

    def render(self) -> str:
        spans: list[str] = []
        start = prev = None
        for line in self.lines:
            if prev is not None and line == prev + 1:
                prev = line
                continue
            if start is not None:
                spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = line
        if start is not None:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
        return f"{self.path}:{','.join(spans)}"


@dataclass(frozen=True)
class UniquePiece:
    """A compiled piece, emitted once and called from every place it stands."""

    module_name: str  # "piece_0"
    input_names: tuple[str, ...]  # the names Inductor's arguments are renamed to
    num_outputs: int
    variants: tuple[CompiledVariant, ...]
    call_count: int

    @property
    def kernels(self) -> list[Kernel]:
        return [k for v in self.variants for k in v.kernels]


@dataclass
class StitchLine:
    """One statement of the stitching function, with the comment above it."""

    comment: str | None
    code: str
    deletes: list[str]  # values whose last use is this statement


@dataclass
class Stitch:
    params: list[str]  # user input names, in forward's order
    weight_names: list[str]  # unpacked from the weights tuple, in order
    dispatch_expr: str  # e.g. "input_ids.size(1)"
    lines: list[StitchLine]
    return_expr: str


@dataclass
class Weight:
    name: str  # the placeholder name used in the stitching function
    key: str  # state-dict key (the file's tensor name)
    user_supplied: bool  # a parameter or buffer that `load(weights=...)` may replace


@dataclass(frozen=True)
class Shard:
    """How one checkpoint tensor is split across the tensor-parallel ranks."""

    key: str  # state-dict key
    dtype: str  # "torch.float32"
    rank_shape: tuple[int, ...]  # what each rank holds
    dim: int | None  # split into N equal contiguous blocks along this dim; None: replicated

    def full_shape(self, world_size: int) -> tuple[int, ...]:
        if self.dim is None:
            return self.rank_shape
        return tuple(size * world_size if axis == self.dim else size for axis, size in enumerate(self.rank_shape))


@dataclass(frozen=True)
class TensorParallel:
    """A package that is one rank of a model split across `world_size` ranks."""

    world_size: int
    group_name: str  # the name compiled collectives use; load() registers the process group under it
    shards: tuple[Shard, ...]  # every checkpoint tensor, in the stitching function's order
    collectives: tuple[tuple[str, int], ...]  # (op, calls per forward), in first-use order


@dataclass(frozen=True)
class State:
    """What the forward writes in place, and what CUDA graphs must use by reference."""

    mutated_inputs: tuple[str, ...] = ()  # user inputs written in place
    mutated_weights: tuple[str, ...] = ()  # state-dict keys of buffers written in place
    writers: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (input or key, ops that write it)
    static_inputs: tuple[str, ...] = ()  # mutated inputs and those declared persistent
    pad_values: tuple[tuple[str, float | int | str], ...] = ()  # (input, value of padded positions, or "last")

    @property
    def mutated(self) -> bool:
        return bool(self.mutated_inputs or self.mutated_weights)


@dataclass(frozen=True)
class Package:
    """All that the emitted package contains, before rendering: the last stage's result."""

    name: str
    model_file: str  # MODEL.py's file name
    model_sha256: str
    device: str
    cpu_isa: CpuIsa  # --cpu-isa
    torch_version: str
    python_version: str
    imports: tuple[str, ...]
    split_ops: tuple[str, ...]
    dispatch: DispatchDim
    variants: tuple[Variant, ...]
    inputs: tuple[TensorSpec, ...]
    weights: tuple[Weight, ...]
    weight_tensors: dict[str, torch.Tensor]  # key -> tensor, written to weights.safetensors
    pieces: tuple[UniquePiece, ...]
    stitch: Stitch
    num_piece_calls: int
    num_split_calls: int
    state: State = State()
    ships_ops: bool = False  # the package defines transpile::sdpa (ops.py)
    weights_embedded: bool = True  # --weights embed (or none: load(weights=...) required)
    checkpoint_prefix: str = ""  # state-dict key = prefix + checkpoint key (--checkpoint-prefix)
    custom_op_splitting_ops: tuple[str, ...] = ()  # made with torch.library.custom_op
    gpu: dict[str, str | int] = field(
        default_factory=dict
    )  # the target's fingerprint (cuda: arch, cuda and triton versions)
    cuda_graphs: CudaGraphsContext | None = None  # cuda: the context of the emitted cudagraphs.py
    tuning: str | None = None  # tuned transpiles: the text of tuning.json
    tensor_parallel: TensorParallel | None = None  # --tensor-parallel N
    required_ops: tuple[RequiredOp, ...] = ()  # ops from outside torch: the modules load() imports
    exports: Exports | None = None  # names MODEL.py asks __init__.py to re-export

    @property
    def exact_variants(self) -> list[Variant]:
        return [v for v in self.variants if v.static]

    @property
    def range_variants(self) -> list[Variant]:
        return [v for v in self.variants if not v.static]
