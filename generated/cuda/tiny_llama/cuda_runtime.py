"""CUDA runtime of a transpiled package: loads the prebuilt Triton kernels (cubins) and launches them.

Uses torch alone: cubins are loaded and launched through torch._C._StaticCudaLauncher, the
C launcher Inductor itself uses, so neither Triton nor torch._inductor is imported, and
nothing is compiled when the package runs.
Copied verbatim into every package from transpiler/runtime/ by transpile; do not edit.
"""

import importlib.metadata
from pathlib import Path

import torch

# What Inductor's CUDA wrapper code calls, bound to torch's C functions.
get_raw_stream = torch._C._cuda_getCurrentRawStream
empty_strided_cuda = torch._C._dynamo.guards._empty_strided_cuda

PACKAGE_DIR = Path(__file__).resolve().parent
KERNEL_DIR = PACKAGE_DIR / "kernels"

_launcher = torch._C._StaticCudaLauncher
_get_device = torch._C._cuda_getDevice


class CudaMismatch(RuntimeError):
    """The package's kernels were built for another GPU or torch."""


def check_gpu(expected: dict) -> None:
    """Refuse cubins built for another GPU architecture, CUDA or Triton."""
    if not torch.cuda.is_available():
        raise CudaMismatch(f"{PACKAGE_DIR.name} runs on a CUDA GPU and none is visible")
    major, minor = torch.cuda.get_device_capability()
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None  # the package does not need Triton; nothing to compare
    found = {"arch": major * 10 + minor, "cuda": torch.version.cuda, "triton": triton}
    for key in ("arch", "cuda", "triton"):
        if found[key] is not None and found[key] != expected[key]:
            raise CudaMismatch(
                f"{PACKAGE_DIR.name} was built for {key} {expected[key]}, found {found[key]}; "
                "transpile the model again on this machine"
            )


class TritonKernel:
    """One prebuilt Triton kernel: its cubin, loaded once per device on first launch."""

    __slots__ = (
        "arch",
        "arg_types",
        "functions",
        "modules",
        "num_warps",
        "path",
        "shared",
        "symbol",
    )

    def __init__(
        self, path: Path, symbol: str, num_warps: int, shared: int, arg_types: str, arch
    ):
        self.path = path
        self.symbol = symbol
        self.num_warps = num_warps
        self.shared = shared
        self.arg_types = arg_types
        self.arch = arch
        self.functions = {}  # device index -> CUfunction handle
        # device index -> CUmodule handle (None where torch does not return it)
        self.modules = {}

    def _load(self, device: int) -> int:
        if self.arch is not None:
            major, minor = torch.cuda.get_device_capability(device)
            if major * 10 + minor != self.arch:
                raise CudaMismatch(
                    f"{self.path.name} was built for sm_{self.arch}, GPU {device} is sm_{major}{minor}; "
                    "transpile the model again on this GPU"
                )
        if not self.path.is_file():
            raise CudaMismatch(
                f"kernel binary {self.path} is missing; transpile the model again"
            )
        loaded = _launcher._load_kernel(
            str(self.path), self.symbol, self.shared, device
        )
        # torch >= 2.12 returns (module, function, n_regs, n_spills); earlier ones (function, n_regs, n_spills).
        if len(loaded) == 4:
            module, function = loaded[0], loaded[1]
        else:
            module, function = None, loaded[0]
        self.modules[device] = module
        self.functions[device] = function
        return function

    def launch(self, grid_0: int, grid_1: int, grid_2: int, stream: int, *args) -> None:
        device = _get_device()
        function = self.functions.get(device)
        if function is None:
            function = self._load(device)
        _launcher._launch_kernel(
            function,
            grid_0,
            grid_1,
            grid_2,
            self.num_warps,
            self.shared,
            self.arg_types,
            args,
            stream,
        )


# Every kernel the pieces made, so that load() can put them all on the GPU up front.
KERNELS = []


def load_triton_kernel(
    piece: str,
    name: str,
    symbol: str,
    num_warps: int,
    shared: int,
    arg_types: str,
    arch=None,
):
    """A kernel of kernels/<piece>/<name>.cubin; load_kernels() puts it on the GPU."""
    kernel = TritonKernel(
        KERNEL_DIR / piece / f"{name}.cubin", symbol, num_warps, shared, arg_types, arch
    )
    KERNELS.append(kernel)
    return kernel


def load_kernels() -> None:
    """Load every kernel onto the current GPU now, so that no call pays for it."""
    device = _get_device()
    for kernel in KERNELS:
        if device not in kernel.functions:
            kernel._load(device)


def align_inputs(args: list, indices: tuple) -> None:
    """Copy, in place in `args`, each input at `indices` whose data is not 16-byte aligned.

    The Triton kernels were compiled assuming aligned pointers (Inductor's wrapper makes the
    same copies before calling its code); a misaligned view, such as x[1:], would otherwise
    fault or read wrong data.
    """
    for index in indices:
        value = args[index]
        if value.data_ptr() % 16:
            needed = (
                1
                + sum(
                    (size - 1) * stride
                    for size, stride in zip(value.shape, value.stride())
                )
                if value.numel()
                else 0
            )
            flat = torch.as_strided(value, (needed,), (1,)).clone()
            args[index] = torch.as_strided(flat, value.shape, value.stride())
