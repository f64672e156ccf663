"""`transpile MODEL.py -o OUT`: the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import logging
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from .errors import TranspileError
from .targets import DEFAULT_DEVICE, DEVICES
from .targets.cpu_isa import CPU_ISAS, DEFAULT_CPU_ISA

EXIT_USAGE = 2
EXIT_DIFFERS = 1


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transpiler")
    except PackageNotFoundError:  # run from a checkout that is not installed
        from . import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transpile",
        description="Turn a PyTorch model into a self-contained Python package of readable, precompiled source.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "model", type=Path, nargs="?", metavar="MODEL.py", help="file defining `model` and `example_inputs`"
    )
    parser.add_argument(
        "--hf",
        type=Path,
        metavar="FOLDER",
        help="instead of MODEL.py: a Hugging Face decoder's folder (config.json, safetensors if any) in serving form "
        "(paged KV cache, flattened batch; transpiler/hf_serving.py); implies --import serving_ops and --checkpoint-prefix decoder.",
    )
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT", help="folder to write OUT/NAME/ into")
    parser.add_argument("--name", help="package name (default: MODEL.py's file stem)")
    parser.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        choices=DEVICES,
        help="target device (default: cpu); cuda needs the GPU the package will run on",
    )
    parser.add_argument("--split-ops", metavar="A,B", help="ops to split at, e.g. aten::scaled_dot_product_attention")
    parser.add_argument(
        "--ranges", metavar="LO-HI,...", help="ranges of the dispatch dim, compiled with symbolic shapes"
    )
    parser.add_argument("--sizes", metavar="N,...", help="exact sizes compiled with static shapes (win over ranges)")
    parser.add_argument(
        "--dispatch-dim", metavar="INPUT:DIM", help="input (name or index) and dim whose size dispatches"
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="module to import first (registers custom ops); the package imports it too",
    )
    parser.add_argument(
        "--cpu-isa",
        default=DEFAULT_CPU_ISA,
        choices=list(CPU_ISAS),
        help="x86-64 level the C++ kernels are built for (default: avx2, portable and reproducible)",
    )
    parser.add_argument(
        "--capture-sizes",
        metavar="N,...",
        help="sizes the CUDA-graph wrappers capture (cuda; default: 1, 2, 4, then multiples of 8 up to 512)",
    )
    parser.add_argument(
        "--static-inputs",
        metavar="A,B",
        help="inputs CUDA graphs use by reference (persistent state such as a KV cache); inputs the forward writes in place always are",
    )
    parser.add_argument(
        "--weights",
        choices=["embed", "none"],
        default="embed",
        help="embed the weights in the package (default), or ship none: load(weights=...) then takes a checkpoint",
    )
    parser.add_argument(
        "--checkpoint-prefix",
        default="",
        metavar="PREFIX",
        help="the prefix a checkpoint's keys lack (e.g. 'decoder.' for a wrapper around a Hugging Face model)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="compile on N processes, this one and N-1 workers that compile the pieces it captured (default: the number of cores; 1: in this process only)",
    )
    parser.add_argument(
        "--autotune",
        action="store_true",
        help="benchmark Inductor's choices (GEMM backends; on cuda also Triton configs) and record them in OUT/NAME/tuning.json",
    )
    parser.add_argument(
        "--tuning",
        type=Path,
        metavar="FILE",
        help="replay the choices of this tuning.json without benchmarking (default: OUT/NAME/tuning.json if present)",
    )
    parser.add_argument(
        "--tensor-parallel",
        metavar="N",
        help="the package is one rank of the model split across N ranks (MODEL.py sizes its shards by "
        "torch.distributed.get_world_size(); load() needs a process group of N ranks and a checkpoint)",
    )
    parser.add_argument(
        "--matvec",
        choices=["reduction", "library"],
        default="reduction",
        help="cuda: products of one row (an exact size of 1, as in decode) as reductions Inductor fuses with "
        "their neighbours (default), or every product through the GEMM library (cuBLAS)",
    )
    parser.add_argument("--check", action="store_true", help="compare with the existing OUT/NAME instead of writing")
    parser.add_argument(
        "--wheel",
        type=Path,
        default=None,
        metavar="DIST",
        help="also build a wheel of the written package into DIST (installable with pip)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="show tracebacks and compiler logs")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


def _progress_factory(quiet: bool, console):
    if quiet:
        return None

    def start(total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc="compiling pieces x variants", unit="compile", file=console, leave=False)

        def step():
            bar.update(1)
            if bar.n == bar.total:
                bar.close()

        return step

    return start


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Silenced for this call only: a caller in the same process (a test, a script) keeps its logs.
    logging_level = logging.root.manager.disable
    try:
        with warnings.catch_warnings():
            if not args.verbose:
                warnings.filterwarnings("ignore")
                logging.disable(logging.CRITICAL)
            return _main(args)
    finally:
        logging.disable(logging_level)


def _main(args) -> int:
    console, console_out = sys.stderr, sys.stdout
    # torch prints graphs and hints of its own while exporting; without -v only our
    # own lines reach the terminal.
    chatter = io.StringIO()
    quiet_torch = contextlib.nullcontext() if args.verbose else contextlib.ExitStack()
    if not args.verbose:
        quiet_torch.enter_context(contextlib.redirect_stderr(chatter))
        quiet_torch.enter_context(contextlib.redirect_stdout(chatter))
    try:
        with quiet_torch:
            return _run(args, console, console_out)
    except TranspileError as error:
        if args.verbose:
            traceback.print_exc()
        print(f"transpile: error: {error}", file=console)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("transpile: interrupted; nothing was written", file=console)
        return 130


def _jobs(requested: int | None) -> int:
    if requested is None:
        from .options import available_cores

        return available_cores()
    if requested < 1:
        raise TranspileError(f"-j {requested}: give a number of worker processes, 1 or more")
    return requested


def _run(args, console, console_out) -> int:
    # Imported here so that `transpile --help` and argument errors answer at once.
    from . import options as parse
    from .options import Options, package_name
    from .parallel import WorkerPool
    from .targets import parse_device
    from .targets.cpu_isa import parse_cpu_isa

    if (args.model is None) == (args.hf is None):
        raise TranspileError("pass MODEL.py or --hf FOLDER (one of them)")
    if args.hf is not None:
        args.imports = args.imports if "serving_ops" in args.imports else [*args.imports, "serving_ops"]
        args.checkpoint_prefix = args.checkpoint_prefix or "decoder."
    # Every option parsed here, once, into the typed values the stages take.
    options = Options(
        model_path=args.hf if args.hf is not None else args.model,
        hf=args.hf is not None,
        name=args.name,
        device=parse_device(args.device),
        split_ops=parse.parse_names(args.split_ops) if args.split_ops else None,
        ranges=parse.parse_ranges(args.ranges),
        sizes=parse.parse_sizes(args.sizes),
        dispatch_dim=args.dispatch_dim,
        imports=tuple(args.imports),
        cpu_isa=parse_cpu_isa(args.cpu_isa),
        capture_sizes=parse.parse_capture_sizes(args.capture_sizes),
        static_inputs=parse.parse_names(args.static_inputs),
        weights=parse.parse_weights(args.weights),
        checkpoint_prefix=args.checkpoint_prefix,
        # Benchmarks taken in parallel processes would time each other: --autotune runs alone unless -j says otherwise.
        jobs=1 if args.autotune and args.jobs is None else _jobs(args.jobs),
        autotune=args.autotune,
        tuning=args.tuning,
        tensor_parallel=parse.parse_world_size(args.tensor_parallel),
        matvec=args.matvec,
    )
    target = args.out / package_name(options)
    if args.check and args.wheel is not None:
        raise TranspileError("--wheel with --check: --check writes nothing to build a wheel of; drop one")
    if args.check and not target.is_dir():
        raise TranspileError(f"--check: {target} does not exist; run without --check to create it")
    # A package tuned before keeps its choices: its lockfile is replayed unless --autotune.
    if options.tuning is None and not options.autotune and (target / "tuning.json").is_file():
        options = dataclasses.replace(options, tuning=target / "tuning.json")
    # Compile workers start before this process imports torch, so that their start-up
    # (import torch, capture the model) overlaps this process's own.
    pool = WorkerPool(options, options.jobs - 1) if options.jobs > 1 else None
    try:
        from .pipeline import transpile
        from .treediff import diff_trees
        from .write import check_writable, materialize_to, write_package

        if not args.check:
            check_writable(args.out)
        rendered, summary = transpile(options, progress=_progress_factory(args.quiet, console), pool=pool)
    finally:
        if pool:
            pool.close()

    if args.check:
        with tempfile.TemporaryDirectory(prefix="transpile-check-") as scratch:
            fresh = Path(scratch) / target.name
            materialize_to(rendered, fresh)
            differences = diff_trees(target, fresh)
        if differences:
            print(f"transpile: {target} differs from a fresh transpile:", file=console)
            for line in differences[:20]:
                print(f"  {line}", file=console)
            if len(differences) > 20:
                print(f"  ... and {len(differences) - 20} more", file=console)
            return EXIT_DIFFERS
        if not args.quiet:
            print(f"{target} is up to date", file=console_out)
        return 0

    written = time.perf_counter()
    write_package(rendered, target)
    stages = {**summary.stages, "write": time.perf_counter() - written}
    wheel = None
    if args.wheel is not None:
        from .package_wheel import build_wheel

        wheel = build_wheel(target, args.wheel)
    if not args.quiet:
        message = (
            f"wrote {target}: {summary.pieces} piece calls ({summary.unique_pieces} unique), "
            f"{summary.splitting_calls} splitting-op calls, {summary.variants} variants, "
            f"{summary.kernels} kernels in {summary.seconds + stages['write']:.1f} s"
        )
        print(message, file=console_out)
        print("  time: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in stages.items()), file=console_out)
        for note in summary.notes:
            print(f"  note: {note}", file=console_out)
        if wheel is not None:
            print(f"wrote {wheel}", file=console_out)
    return 0


def command() -> int:
    """The `transpile` executable: main(), then an exit that does not collect the garbage
    of a process about to end (torch's graphs and caches: about 1.5 s)."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(command())
