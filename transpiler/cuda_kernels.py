"""CUDA target (spike): Inductor's Triton kernels as shipped cubins, and `call` made standalone.

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
- rewrites `call` with libcst (`rewrite_cuda_call`), as rewrite.py does on CPU, plus:
  `kernel.run(a, b, xnumel, stream=stream0)` -> `prefix_kernel(a, b, xnumel, stream=stream0)`,
  a plain function of the emitted piece module that computes the grid and launches the cubin
  (templates/pieces/cuda_piece.py.jinja, templates/cuda_runtime.py.jinja).

Everything else in Inductor's CUDA `call` is torch: `torch.cuda._DeviceGuard`,
`torch.cuda.set_device`, `get_raw_stream` (= torch._C._cuda_getCurrentRawStream),
`empty_strided_cuda` (= torch._C._dynamo.guards._empty_strided_cuda), `reinterpret_tensor`,
`assert_size_stride`, and `extern_kernels.*` (cuBLAS through torch.mm / torch.addmm ...).
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from .errors import TranspileError
from .rewrite import (
    _BUILTINS,
    MODULE_NAMES,
    RUNTIME_NAMES,
    _argument_names,
    _extern_kernel_path,
    _find_call,
    _global_reads,
)

# Names a CUDA `call` reads that templates/cuda_runtime.py.jinja defines.
CUDA_RUNTIME_NAMES = frozenset({"align_inputs", "empty_strided_cuda", "get_raw_stream"})
# Keyword arguments of `kernel.run(...)` in Inductor's CUDA wrapper. `grid=` is what older
# Inductor passed; the launcher computes the grid itself, so it is dropped.
_RUN_KEYWORDS = frozenset({"stream", "grid"})


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


@dataclass
class RewrittenCudaCall:
    function_source: str
    triton_sources: dict[str, str]  # original kernel name -> Triton source
    runtime_names: list[str]  # names to import from the package runtime (as on CPU)
    cuda_runtime_names: list[str]  # names to import from the CUDA runtime
    module_names: list[str]  # modules to import (torch, math)


# ---------------------------------------------------------------- the wrapper's source


def triton_kernel_sources(module: cst.Module) -> dict[str, str]:
    """`name = async_compile.triton('name', '''source''', ...)` at module level."""
    kernels = {}
    pattern = m.Assign(
        targets=[m.AssignTarget(target=m.Name())],
        value=m.Call(func=m.Attribute(value=m.Name("async_compile"), attr=m.Name("triton"))),
    )
    for statement in module.body:
        if not m.matches(statement, m.SimpleStatementLine(body=[pattern])):
            continue
        assign = statement.body[0]
        name = assign.targets[0].target.value
        kernels[name] = ast.literal_eval(module.code_for_node(assign.value.args[1].value))
    return kernels


def _other_kernel_definitions(module: cst.Module) -> list[str]:
    """async_compile.<kind>(...) definitions this target cannot ship (cpp_pybinding, cuda, ...)."""
    found = []
    for statement in module.body:
        for assign in m.findall(statement, m.Assign(value=m.Call(func=m.Attribute(value=m.Name("async_compile"))))):
            kind = assign.value.func.attr.value
            if kind != "triton":
                found.append(f"{assign.targets[0].target.value} ({kind})")
    return found


class _CudaRenamer(cst.CSTTransformer):
    def __init__(self, names: dict[str, str], extern: dict[str, str], kernels: set[str]):
        self.names = names
        self.extern = extern
        self.kernels = kernels  # kernel names after renaming
        self.launches = 0

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        new = self.names.get(updated.value)
        return updated.with_changes(value=new) if new else updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute):
        if m.matches(updated, m.Attribute(value=m.Name("extern_kernels"))):
            return cst.parse_expression(self.extern[updated.attr.value])
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        func = updated.func
        if not (m.matches(func, m.Attribute(value=m.Name(), attr=m.Name("run"))) and func.value.value in self.kernels):
            return updated
        keywords = {a.keyword.value for a in updated.args if a.keyword is not None}
        unknown = keywords - _RUN_KEYWORDS
        if unknown or "stream" not in keywords:
            raise TranspileError(
                f"unexpected Inductor output: {func.value.value}.run(...) passes {sorted(keywords)}; "
                "expected positional kernel arguments and stream="
            )
        args = [a for a in updated.args if a.keyword is None or a.keyword.value == "stream"]
        args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        self.launches += 1
        return updated.with_changes(func=func.value, args=args)


def rewrite_cuda_call(
    source_code: str,
    function_name: str,
    input_names: list[str],
    kernel_prefix: str,
    align_indices: tuple[int, ...] = (),
) -> RewrittenCudaCall:
    """Inductor's CUDA `call` as a standalone function named `function_name`.

    Kernel globals get `kernel_prefix`; each `kernel.run(..., stream=s)` becomes a call of the
    launcher function of the same (prefixed) name that the piece module defines.
    `align_indices` are the inputs Inductor's wrapper copies when not 16-byte aligned (its
    kernels assume aligned pointers); the function starts with `align_inputs(args, ...)` for them.
    """
    module = cst.parse_module(source_code)
    triton_sources = triton_kernel_sources(module)
    others = _other_kernel_definitions(module)
    if others:
        raise TranspileError(
            f"Inductor's CUDA output builds kernels this target cannot ship: {', '.join(others)}; "
            "add the op to the splitting ops (--split-ops)"
        )
    call = _find_call(module)
    arguments = _argument_names(call)
    if len(arguments) != len(input_names):
        raise TranspileError(
            f"unexpected Inductor output: `call` takes {len(arguments)} arguments, the piece has {len(input_names)}"
        )
    existing = {n.value for n in m.findall(call, m.Name())}
    renames = {k: f"{kernel_prefix}{k}" for k in triton_sources}
    for old, new in zip(arguments, input_names):
        if new not in existing or new == old:
            renames[old] = new
    extern = {
        a.attr.value: _extern_kernel_path(a.attr.value)
        for a in m.findall(call, m.Attribute(value=m.Name("extern_kernels")))
    }
    prefixed = {f"{kernel_prefix}{k}" for k in triton_sources}
    renamer = _CudaRenamer(renames, extern, prefixed)
    renamed = call.visit(renamer)

    # Every use of a kernel must have been a launch: anything else (benchmark_all_configs,
    # .grid_fn, passing the autotuner around) has no counterpart in the emitted package.
    for node in m.findall(renamed, m.Attribute(value=m.Name())):
        if node.value.value in prefixed:
            raise TranspileError(f"unexpected Inductor output: {node.value.value}.{node.attr.value} is used")

    self_params = [p for p in renamed.params.params if p.name.value != "self"]
    body = renamed.body
    if align_indices:
        if [p.name.value for p in self_params] != ["args"]:
            raise TranspileError("unexpected Inductor output: `call` does not take `args`")
        statement = cst.parse_statement(f"align_inputs(args, {tuple(align_indices)!r})\n")
        body = body.with_changes(body=[statement, *body.body])
    function = renamed.with_changes(
        name=cst.Name(function_name),
        params=renamed.params.with_changes(params=self_params),
        body=body,
        leading_lines=[],
        decorators=[],
    )
    reads = _global_reads(function)
    unknown = sorted(reads - RUNTIME_NAMES - CUDA_RUNTIME_NAMES - MODULE_NAMES - _BUILTINS - prefixed)
    if unknown:
        raise TranspileError(
            f"Inductor's output uses {', '.join(unknown)}, which the emitted runtime does not provide; "
            "add the op that needs it to the splitting ops (--split-ops)"
        )
    return RewrittenCudaCall(
        function_source=cst.Module(body=[function]).code,
        triton_sources=triton_sources,
        runtime_names=sorted(reads & RUNTIME_NAMES),
        cuda_runtime_names=sorted(reads & CUDA_RUNTIME_NAMES),
        module_names=sorted(reads & MODULE_NAMES),
    )


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

    grid = th.GridExpr.from_meta(result.inductor_meta, result.config)
    if "extra_launcher_args" in result.inductor_meta:
        raise TranspileError(f"kernel {name} takes extra launcher arguments, which this target does not support yet")

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
    """The JSON written beside each cubin: what was chosen and why, for readers and tests."""
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
        "cache_key": kernel.cache_key,
    }


# ---------------------------------------------------------------- one variant, end to end


@dataclass
class CudaInductorOutput:
    source_code: str  # Inductor's wrapper module
    kernels: dict[str, TritonKernel]  # wrapper global name -> kernel
    align_indices: tuple[int, ...] = ()  # inputs to copy when not 16-byte aligned


def compile_cuda_variant(piece, dispatch_symbol, variant, symbol_ranges) -> CudaInductorOutput:
    """inductor.compile_variant, then settle each kernel on one config and capture its cubin.

    Runs under inductor.inductor_config("cuda", ...); needs the GPU the package will run on
    (Triton compiles for its architecture).
    """
    from .inductor import compile_variant

    output = compile_variant(piece, dispatch_symbol, variant, symbol_ranges)
    num_configs = count_configs(output.module_globals)
    autotune_variant(output.compiled_callable, output.fake_inputs)
    kernels = capture_triton_kernels(output.module_globals, num_configs)
    sources = triton_kernel_sources(cst.parse_module(output.source_code))
    for name, kernel in kernels.items():
        kernel.source = sources.get(name, "")
    return CudaInductorOutput(source_code=output.source_code, kernels=kernels, align_indices=output.align_indices)
