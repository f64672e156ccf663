"""Turn Inductor's wrapper module into one standalone function of an emitted piece module.

Inductor's output imports its own runtime, compiles kernels when imported and defines
`call(args)`. We keep `call`, renamed after its variant, and rewrite with libcst:
- kernel globals get the variant's prefix (several variants share one module);
- `argN_1` become the piece's input names, so the code reads like the model;
- `extern_kernels.mm(...)` becomes the torch function it stands for (`torch.mm`);
- where the target launches its kernels itself (CUDA), `kernel.run(a, b, n, stream=s)`
  becomes a call of the launcher function the piece module defines for the kernel, and
  inputs Inductor re-aligns are re-aligned first;
and check that every other global it reads is one the package runtime provides. What
differs by device is a KernelDialect, which each target (targets/) names.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, ScopeProvider

from .errors import TranspileError

# Names Inductor's `call` may read that the emitted runtime module defines.
RUNTIME_NAMES = frozenset(
    {
        "aten",
        "assert_alignment",
        "assert_size_stride",
        "device",
        "empty_strided",
        "empty_strided_cpu",
        "inductor_ops",
        "reinterpret_tensor",
    }
)
MODULE_NAMES = frozenset({"torch", "math"})
_BUILTINS = frozenset(dir(builtins))
# Keyword arguments of `kernel.run(...)` in Inductor's CUDA wrapper. `grid=` is what older
# Inductor passed; the emitted launcher computes the grid itself, so it is dropped.
_RUN_KEYWORDS = frozenset({"stream", "grid"})


@dataclass(frozen=True)
class KernelDialect:
    """How a target's kernels stand in Inductor's wrapper, and what its package provides."""

    definition: str  # kernels are defined as `name = async_compile.<definition>(...)`
    launched: bool = False  # `kernel.run(..., stream=s)` becomes a call of the piece's launcher
    target_runtime_names: frozenset[str] = frozenset()  # names the target's own runtime module defines


@dataclass
class RewrittenCall:
    function_source: str
    neutral_source: str  # the same function with variant-independent names, to find repeats
    kernel_sources: dict[str, str]  # original kernel name -> C++ or Triton source
    runtime_names: list[str]  # names to import from the package runtime
    target_runtime_names: list[str]  # names to import from the target's runtime module
    module_names: list[str]  # modules to import (torch, math)


def kernel_definitions(module: cst.Module, kind: str) -> dict[str, str]:
    """`name = async_compile.<kind>(..., '''source''', ...)` at module level: name -> source.

    The source is the second argument for both kinds (argument types, or the kernel name,
    come first). Definitions of any other kind cannot be shipped and are refused.
    """
    kernels = {}
    pattern = m.Assign(
        targets=[m.AssignTarget(target=m.Name())],
        value=m.Call(func=m.Attribute(value=m.Name("async_compile"))),
    )
    for statement in module.body:
        if not m.matches(statement, m.SimpleStatementLine(body=[pattern])):
            continue
        assign = statement.body[0]
        name = assign.targets[0].target.value
        found = assign.value.func.attr.value
        if found != kind:
            raise TranspileError(
                f"Inductor built kernel {name} as `{found}`, which this target cannot ship; "
                "add the op that needs it to the splitting ops (--split-ops)"
            )
        kernels[name] = ast.literal_eval(module.code_for_node(assign.value.args[1].value))
    return kernels


def _find_call(module: cst.Module) -> cst.FunctionDef:
    found = []

    class Finder(cst.CSTVisitor):
        def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
            if node.name.value == "call":
                found.append(node)
            return False

        def visit_ClassDef(self, node: cst.ClassDef) -> bool:
            return True

    module.visit(Finder())
    if len(found) != 1:
        raise TranspileError(f"unexpected Inductor output: {len(found)} `call` functions")
    return found[0]


def _argument_names(call: cst.FunctionDef) -> list[str]:
    """The names in `arg0_1, arg1_1 = args`, the first statement of `call`."""
    for statement in call.body.body:
        if m.matches(statement, m.SimpleStatementLine(body=[m.Assign(value=m.Name("args"))])):
            target = statement.body[0].targets[0].target
            if isinstance(target, cst.Name):
                return [target.value]
            return [element.value.value for element in target.elements]
    return []  # a piece without inputs


class _Renamer(cst.CSTTransformer):
    def __init__(self, names: dict[str, str], extern: dict[str, str], launched: frozenset[str]):
        self.names = names
        self.extern = extern
        self.launched = launched  # kernels (after renaming) whose `.run(...)` becomes a launch

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        new = self.names.get(updated.value)
        return updated.with_changes(value=new) if new else updated

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute):
        if m.matches(updated, m.Attribute(value=m.Name("extern_kernels"))):
            return cst.parse_expression(self.extern[updated.attr.value])
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        func = updated.func
        if not (m.matches(func, m.Attribute(value=m.Name(), attr=m.Name("run"))) and func.value.value in self.launched):
            return updated
        keywords = {a.keyword.value for a in updated.args if a.keyword is not None}
        if keywords - _RUN_KEYWORDS or "stream" not in keywords:
            raise TranspileError(
                f"unexpected Inductor output: {func.value.value}.run(...) passes {sorted(keywords)}; "
                "expected positional kernel arguments and stream="
            )
        args = [a for a in updated.args if a.keyword is None or a.keyword.value == "stream"]
        args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        return updated.with_changes(func=func.value, args=args)


def _extern_kernel_path(name: str) -> str:
    """The public torch name of `extern_kernels.<name>`, so the package needs no Inductor."""
    import torch
    from torch._inductor.select_algorithm import extern_kernels

    target = getattr(extern_kernels, name, None)
    for prefix, namespace in (("torch", torch), ("torch.nn.functional", torch.nn.functional)):
        if target is not None and getattr(namespace, getattr(target, "__name__", ""), None) is target:
            return f"{prefix}.{target.__name__}"
    raise TranspileError(
        f"Inductor used extern kernel `extern_kernels.{name}`, which has no public torch equivalent; "
        "add the op to the splitting ops (--split-ops) to keep it out of compiled pieces"
    )


def _global_reads(function: cst.FunctionDef) -> set[str]:
    """Names the function reads but never assigns: what its module must provide."""
    scopes = set(MetadataWrapper(cst.Module(body=[function])).resolve(ScopeProvider).values())
    reads, assigned = set(), {function.name.value}
    for scope in scopes:
        if scope is None or type(scope).__name__ == "GlobalScope":
            continue
        assigned |= {assignment.name for assignment in scope.assignments}
        reads |= {access.node.value for access in scope.accesses if isinstance(access.node, cst.Name)}
    return reads - assigned


def _standalone(
    call: cst.FunctionDef,
    function_name: str,
    arguments: list[str],
    input_names: list[str],
    kernels: dict[str, str],
    kernel_prefix: str,
    extern: dict[str, str],
    dialect: KernelDialect,
    align_indices: tuple[int, ...],
) -> cst.FunctionDef:
    existing = {n.value for n in m.findall(call, m.Name())}
    renames = {k: f"{kernel_prefix}{k}" for k in kernels}
    for old, new in zip(arguments, input_names):
        # Keep Inductor's name where the readable one is taken inside `call`.
        if new not in existing or new == old:
            renames[old] = new
    launched = frozenset(renames[k] for k in kernels) if dialect.launched else frozenset()
    renamed = call.visit(_Renamer(renames, extern, launched))
    # Where kernels are launched, every use must have been a launch: anything else (benchmarking,
    # passing the autotuner around) has no counterpart in the emitted package.
    for node in m.findall(renamed, m.Attribute(value=m.Name())):
        if node.value.value in launched:
            raise TranspileError(f"unexpected Inductor output: {node.value.value}.{node.attr.value} is used")
    params = [p for p in renamed.params.params if p.name.value != "self"]
    body = renamed.body
    if align_indices:
        if [p.name.value for p in params] != ["args"]:
            raise TranspileError("unexpected Inductor output: `call` does not take `args`")
        statement = cst.parse_statement(f"align_inputs(args, {tuple(align_indices)!r})\n")
        body = body.with_changes(body=[statement, *body.body])
    return renamed.with_changes(
        name=cst.Name(function_name),
        params=renamed.params.with_changes(params=params),
        body=body,
        leading_lines=[],
        decorators=[],
    )


def rewrite_call(
    source_code: str,
    function_name: str,
    input_names: list[str],
    kernel_prefix: str,
    dialect: KernelDialect,
    align_indices: tuple[int, ...] = (),
) -> RewrittenCall:
    module = cst.parse_module(source_code)
    kernels = kernel_definitions(module, dialect.definition)
    call = _find_call(module)
    arguments = _argument_names(call)
    if len(arguments) != len(input_names):
        raise TranspileError(
            f"unexpected Inductor output: `call` takes {len(arguments)} arguments, the piece has {len(input_names)}"
        )
    extern = {
        a.attr.value: _extern_kernel_path(a.attr.value)
        for a in m.findall(call, m.Attribute(value=m.Name("extern_kernels")))
    }
    common = (arguments, input_names, kernels)
    function = _standalone(call, function_name, *common, kernel_prefix, extern, dialect, align_indices)
    neutral = _standalone(call, "variant", *common, "", extern, dialect, align_indices)

    reads = _global_reads(function)
    prefixed_kernels = {f"{kernel_prefix}{k}" for k in kernels}
    provided = RUNTIME_NAMES | dialect.target_runtime_names
    unknown = sorted(reads - provided - MODULE_NAMES - _BUILTINS - prefixed_kernels)
    if unknown:
        raise TranspileError(
            f"Inductor's output uses {', '.join(unknown)}, which the emitted runtime does not provide; "
            "add the op that needs it to the splitting ops (--split-ops)"
        )
    return RewrittenCall(
        function_source=cst.Module(body=[function]).code,
        neutral_source=cst.Module(body=[neutral]).code,
        kernel_sources=kernels,
        runtime_names=sorted(reads & RUNTIME_NAMES),
        target_runtime_names=sorted(reads & dialect.target_runtime_names),
        module_names=sorted(reads & MODULE_NAMES),
    )
