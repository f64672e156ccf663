"""CUDA target: Inductor's Triton kernels captured as cubins with their launch metadata.

On CUDA, Inductor's wrapper module defines each kernel as
`name = async_compile.triton('name', '''triton source''', device_str='cuda')`; once the module
is loaded that global is a `CachingAutotuner` holding one compiled binary per candidate config
(`.compile_results`) and, after the first real call has autotuned, one launcher (`.launchers`).
Inductor launches them through `torch._C._StaticCudaLauncher` (a C extension of torch, no Triton
needed) when `config.use_static_triton_launcher` is on, which is the default.

This module, at transpile time:
- autotunes a compiled variant once on random inputs of the variant's hint size, so every
  kernel has exactly one launcher (`autotune_variant`);
- reads each kernel's cubin and everything the static launcher needs: the symbol name,
  num_warps, shared memory, the argument type string, which of the wrapper's arguments reach
  the cubin, and the grid expressions of the chosen config (`capture_triton_kernels`);
- gives the piece template, per kernel, a launcher function that computes the grid and
  launches the cubin (`launcher_context`; rewrite.py turns `kernel.run(...)` into its call).

Everything else in Inductor's CUDA `call` is torch: `torch.cuda._DeviceGuard`,
`torch.cuda.set_device`, `get_raw_stream` (= torch._C._cuda_getCurrentRawStream),
`empty_strided_cuda` (= torch._C._dynamo.guards._empty_strided_cuda), `reinterpret_tensor`,
`assert_size_stride`, and `extern_kernels.*` (cuBLAS through torch.mm / torch.addmm ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import libcst as cst

from .errors import TranspileError
from .rewrite import kernel_definitions


@dataclass
class TritonKernel:
    """One Triton kernel of a compiled variant, as the emitted package launches it."""

    name: str  # global name in Inductor's wrapper, e.g. "triton_per_fused_add_0"
    symbol: str  # the kernel's function name inside the cubin (Triton's fn.__name__)
    source: str  # the Triton source Inductor passed to async_compile.triton
    cubin: bytes
    num_warps: int
    shared: int  # bytes of dynamic shared memory
    arg_types: str  # one _StaticCudaLauncher type letter per cubin argument, scratch included
    def_args: list[str]  # the arguments the wrapper passes to `.run(...)`, in order
    call_args: list[str]  # the subset (of def_args) the cubin takes, in order
    scratch_args: int  # trailing null pointers Triton's ABI adds (global / profile scratch)
    grid_prefix: list[str]  # statements computing temporaries for the grid
    grid: tuple[str, str, str]  # grid_0, grid_1, grid_2 as Python expressions of def_args
    config: dict  # the chosen config: block sizes, num_warps, num_stages
    num_configs: int  # how many configs Inductor compiled before autotuning
    inductor_static: bool  # whether Inductor itself launched it statically
    arch: int | None  # compute capability the cubin was built for (90 for sm_90)
    n_regs: int | None = None
    n_spills: int | None = None
    cache_key: str = ""  # Triton cache folder the cubin came from
    metadata: dict = field(default_factory=dict)  # Triton's <symbol>.json, where found

    def describe(self) -> str:
        blocks = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.symbol}: {blocks}; shared={self.shared}, regs={self.n_regs}, spills={self.n_spills}"


# ---------------------------------------------------------------- the loaded module


def is_triton_autotuner(value) -> bool:
    """A CachingAutotuner (or subclass): what `async_compile.wait(globals())` leaves per kernel."""
    return all(hasattr(value, a) for a in ("launchers", "compile_results", "triton_meta", "inductor_meta"))


def materialize_inputs(fake_inputs, seed: int = 0):
    """Real random tensors of the fake inputs' hint sizes (ints stay ints)."""
    import torch
    from torch.fx.experimental import symbolic_shapes

    hint_int = getattr(symbolic_shapes, "size_hint", None) or symbolic_shapes.hint_int
    generator = torch.Generator(device="cpu").manual_seed(seed)
    real = []
    for value in fake_inputs:
        if isinstance(value, torch.SymInt):
            real.append(hint_int(value))
            continue
        if not isinstance(value, torch.Tensor):
            real.append(value)
            continue
        shape = [hint_int(d) for d in value.shape]
        stride = [hint_int(s) for s in value.stride()]
        size = 1 + sum((d - 1) * s for d, s in zip(shape, stride) if d > 0) if all(shape) else 0
        if value.dtype.is_floating_point or value.dtype.is_complex:
            flat = torch.randn(size, generator=generator, dtype=torch.float32).to(value.dtype)
        else:
            flat = torch.zeros(size, dtype=value.dtype)  # indices: zeros are always in range
        real.append(torch.as_strided(flat.to(value.device), shape, stride))
    return real


