"""The emitted code drops Inductor's guards, so a guard on the dispatch size that fails
anywhere in a range must stop the transpile."""

from types import SimpleNamespace

import pytest
import sympy

from transpiler.errors import TranspileError
from transpiler.inductor import _check_guards_hold
from transpiler.ir import SizeRange, Variant

SIZE = sympy.Symbol("s0", integer=True, positive=True)
OTHER = sympy.Symbol("s1", integer=True, positive=True)


def _env(*exprs):
    return SimpleNamespace(guards=[SimpleNamespace(expr=e) for e in exprs])


def test_guard_true_across_the_range_passes():
    _check_guards_hold(_env(sympy.Ge(SIZE, 1), sympy.Le(SIZE, 16)), SIZE, Variant("range_1_16", SizeRange(1, 16), False))


def test_guard_failing_inside_the_range_names_the_size():
    with pytest.raises(TranspileError, match=r"range 1-16 on `s0 > 4`, which fails at size 1; split the range at 1"):
        _check_guards_hold(_env(sympy.Gt(SIZE, 4)), SIZE, Variant("range_1_16", SizeRange(1, 16), False))
    with pytest.raises(TranspileError, match="fails at size 16"):
        _check_guards_hold(_env(sympy.Ne(SIZE, 16)), SIZE, Variant("range_1_16", SizeRange(1, 16), False))


def test_large_and_unbounded_ranges_are_sampled_including_the_top():
    with pytest.raises(TranspileError, match="fails at size 100000"):
        _check_guards_hold(_env(sympy.Lt(SIZE, 100000)), SIZE, Variant("range_1_100000", SizeRange(1, 100000), False))
    _check_guards_hold(_env(sympy.Ge(SIZE, 2)), SIZE, Variant("range_2_max", SizeRange(2, None), False))


def test_guards_on_other_symbols_are_not_the_dispatch_size():
    _check_guards_hold(_env(sympy.Gt(OTHER, 100), sympy.Gt(SIZE + OTHER, 1000)), SIZE, Variant("r", SizeRange(1, 16), False))
