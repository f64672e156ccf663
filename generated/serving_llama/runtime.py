"""Runtime of a transpiled package: what the stitching function and compiled pieces call.

Uses torch alone: the helpers Inductor's code calls are C functions of torch's core,
the kernels are prebuilt CPython extensions, and weights are read from safetensors
by hand (so the package needs neither Inductor, a compiler nor the safetensors package).
Copied verbatim into every package from transpiler/runtime/ by transpile; do not edit.
"""

import importlib.machinery
import importlib.util
import json
import mmap
import os
import platform
import struct
import sys
import time
from pathlib import Path

import torch

aten = torch.ops.aten
inductor_ops = torch.ops.inductor
device = torch.device
empty_strided = torch.empty_strided
assert_size_stride = torch._C._dynamo.guards.assert_size_stride
assert_alignment = torch._C._dynamo.guards.assert_alignment
empty_strided_cpu = torch._C._dynamo.guards._empty_strided_cpu
reinterpret_tensor = torch._C._dynamo.guards._reinterpret_tensor

PACKAGE_DIR = Path(__file__).resolve().parent
KERNEL_DIR = PACKAGE_DIR / "kernels"
WEIGHTS_FILE = PACKAGE_DIR / "weights.safetensors"

# The kernel binaries read tensors' data pointers through this C function of torch,
# whose address they take from the environment when loaded.
os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(
    torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr
)


class MachineMismatch(RuntimeError):
    """The package's kernels were built for another machine or torch."""


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_machine(
    torch_version: str, python_version: str, machine: str, cpu_features: tuple
) -> None:
    """Refuse to load kernels built for another torch, Python or CPU."""
    found_torch = torch.__version__.split("+")[0]
    if found_torch != torch_version:
        raise MachineMismatch(
            f"{PACKAGE_DIR.name} was built for torch {torch_version}, found {found_torch}; "
            "transpile the model again with this torch"
        )
    found_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if found_python != python_version:
        raise MachineMismatch(
            f"{PACKAGE_DIR.name}'s kernels were built for Python {python_version}, found {found_python}; "
            "transpile the model again with this Python"
        )
    if platform.machine() != machine:
        raise MachineMismatch(
            f"{PACKAGE_DIR.name}'s kernels were built for {machine}, this machine is {platform.machine()}"
        )
    missing = sorted(set(cpu_features) - _cpu_flags())
    if missing:
        raise MachineMismatch(
            f"{PACKAGE_DIR.name}'s kernels need CPU features this machine lacks: {', '.join(missing)}; "
            "transpile again with a lower --cpu-isa (avx2) or on this machine"
        )


