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
    _check_guards_hold(
        _env(sympy.Ge(SIZE, 1), sympy.Le(SIZE, 16)), SIZE, Variant("range_1_16", SizeRange(1, 16), False)
    )


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
    _check_guards_hold(
        _env(sympy.Gt(OTHER, 100), sympy.Gt(SIZE + OTHER, 1000)), SIZE, Variant("r", SizeRange(1, 16), False)
    )


def _parts(exc_info):
    return [part.label() for part in exc_info.value.parts]


def test_a_failing_guard_splits_the_range_where_it_flips():
    from transpiler.inductor import RangeSpecialized

    with pytest.raises(RangeSpecialized) as caught:
        _check_guards_hold(_env(sympy.Lt(SIZE, 16)), SIZE, Variant("range_9_32", SizeRange(9, 32), False))
    assert _parts(caught) == ["9-15", "16-32"]
    with pytest.raises(RangeSpecialized) as caught:
        _check_guards_hold(_env(sympy.Ne(SIZE, 16)), SIZE, Variant("range_1_32", SizeRange(1, 32), False))
    assert _parts(caught) == ["1-15", "16-16", "17-32"]
    # Sampled: the cut is found between samples by bisection.
    with pytest.raises(RangeSpecialized) as caught:
        _check_guards_hold(_env(sympy.Lt(SIZE, 100001)), SIZE, Variant("r", SizeRange(1, 200000), False))
    assert _parts(caught) == ["1-100000", "100001-200000"]


def test_pipeline_recompiles_the_halves_and_notes_the_split(monkeypatch):
    """compile_pieces retries with the split range; the other variants stay as they were."""
    from transpiler import compiling
    from transpiler.inductor import RangeSpecialized
    from transpiler.ranges import make_variants

    seen = []

    def fake_compile(split, plan, target, variants, options, progress, pool=None):
        seen.append([v.name for v in variants])
        for variant in variants:
            if variant.range == SizeRange(9, 32):
                raise RangeSpecialized(variant, sympy.Lt(SIZE, 16), 16, [SizeRange(9, 15), SizeRange(16, 32)])
        return ()

    monkeypatch.setattr(compiling, "_compile_variants", fake_compile)
    variants = make_variants([SizeRange(1, 8), SizeRange(9, 32)], [4])
    split = SimpleNamespace(variants=variants, groups=())
    compiled = compiling.compile_pieces(split, None, None, None)
    assert [v.name for v in compiled.variants] == ["size_4", "range_1_8", "range_9_15", "range_16_32"]
    assert seen == [["size_4", "range_1_8", "range_9_32"], ["size_4", "range_1_8", "range_9_15", "range_16_32"]]
    assert compiled.notes == ("range 9-32 split into 9-15, 16-32 (Inductor specialized it on `s0 < 16`)",)
