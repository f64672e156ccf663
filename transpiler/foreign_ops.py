"""Ops from outside torch and the package (a library's `torch.library` ops, such as
transformers' `transformers::grouped_mm_fallback`), and what the package needs to run them.

Two ways, preferred in this order:
1. Traced through. An op made with `torch.library.custom_op` whose Python body is plain
   torch is captured as that body (its aten ops), so Inductor compiles it like the rest of
   the model and the package needs nothing. A torch-function mode swaps each call of such an
   op for its body while the model is exported (`inlined`); an op whose body export cannot
   capture (data-dependent code such as `offs.tolist()`) is kept as an op.
2. Imported. Every op left in the graph whose namespace is not torch's own nor the package's
   is recorded with the module that registers it and the distribution that module comes from
   (`RequiredOp`): the package imports that module at load(), and refuses in one line naming
   the op, the module and what to install when it cannot.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from .errors import TranspileError

# Namespaces of the ops torch itself defines (the package imports torch anyway), and the
# package's own (ops.py: transpile::sdpa).
TORCH_NAMESPACES = frozenset(
    {
        "aten",
        "prims",
        "prim",
        "_c10d_functional",
        "_c10d_functional_autograd",
        "c10d",
        "_dtensor",
        "quantized",
        "_quantized",
        "profiler",
        "inductor",
        "symm_mem",
        "mkldnn",
        "onednn",
        "mkl",
        "_quantized_decomposed",
        "quantized_decomposed",
        "_higher_order_ops",
        "higher_order",
    }
)
PACKAGE_NAMESPACES = frozenset({"transpile"})
MODEL_MODULE_PREFIX = "_transpile_model_"  # the name model_file.py gives MODEL.py's module


@dataclass(frozen=True)
class RequiredOp:
    op: str  # namespace::name
    module: str  # the module that registers it
    requirement: str | None  # the distribution that ships the module, pinned (None: a local module)


def _custom_op_defs() -> dict:
    from torch._library.custom_ops import OPDEFS

    return OPDEFS


def _namespace(qualname: str) -> str:
    return qualname.split("::", 1)[0]


def is_foreign(qualname: str) -> bool:
    return _namespace(qualname) not in TORCH_NAMESPACES | PACKAGE_NAMESPACES


class _Inline(torch.overrides.TorchFunctionMode):
    """While exporting: a call of one of `names` (custom ops) runs the op's Python body."""

    def __init__(self, names: frozenset[str]):
        super().__init__()
        self.names = names
        self.called: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _qualname(func)
        if name in self.names:
            self.called.add(name)
            return _custom_op_defs()[name]._init_fn(*args, **kwargs)
        return func(*args, **kwargs)


def _qualname(func) -> str | None:
    if isinstance(func, torch._ops.OpOverload):
        return func._schema.name
    if isinstance(func, torch._ops.OpOverloadPacket):
        return func._qualified_op_name
    return None


@contextlib.contextmanager
def inlined(names: frozenset[str]):
    """Calls of these custom ops run their bodies; yields the mode (its `called`: the names
    it inlined)."""
    mode = _Inline(names)
    if not names:
        yield mode
        return
    with mode:
        yield mode


def inline_candidates(keep: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    """Foreign ops made with torch.library.custom_op, less those to keep as ops (splitting ops)."""
    keep = set(keep)
    return frozenset(name for name in _custom_op_defs() if is_foreign(name) and name not in keep)


def export_inlining(export, candidates: frozenset[str]):
    """Run `export()` with as many of `candidates` inlined as it can capture. Returns the
    program, the inlined ops and {op: why it could not be traced}. Raises what a plain
    export raises."""
    first_error = None
    with inlined(candidates) as mode:
        try:
            program = export()
            if not mode.called or not reads_tensor_values(program):
                return program, sorted(mode.called), {}
        except Exception as error:  # an inlined body export cannot capture, or the model itself
            first_error = error
        tried = sorted(mode.called)
    if not tried:
        raise first_error
    accepted: list[str] = []
    untraceable: dict[str, str] = {}
    for name in tried:  # one by one: which bodies export can capture
        with inlined(frozenset([*accepted, name])):
            try:
                if reads_tensor_values(export()):
                    untraceable[name] = DATA_DEPENDENT
                else:
                    accepted.append(name)
            except Exception as error:
                untraceable[name] = _first_line(error)
    with inlined(frozenset(accepted)) as mode:
        program = export()  # raises the model's own error when no inlining was at fault
    return program, sorted(mode.called), untraceable


DATA_DEPENDENT = "it reads tensor values with .item() or .tolist(), so sizes depend on data"

_VALUE_READS = ("aten::_local_scalar_dense", "aten::item")


def reads_tensor_values(program) -> bool:
    """Whether the graph reads a tensor's values into Python numbers (unbacked sizes), which
    the compiled pieces cannot dispatch on: such a body stays an op."""
    return any(node.op == "call_function" and _qualname(node.target) in _VALUE_READS for node in program.graph.nodes)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]