def load_kernel(piece: str, name: str):
    """Load one prebuilt kernel (a CPython extension exporting `kernel`)."""
    path = KERNEL_DIR / piece / f"{name}.so"
    if not path.is_file():
        raise MachineMismatch(
            f"kernel binary {path.relative_to(PACKAGE_DIR.parent)} is missing (its source is beside it); "
            "transpile the model again to rebuild the binaries"
        )
    loader = importlib.machinery.ExtensionFileLoader("kernel", str(path))
    spec = importlib.util.spec_from_file_location("kernel", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    # CPython registers single-phase extension modules under their name; do not leave
    # ours standing as `kernel` for an unrelated `import kernel` to find.
    if sys.modules.get("kernel") is module:
        del sys.modules["kernel"]
    return module.kernel


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

# Weights for a GPU are read through two pinned buffers of this size: one is filled from
# the mapped file while the other is copied to the device.
STAGING_BYTES = 64 << 20


class FileTensor:
    """Where one tensor of a safetensors file lies: read only when loaded."""

    __slots__ = ("dtype", "end", "file", "name", "shape", "start")

    def __init__(
        self, file: Path, name: str, dtype, shape: tuple, start: int, end: int
    ):
        self.file, self.name, self.dtype, self.shape, self.start, self.end = (
            file,
            name,
            dtype,
            shape,
            start,
            end,
        )


def _not_safetensors(path: Path, why: str) -> ValueError:
    return ValueError(
        f"weights: {path} is not a safetensors file ({why}); pass .safetensors files or a state_dict"
    )


def read_header(path: Path) -> dict:
    """name -> FileTensor for every tensor of a safetensors file, from its header alone."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise _not_safetensors(path, "shorter than a header")
            (header_size,) = struct.unpack("<Q", prefix)
            size = os.fstat(file.fileno()).st_size
            if header_size > size - 8:
                raise _not_safetensors(
                    path, f"a header of {header_size} bytes in a file of {size}"
                )
            header = json.loads(file.read(header_size))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_safetensors(path, f"its header is not JSON: {error}") from None
    except OSError as error:
        raise FileNotFoundError(
            f"weights: cannot read {path}: {error.strerror}"
        ) from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
        except KeyError:
            raise ValueError(
                f"weights: {name!r} in {path} has dtype {info.get('dtype')}, which this package cannot read"
            ) from None
        start, end = info["data_offsets"]
        if 8 + header_size + end > size:
            raise _not_safetensors(
                path, f"tensor {name!r} runs past the end of the file"
            )
        tensors[name] = FileTensor(
            path,
            name,
            dtype,
            tuple(info["shape"]),
            8 + header_size + start,
            8 + header_size + end,
        )
    return tensors


def map_file(path: Path, entries: list) -> dict:
    """CPU tensors backed by the file's pages, mapped copy-on-write: nothing is read until used."""
    with open(path, "rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for entry in entries:
        count = (entry.end - entry.start) // entry.dtype.itemsize
        flat = (
            torch.frombuffer(data, dtype=entry.dtype, count=count, offset=entry.start)
            if count
            else torch.empty(0, dtype=entry.dtype)
        )
        tensors[entry.name] = flat.reshape(entry.shape)
    return tensors


def _read_staged(
    path: Path, entries: list, device, staging_bytes: int = STAGING_BYTES
) -> dict:
    """Tensors of one file on `device`, in one pass in file order: the mapped file is copied
    (by torch's multi-threaded copy) into two host buffers (pinned for a GPU) that take
    turns, one filling while the other is copied to the device."""
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    staging_bytes = max(1, min(staging_bytes, sum(e.end - e.start for e in entries)))
    buffers = [
        torch.empty(staging_bytes, dtype=torch.uint8, pin_memory=on_gpu)
        for _ in range(2)
    ]
    events = [None, None]  # copies still reading from each buffer
    current, used = 0, 0
    tensors = {}
    with open(path, "rb") as file:
        data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    mapped = torch.frombuffer(data, dtype=torch.uint8)
    for entry in sorted(entries, key=lambda e: e.start):
        tensor = torch.empty(entry.shape, dtype=entry.dtype, device=device)
        tensors[entry.name] = tensor
        target = tensor.view(-1).view(torch.uint8) if tensor.numel() else None
        done = 0
        while done < entry.end - entry.start:
            # this buffer is full: its copies are queued; take the other
            if used == staging_bytes:
                if on_gpu:
                    events[current] = torch.cuda.Event()
                    events[current].record()
                current, used = 1 - current, 0
                if events[current] is not None:
                    events[current].synchronize()
                    events[current] = None
            count = min(entry.end - entry.start - done, staging_bytes - used)
            staged = buffers[current][used : used + count]
            staged.copy_(mapped[entry.start + done : entry.start + done + count])
            target[done : done + count].copy_(staged, non_blocking=on_gpu)
            done += count
            used += count
    if on_gpu:
        torch.cuda.current_stream(device).synchronize()
    return tensors


def read_entries(path: Path, entries: list, device="cpu") -> dict:
    """name -> tensor on `device` for FileTensors of one file (from read_header): mapped
    (CPU), or read in one pass through pinned buffers (GPU)."""
    return (
        map_file(path, entries)
        if torch.device(device).type == "cpu"
        else _read_staged(path, entries, device)
    )


class Checkpoint:
    """Where load(weights=...) finds tensors: a state_dict, a .safetensors file, or a folder
    of them in the Hugging Face layout (model.safetensors.index.json's weight_map, or every
    *.safetensors file in it). Only headers are read here; tensors when loaded."""

    def __init__(self, source):
        self.tensors = None  # a state_dict
        self.entries = {}  # tensor name -> FileTensor
        if isinstance(source, dict):
            self.tensors = source
            self.where = "the state_dict"
            return
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(
                f"weights: expected a state_dict, a .safetensors file or a folder of them, got {type(source).__name__}"
            )
        path = Path(source)
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = _folder_files(path)
        else:
            raise FileNotFoundError(
                f"weights: {path} does not exist; pass a .safetensors file or a folder of them"
            )
        for file in files:
            for name, entry in read_header(file).items():
                self.entries.setdefault(name, entry)
        self.where = str(path)

    def find(self, keys: list) -> list:
        """A tensor (state_dict) or a FileTensor for each (checkpoint key, state-dict key):
        under the checkpoint's name, else the model's own (its state_dict()); one error
        for what is missing."""
        found = self.tensors if self.tensors is not None else self.entries
        missing = [
            checkpoint_key
            for checkpoint_key, key in keys
            if checkpoint_key not in found and key not in found
        ]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise KeyError(
                f"weights: missing {missing[0]!r}{more} in {self.where}; pass the model's full state_dict() or checkpoint"
            )
        return [
            (
                (checkpoint_key, found[checkpoint_key])
                if checkpoint_key in found
                else (key, found[key])
            )
            for checkpoint_key, key in keys
        ]


def _folder_files(folder: Path) -> list:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"weights: {folder} holds no .safetensors files")
        return files
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"weights: {index} is not a Hugging Face index (a JSON object with a weight_map)"
        ) from None
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise FileNotFoundError(
            f"weights: {index.name} names {missing[0]}, which is not in {folder}"
        )
    return [folder / shard for shard in shards]


