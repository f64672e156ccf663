"""Runtime asserts torch.export leaves in a graph, proven over the declared ranges.

Exported with `prefer_deferred_runtime_asserts_over_guards`, a program keeps the guards
torch could not prove as `aten._assert_scalar` nodes. The emitted package runs no
guards, so each assert must hold for every size the package accepts: this pass
evaluates each one over its symbol's declared range (every size, or a sample with both
bounds for large ranges) and removes it when it always holds.
"""

from __future__ import annotations

import operator

import sympy
import torch
import torch.fx

_LIMIT = 4096
# Scalar computations that only feed asserts, removed with them.
_SCALAR_OPS = (
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.mod,
    operator.floordiv,
    operator.mul,
    operator.add,
    operator.sub,
    torch.sym_not,
)


def _sizes(lo: int, hi: int) -> list[int]:
    if hi - lo <= _LIMIT:
        return list(range(lo, hi + 1))
    step = (hi - lo) // _LIMIT + 1
    return sorted({*range(lo, hi + 1, step), hi})


def holds(expr, ranges: dict) -> bool:
    """Whether a one-symbol boolean expression is true at every size of the symbol's range."""
    symbols = expr.free_symbols
    if not symbols:
        return bool(expr)
    if len(symbols) != 1:
        return False
    (symbol,) = symbols
    value_range = ranges.get(symbol)
    if value_range is None:
        return False
    lo = int(value_range.lower)
    hi = lo + _LIMIT if value_range.upper.is_infinite else int(value_range.upper)
    return all(bool(expr.xreplace({symbol: sympy.Integer(size)})) for size in _sizes(lo, hi))


def drop_proven_asserts(program) -> bool:
    """Remove the program's runtime asserts if every one holds over the declared ranges;
    return False (leaving the program as it is) if any may fail."""
    graph = program.graph
    asserts = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten._assert_scalar.default]
    for node in asserts:
        condition = node.args[0]
        value = condition.meta.get("val") if isinstance(condition, torch.fx.Node) else condition
        expr = value.node.expr if isinstance(value, torch.SymBool) else sympy.sympify(bool(value))
        if not holds(expr, program.range_constraints):
            return False
    for node in asserts:
        graph.erase_node(node)
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if node.op == "call_function" and not node.users and node.target in _SCALAR_OPS:
                graph.erase_node(node)
                changed = True
    program.graph_module.recompile()
    return True