def ops_in(graph_module: torch.fx.GraphModule) -> list[str]:
    """Foreign ops the graph calls, in first-call order."""
    names: list[str] = []
    for node in graph_module.graph.nodes:
        name = _qualname(node.target) if node.op == "call_function" else None
        if name and is_foreign(name) and name not in names:
            names.append(name)
    return names


def registering_module(qualname: str) -> str | None:
    """The module whose import registers the op: a custom_op's function's module, else the
    module of its fake (abstract) implementation, which export needed."""
    definition = _custom_op_defs().get(qualname)
    if definition is not None:
        return definition._init_fn.__module__
    from torch._library.simple_registry import singleton

    fake = singleton.find(qualname).fake_impl.kernel
    source = getattr(fake, "source", None)  # "file.py:line" where the fake was registered
    if not source:
        return None
    return _module_of_file(source.rsplit(":", 1)[0])


def _module_of_file(path: str) -> str | None:
    """The imported module whose file this is."""
    try:
        wanted = os.path.realpath(path)
    except (TypeError, ValueError):
        return None
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == wanted:
            return name
    return None


def distribution_of(module: str) -> str | None:
    """`name==version` of the installed distribution that ships the module's top-level
    package, or None (a module beside MODEL.py)."""
    top = module.split(".", 1)[0]
    names = importlib.metadata.packages_distributions().get(top)
    if not names:
        return None
    name = min(names)
    return f"{name}=={importlib.metadata.version(name)}"


def required_ops(graph_module: torch.fx.GraphModule) -> list[RequiredOp]:
    """Every foreign op left in the graph, with the module the package imports for it.
    An op registered by MODEL.py itself is refused: the package cannot import MODEL.py."""
    required = []
    for name in ops_in(graph_module):
        module = registering_module(name)
        if module is None or module == "__main__":
            raise TranspileError(
                f"op {name}: cannot tell which module registers it; register it in an importable module "
                "and pass --import MODULE"
            )
        if module.startswith(MODEL_MODULE_PREFIX):
            raise TranspileError(
                f"op {name} is registered by MODEL.py itself, which the package cannot import; move its "
                "registration into a module beside MODEL.py and import that module from MODEL.py"
            )
        required.append(RequiredOp(op=name, module=module, requirement=distribution_of(module)))
    return required


def import_cost(module: str, paths: list[str]) -> str:
    """What importing `module` costs a package's load(), measured in a fresh process: seconds
    after `import torch`, and whether it pulls in torch._dynamo."""
    probe = (
        "import sys, time; sys.path[:0] = sys.argv[2:]; import torch; started = time.perf_counter(); "
        "import importlib; importlib.import_module(sys.argv[1]); "
        "print(f'{time.perf_counter() - started:.2f} s', "
        "sum(1 for m in sys.modules if m.startswith('torch._dynamo')))"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", probe, module, *paths], capture_output=True, text=True, timeout=120
        )
        seconds, dynamo = result.stdout.split()[-3] + " s", int(result.stdout.split()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return "cost not measured"
    return f"{seconds}, {dynamo} torch._dynamo modules" if dynamo else f"{seconds}, no torch._dynamo"


def notes(captured, required: list[RequiredOp], paths: list[str], imports=()) -> list[str]:
    """The summary's lines: each op traced through, and each op the package imports a module
    for, with what that import costs load() (not measured for a module named by --import,
    which the package imported already)."""
    lines = [
        f"op {name} (torch.library.custom_op) is captured as its body: Inductor compiles it, the package imports nothing for it"
        for name in captured.inlined_ops
    ]
    costs: dict[str, str] = {}
    for required_op in required:
        if required_op.module in imports:
            costs[required_op.module] = "named by --import"
        elif required_op.module not in costs:
            costs[required_op.module] = import_cost(required_op.module, paths)
        cost = costs[required_op.module]
        why = captured.untraceable_ops.get(required_op.op)
        kept = f"its body cannot be traced: {why}" if why else "not made with torch.library.custom_op"
        lines.append(
            f"op {required_op.op} is kept as an op ({kept}): the package imports {required_op.module} at load() "
            f"({cost}){'; the wheel requires ' + required_op.requirement if required_op.requirement else ''}"
        )
    return lines