def load_weights(specs: tuple, embedded: bool, given, device: str = "cpu") -> tuple:
    """The weights in the order the stitching function takes them, on `device`.

    specs: (state-dict key, checkpoint key or None, dtype, shape) per weight; a checkpoint
    key of None marks a tensor the package always supplies itself (a constant, a
    non-persistent buffer). `given` (a state_dict, file or folder) supplies the others;
    without it they come from the package's weights file, if it was embedded. Every
    tensor's dtype and shape are checked before any is read.
    """
    from_checkpoint = [spec for spec in specs if spec[1] is not None]
    own = [spec[0] for spec in specs if spec[1] is None]
    if given is None and not embedded and from_checkpoint:
        raise ValueError(
            f"{PACKAGE_DIR.name} ships no weights (transpiled with --weights none): pass load(weights=...) "
            "a state_dict, a .safetensors file or a folder of them"
        )
    if given is None:
        own += [spec[0] for spec in from_checkpoint]
        from_checkpoint = []
    tensors = {}
    # file -> tensor name in it -> (its FileTensor, the state-dict keys it supplies)
    wanted = {}

    def want(entry, key):
        wanted.setdefault(entry.file, {}).setdefault(entry.name, (entry, []))[1].append(
            key
        )

    if own:
        packaged = read_header(WEIGHTS_FILE)
        for key in own:
            want(packaged[key], key)
    if from_checkpoint:
        found = Checkpoint(given).find([(spec[1], spec[0]) for spec in from_checkpoint])
        for (key, _, dtype, shape), (checkpoint_key, value) in zip(
            from_checkpoint, found
        ):
            if not isinstance(value, (torch.Tensor, FileTensor)):
                raise TypeError(
                    f"weights: {checkpoint_key!r} is a {type(value).__name__}, not a tensor"
                )
            if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
                raise ValueError(
                    f"weights: {checkpoint_key!r} is {value.dtype} {tuple(value.shape)}, "
                    f"the package expects {dtype} {tuple(shape)}"
                )
            if isinstance(value, FileTensor):
                want(value, key)
            else:
                tensors[key] = value.detach()
    for file, by_name in sorted(wanted.items()):
        entries = [entry for entry, _ in by_name.values()]
        for name, tensor in read_entries(file, entries, device).items():
            for key in by_name[name][1]:
                tensors[key] = tensor
    return tuple(_placed(tensors[spec[0]], device) for spec in specs)


