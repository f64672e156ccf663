"""The compile stage: every piece group for every variant, on this process and the
compile workers (parallel.py); a range on which Inductor specializes is split and
compiled again. Returns CompiledPieces, which the package is assembled from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .inductor import RangeSpecialized, inductor_config
from .ir import CompiledVariant, UniquePiece, Variant
from .options import Options, available_cores
from .piece_transfer import CompilePlan
from .prepare import PieceGroup, SplitModel
from .ranges import make_variants
from .targets import Target
from .tuning import open_session, tuned

# How many times a range may be split at Inductor's guards before the transpile gives up.
_MAX_RANGE_SPLITS = 8


@dataclass(frozen=True)
class CompiledPieces:
    """Every piece group compiled for every variant: the compile stage's result."""

    variants: tuple[Variant, ...]  # the final ones: ranges split where Inductor specialized
    pieces: tuple[UniquePiece, ...]  # one per group, in the groups' order
    notes: tuple[str, ...]  # a line per range split


# (group index, variant): one compile, in this process or a worker.
Task = tuple[int, Variant]


def compile_pieces(
    split: SplitModel, plan: CompilePlan, target: Target, options: Options, progress=None, pool=None
) -> CompiledPieces:
    """Compile every piece for every variant. A range on which Inductor specializes (a guard
    on the dispatch size that fails inside it) is split where the guard flips and compiled
    again, half by half; a note says so."""
    notes: list[str] = []
    variants = split.variants
    for _ in range(_MAX_RANGE_SPLITS + 1):
        try:
            pieces = _compile_variants(split, plan, target, variants, options, progress, pool)
            return CompiledPieces(variants=variants, pieces=pieces, notes=tuple(notes))
        except RangeSpecialized as specialized:
            last_error = specialized
            old = specialized.variant
            parts = specialized.parts
            if len(parts) < 2:
                raise
            position = variants.index(old)
            variants = variants[:position] + make_variants(parts, []) + variants[position + 1 :]
            notes.append(
                f"range {old.range.label()} split into {', '.join(p.label() for p in parts)} "
                f"(Inductor specialized it on `{specialized.guard}`)"
            )
    raise last_error


def compile_planned(
    plan: CompilePlan, target: Target, options: Options, group_index: int, variant: Variant
) -> CompiledVariant:
    """One piece group for one variant, from the plan (in this process or a pool worker)."""
    module_name, input_names = plan.groups[group_index]
    group = _PlannedGroup(module_name, input_names, plan.graph(group_index))
    session = open_session(plan.tuning, module_name, variant, plan.symbol_ranges, plan.dispatch_symbol)
    patches = target.inductor_patches(options, tuned=session is not None)
    with inductor_config(patches, compile_threads_per_process(options.jobs)), tuned(session):
        compiled = target.compile_variant(group, variant, plan.dispatch_symbol, plan.symbol_ranges, session)
    return dataclasses.replace(compiled, tuning=session.finish() if session is not None else None)


@dataclass(frozen=True)
class _PlannedGroup:
    """What a target's compile_variant reads of a prepare.PieceGroup, rebuilt from a plan."""

    module_name: str
    input_names: tuple[str, ...]
    graph_module: object  # torch.fx.GraphModule

    @property
    def compiled(self):
        return self


def compile_threads_per_process(jobs: int) -> int | None:
    """With -j N, each process builds kernels on its share of the cores (Inductor's
    default, one thread or Triton process per core, in every process would oversubscribe)."""
    if jobs <= 1:
        return None
    return max(1, available_cores() // jobs)


def _compile_variants(
    split: SplitModel, plan: CompilePlan, target: Target, variants, options: Options, progress, pool=None
):
    tasks: list[Task] = [(index, variant) for index in range(len(split.groups)) for variant in variants]
    step = progress(len(tasks)) if progress else None
    compile_here: Callable[[Task], CompiledVariant] = lambda task: compile_planned(plan, target, options, *task)
    if pool:
        results = pool.compile(tasks, compile_here, step)
    else:
        results = []
        for task in tasks:
            results.append(compile_here(task))
            if step:
                step()
    # Deduplicated in task order, whatever order the compiles finished in.
    compiled_of = dict(zip(((index, variant.name) for index, variant in tasks), results))
    return tuple(
        _unique_piece(group, [compiled_of[index, variant.name] for variant in variants])
        for index, group in enumerate(split.groups)
    )


def _unique_piece(group: PieceGroup, compiled: list[CompiledVariant]) -> UniquePiece:
    """The group's module: its variants, each emitted once (ranges often compile to the same
    code: the others are bound to the first), and each kernel source shipped once."""
    first_kernel_with_source: dict[str, str] = {}
    first_variant_with_code: dict[str, str] = {}
    variants = []
    for variant in compiled:
        name = variant.variant.name
        alias_of = first_variant_with_code.setdefault(variant.canonical_code, name)
        if alias_of != name:
            variants.append(dataclasses.replace(variant, alias_of=alias_of, kernels=[]))
            continue
        kernels = []
        for kernel in variant.kernels:
            first = first_kernel_with_source.setdefault(kernel.identity(), kernel.name)
            kernels.append(dataclasses.replace(kernel, alias_of=None if first == kernel.name else first))
        variants.append(dataclasses.replace(variant, alias_of=None, kernels=kernels))
    return UniquePiece(
        module_name=group.module_name,
        input_names=group.input_names,
        num_outputs=len(group.compiled.outputs),
        variants=tuple(variants),
        call_count=len(group.instances),
    )