def autotune_variant(compiled_callable, fake_inputs) -> None:
    """Run the compiled `call` once so each CachingAutotuner benchmarks its configs and keeps one.

    Inductor autotunes lazily, at the first launch with real tensors; without this, kernels with
    several candidate configs (most reductions, 1-d pointwise kernels) have no chosen launcher.
    The sizes are the variant's hints, so a range variant is tuned for its hint size.
    """
    import torch

    args = materialize_inputs(fake_inputs)
    compiled_callable(list(args))
    torch.cuda.synchronize()


def capture_triton_kernels(module_globals: dict, num_configs: dict[str, int] | None = None) -> dict[str, TritonKernel]:
    """Cubin and launch metadata of every Triton kernel a loaded (and autotuned) wrapper holds."""
    kernels = {}
    for name, value in module_globals.items():
        if is_triton_autotuner(value):
            kernels[name] = _capture_one(name, value, (num_configs or {}).get(name))
    return kernels


def count_configs(module_globals: dict) -> dict[str, int]:
    """Before autotuning: how many compiled configs each kernel has."""
    return {name: len(value.compile_results) for name, value in module_globals.items() if is_triton_autotuner(value)}


def _capture_one(name: str, autotuner, num_configs: int | None) -> TritonKernel:
    from torch._inductor.runtime import triton_heuristics as th

    if len(autotuner.launchers) != 1:
        raise TranspileError(
            f"kernel {name} has {len(autotuner.launchers)} launchers; run the compiled graph once on real "
            "inputs (autotune_variant) before capturing"
        )
    launcher = autotuner.launchers[0]
    results = [r for r in autotuner.compile_results if r.config is launcher.config] or [
        r
        for r in autotuner.compile_results
        if th.triton_config_to_hashable(r.config) == th.triton_config_to_hashable(launcher.config)
    ]
    if len(results) != 1:
        raise TranspileError(f"kernel {name}: cannot tell which compiled config its launcher runs")
    result = results[0]
    device = autotuner.triton_meta.get("device", 0) or 0
    inductor_static = isinstance(result, th.StaticTritonCompileResult)
    if inductor_static:
        static = result.kernel
        def_args, none_args = _def_args(result, static.arg_names, static.declared_constexprs)
    else:
        # Inductor launched it through Triton: build the static description ourselves.
        compiled = result.kernel
        fn = compiled.src.fn
        def_args, none_args = _def_args(result, fn.arg_names, th.get_constexprs(fn))
        compiled._cubin_path = _cubin_path(th, device, compiled.hash, fn.__name__)
        static = th.StaticallyLaunchedCudaKernel(compiled)
    call_args = [
        arg for i, arg in enumerate(static.arg_names) if i not in static.full_constexprs and arg not in none_args
    ]
    missing = [a for a in call_args if a not in def_args]
    if missing:
        raise TranspileError(f"kernel {name}: cubin arguments {missing} are not among the launcher's arguments")
    scratch = int(bool(getattr(static, "has_global_scratch", False))) + int(
        bool(getattr(static, "has_profile_scratch", False))
    )
    if len(static.arg_tys) != len(call_args):
        raise TranspileError(f"kernel {name}: {len(static.arg_tys)} argument types for {len(call_args)} arguments")

    # A Triton template (a GEMM chosen by --autotune) takes its grid as extra launcher
    # arguments (_grid_0.._grid_2, after the kernel's own): def_args ends with them and the
    # grid expressions name them.
    grid = th.GridExpr.from_meta(result.inductor_meta, result.config)

    cache_key = th.triton_hash_to_path_key(static.hash)
    path = _cubin_path(th, device, static.hash, static.name)
    cubin = _read(path) or getattr(static, "cubin_raw", None)
    if not cubin:
        raise TranspileError(f"kernel {name}: cubin not found at {path}")
    metadata = {}
    meta_path = os.path.join(os.path.dirname(path), f"{static.name}.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as file:
            metadata = json.load(file)
    target = metadata.get("target") or {}
    config = dict(result.config.kwargs)
    config["num_warps"] = result.config.num_warps
    config["num_stages"] = result.config.num_stages
    return TritonKernel(
        name=name,
        symbol=static.name,
        source="",  # filled from the wrapper source by the caller
        cubin=cubin,
        num_warps=int(static.num_warps),
        shared=int(static.shared),
        arg_types=static.arg_tys + "O" * scratch,
        def_args=list(def_args),
        call_args=call_args,
        scratch_args=scratch,
        grid_prefix=list(grid.prefix),
        grid=(str(grid.x_grid), str(grid.y_grid), str(grid.z_grid)),
        config=config,
        num_configs=num_configs if num_configs is not None else len(autotuner.compile_results),
        inductor_static=inductor_static,
        arch=target.get("arch") if isinstance(target, dict) else None,
        n_regs=getattr(launcher, "n_regs", None),
        n_spills=getattr(launcher, "n_spills", None),
        cache_key=cache_key,
        metadata={k: v for k, v in metadata.items() if isinstance(v, (int, str, bool, float, list, dict, type(None)))},
    )


def _def_args(result, arg_names, constexprs):
    """The wrapper-facing argument list, exactly as Inductor's launcher code builds it."""
    _, def_args, none_args = result._get_arg_lists(arg_names, constexprs)
    return list(def_args), set(none_args)


def _cubin_path(th, device, kernel_hash: str, symbol: str) -> str:
    return os.path.join(th.triton_cache_dir(device), th.triton_hash_to_path_key(kernel_hash), f"{symbol}.cubin")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


# ---------------------------------------------------------------- emitting


def launcher_context(kernel: TritonKernel, function_name: str, handle_name: str) -> dict:
    """What templates/pieces/cuda_piece.py.jinja prints for one kernel: a handle and a launcher."""
    return {
        "function_name": function_name,
        "handle": handle_name,
        "file_name": function_name,
        "symbol": kernel.symbol,
        "num_warps": kernel.num_warps,
        "shared": kernel.shared,
        "arg_types": kernel.arg_types,
        "arch": kernel.arch,
        "params": kernel.def_args + ["stream"],
        "grid_lines": kernel.grid_prefix + [f"grid_{axis} = {expr}" for axis, expr in enumerate(kernel.grid)],
        "launch_args": kernel.call_args + ["None"] * kernel.scratch_args,
        "comment": kernel.describe(),
    }


def kernel_manifest(kernel: TritonKernel) -> dict:
    """The JSON written beside each cubin: what was chosen and why, for readers and tests.

    Triton's cache key is left out: it differs between otherwise identical transpiles."""
    return {
        "symbol": kernel.symbol,
        "num_warps": kernel.num_warps,
        "shared": kernel.shared,
        "arg_types": kernel.arg_types,
        "def_args": kernel.def_args,
        "call_args": kernel.call_args,
        "scratch_args": kernel.scratch_args,
        "grid_prefix": kernel.grid_prefix,
        "grid": list(kernel.grid),
        "config": kernel.config,
        "num_configs": kernel.num_configs,
        "inductor_static": kernel.inductor_static,
        "arch": kernel.arch,
        "n_regs": kernel.n_regs,
        "n_spills": kernel.n_spills,
    }


# ---------------------------------------------------------------- one variant, end to end


@dataclass
class CudaInductorOutput:
    source_code: str  # Inductor's wrapper module
    kernels: dict[str, TritonKernel]  # wrapper global name -> kernel
    align_indices: tuple[int, ...] = ()  # inputs to copy when not 16-byte aligned


def compile_cuda_variant(piece, dispatch_symbol, variant, symbol_ranges, session=None) -> CudaInductorOutput:
    """inductor.compile_variant, then settle each kernel on one config and capture its cubin.

    Runs under the CUDA target's compile_context; needs the GPU the package will run on
    (Triton compiles for its architecture). With a tuning session (tuning.py), the variant is
    compiled at the session's representative size, and each kernel with several configs
    launches the lockfile's (replay) or the fastest measured, which is recorded (tuning run).
    """
    from .inductor import compile_variant

    hint = session.benchmark_size if session is not None else None
    output = compile_variant(piece, dispatch_symbol, variant, symbol_ranges, hint)
    num_configs = count_configs(output.module_globals)
    measured = settle_triton_configs(output.module_globals, session) if session is not None else {}
    autotune_variant(output.compiled_callable, output.fake_inputs)
    for name, timings in measured.items():
        session.record("triton", name, config_label(output.module_globals[name].launchers[0].config), timings)
    kernels = capture_triton_kernels(output.module_globals, num_configs)
    sources = kernel_definitions(cst.parse_module(output.source_code), "triton")
    for name, kernel in kernels.items():
        kernel.source = sources.get(name, "")
    return CudaInductorOutput(source_code=output.source_code, kernels=kernels, align_indices=output.align_indices)


# ---------------------------------------------------------------- tuned configs


def config_label(config) -> str:
    """`R0_BLOCK=64, XBLOCK=8, num_warps=4, num_stages=1`: a Triton config as tuning.json names it."""
    parts = [f"{key}={value}" for key, value in sorted(config.kwargs.items())]
    parts += [f"num_warps={config.num_warps}", f"num_stages={config.num_stages}"]
    if getattr(config, "num_ctas", 1) not in (None, 1):
        parts.append(f"num_ctas={config.num_ctas}")
    if getattr(config, "maxnreg", None) is not None:
        parts.append(f"maxnreg={config.maxnreg}")
    return ", ".join(parts)


def settle_triton_configs(module_globals: dict, session) -> dict[str, dict[str, float]]:
    """Before the variant's first run: each kernel with several configs keeps the lockfile's
    one (replay: nothing is benchmarked), or is watched while Inductor benchmarks them all
    (tuning run). Returns the watched kernels' timings per config label, in ms, once run."""
    measured: dict[str, dict[str, float]] = {}
    for name, autotuner in sorted(module_globals.items()):
        if not is_triton_autotuner(autotuner):
            continue
        if not autotuner.launchers:
            autotuner.precompile()
        if len(autotuner.launchers) <= 1:
            continue
        labels = [config_label(launcher.config) for launcher in autotuner.launchers]
        chosen = session.choice("triton", name)
        if chosen is not None:
            kept = [launcher for launcher, label in zip(autotuner.launchers, labels) if label == chosen]
            if not kept:
                session.fail(
                    f"{session.tuning.source} chose {chosen!r} for {name} in {session.piece} {session.variant}, "
                    f"which is not among its configs ({'; '.join(labels)}); run with --autotune to tune again"
                )
            autotuner.launchers = kept[:1]
            continue
        timings = measured.setdefault(name, {})
        benchmark_all_configs = autotuner.benchmark_all_configs

        def watched(*args, _benchmark=benchmark_all_configs, _timings=timings, **kwargs):
            result = _benchmark(*args, **kwargs)
            _timings.update({config_label(launcher.config): float(ms) for launcher, ms in result.items()})
            return result

        autotuner.benchmark_all_configs = watched
    return measured