def _placed(tensor, device: str):
    """On the package's device, contiguous."""
    if tensor.device.type != torch.device(device).type:
        tensor = tensor.to(device)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


class Stages:
    """Logs (debug level) how long each stage of load() took."""

    def __init__(self, logger):
        self.logger = logger
        self.started = self.last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.logger.debug(
            "load: %s in %.1f ms (%.1f ms in all)",
            stage,
            (now - self.last) * 1e3,
            (now - self.started) * 1e3,
        )
        self.last = now


def call_without_dynamo(op_names: tuple) -> None:
    """Let ops made with torch.library.custom_op run without importing torch._dynamo.

    Their kernels are wrapped in torch._disable_dynamo, which imports torch._dynamo (a
    second or more) on the first call to build a wrapper that only matters while Dynamo
    traces. The package never runs under Dynamo, so the wrapper's cache is filled with
    the kernel itself. Ops registered otherwise, or a torch laid out differently, are
    left as they are (they still work; their first call imports Dynamo).
    """
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:
        return
    for name in op_names:
        opdef = OPDEFS.get(name)
        for wrapper in getattr(opdef, "_backend_fns", {}).values():
            kernel = getattr(wrapper, "__wrapped__", None)
            if kernel is not None and getattr(kernel, "__dynamo_disable", None) is None:
                kernel.__dynamo_disable = kernel


def import_op_modules(required: tuple, imports: tuple = ()) -> None:
    """Import the modules that register the model's ops from outside torch (REQUIRED_OPS:
    op, module, the distribution to install or None), after those named by --import (which
    may be the ones that register an op through a helper module), so the first call finds
    them; one line naming the op, the module and what to install when one cannot be
    imported or does not register the op."""
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(
                f"module {module} (--import) cannot be imported ({error}): put the folder holding it on sys.path"
            ) from None
    for op, module, requirement in required:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ImportError(
                f"the model calls op {op}, which module {module} registers, and importing it failed "
                f"({error}): {_install_hint(module, requirement)}"
            ) from None
    for op, module, requirement in required:
        namespace, _, name = op.partition("::")
        if not hasattr(getattr(torch.ops, namespace), name):
            raise ImportError(
                f"the model calls op {op}, which module {module} no longer registers: "
                f"{_install_hint(module, requirement)}"
            )
    call_without_dynamo(tuple(op for op, _, _ in required))


def _install_hint(module: str, requirement) -> str:
    if requirement:
        return f"pip install '{requirement}'"
    return f"put the folder holding {module} on sys.path"


def own_mutated(tensors: tuple, keys: tuple, mutated: tuple) -> tuple:
    """Buffers the forward writes in place, copied: the package's state must not be
    the storage of a state_dict the caller passed in (its module would change too)."""
    return tuple(
        tensor.clone() if key in mutated else tensor
        for key, tensor in zip(keys, tensors)
    )


def check_input(
    value,
    name: str,
    dtype: torch.dtype,
    shape: tuple,
    device: str,
    in_place: bool = False,
):
    """Fail early, naming the input, instead of deep inside a compiled kernel.

    An input the forward writes in place must be used as it is: a contiguous copy
    would take the writes and drop them.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(value).__name__}")
    if value.device.type != device:
        raise ValueError(
            f"{name}: expected a {device} tensor, got one on {value.device}"
        )
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    if value.dim() != len(shape) or any(
        e is not None and e != a for e, a in zip(shape, value.shape)
    ):
        expected = "(" + ", ".join("N" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
    if value.is_contiguous():
        return value
    if in_place:
        raise ValueError(
            f"{name}: the forward writes it in place, so it must be contiguous (got strides {tuple(value.stride())}); "
            "allocate it with torch.zeros/empty, or pass .contiguous() and keep that tensor"
        )
    return value.contiguous()
