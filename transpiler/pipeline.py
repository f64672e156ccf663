"""The stages in order, each handing the next a frozen result: prepare (load, capture,
split, group: prepare.SplitModel) -> compile (compiling.CompiledPieces) -> assemble
(ir.Package) -> render (emit.RenderedPackage). Each stage is its own module; this one
only connects them, and looks the target up once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import foreign_ops
from . import tensor_parallel as tp
from .assemble import assemble_package
from .compiling import compile_pieces
from .emit import RenderedPackage, render
from .options import Options, available_cores, package_name  # noqa: F401  (the command imports them from here too)
from .parallel import WorkerPool
from .piece_transfer import plan_of
from .prepare import distributed_context, prepare
from .targets import get_target


@dataclass
class Summary:
    pieces: int
    unique_pieces: int
    splitting_calls: int
    variants: int
    kernels: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what the transpiler decided on its own
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, in order


def transpile(
    options: Options, progress: Callable[[int], object] | None = None, pool: WorkerPool | None = None
) -> tuple[RenderedPackage, Summary]:
    """Everything but writing: returns the rendered package and a summary.

    `progress(total)` is called once with the number of compiles and returns a
    callable invoked after each one. `pool`: compile workers already started for these
    options (the command starts them before it imports torch); with -j N and no pool,
    they start here. Either way they capture the model while this process does, and
    are closed before this returns.
    """
    if pool is None and options.jobs > 1:
        pool = WorkerPool(options, options.jobs - 1)
    try:
        with distributed_context(options):
            return _transpile(options, progress, pool)
    finally:
        if pool:
            pool.close()


def _transpile(options: Options, progress, pool) -> tuple[RenderedPackage, Summary]:
    started = time.perf_counter()
    target = get_target(options.device)
    split = prepare(options, target)
    stages = {"capture": time.perf_counter() - started}
    # Before compiling: a capture size the variants do not cover is refused at once.
    graphs = target.graphs_context(split, options.capture_sizes)
    # Captured once: the pieces, packed, are what this process and every worker compile.
    plan = plan_of(split, options)
    if pool:
        pool.share(plan)
    compiled = compile_pieces(split, plan, target, options, progress, pool)
    notes = list(compiled.notes)
    if pool:
        pool.finish()  # workers exit while this process renders
        if pool.mismatched:
            notes.append(
                f"{pool.mismatched} compile worker(s) could not rebuild the pieces (an op they call is "
                "registered by MODEL.py itself, not by an --import module); this process compiled their share"
            )
    stages["compile"] = time.perf_counter() - started - sum(stages.values())

    package = assemble_package(split, compiled, target, options, graphs)
    rendered = render(package, target)
    stages["render"] = time.perf_counter() - started - sum(stages.values())
    summary = Summary(
        pieces=package.num_piece_calls,
        unique_pieces=len(package.pieces),
        splitting_calls=package.num_split_calls,
        variants=len(package.variants),
        kernels=sum(1 for p in package.pieces for k in p.kernels if not k.alias_of),
        seconds=time.perf_counter() - started,
        notes=notes
        + [
            f"splitting op {op} is made with torch.library.custom_op, whose first call imports torch._dynamo "
            "(about 1 s on a CPU, 4 s on a GPU machine); the package fills the wrapper's cache at load() so that "
            "it does not, but torch.library.Library define + impl needs no such step"
            for op in package.custom_op_splitting_ops
        ]
        + ([tp.describe(package.tensor_parallel)] if package.tensor_parallel else [])
        + foreign_ops.notes(
            split.captured, list(split.required_ops), [str(split.model_file.path.resolve().parent)], options.imports
        ),
        stages=stages,
    )
    return rendered, summary
