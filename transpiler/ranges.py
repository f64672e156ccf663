"""Check --ranges and --sizes (parsed by options.py) against the dispatch dimension's
bounds, and make the variants.

vLLM's compile_ranges / compile_sizes semantics: ranges are compiled with symbolic
shapes bounded by the range; exact sizes with static shapes, and win at dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import TranspileError
from .ir import DispatchDim, SizeRange, Variant


def _bounds(dim: DispatchDim) -> str:
    return f"[{dim.lo}, {'inf' if dim.hi is None else dim.hi}]"


def ranges_within(ranges: tuple[SizeRange, ...] | None, dim: DispatchDim) -> tuple[SizeRange, ...]:
    """The ranges to compile: those asked for, each inside the dim's bounds; by default
    one range, the whole dim."""
    if ranges is None:
        return (SizeRange(dim.lo, dim.hi),)
    for size_range in ranges:
        if size_range.lo < dim.lo or (dim.hi is not None and size_range.hi > dim.hi):
            raise TranspileError(
                f"--ranges: {size_range.label()} falls outside {dim.input_name} dim {dim.dim}'s bounds "
                f"{_bounds(dim)}; keep ranges inside them or widen the Dim in `dynamic_shapes`"
            )
    return ranges


def sizes_within(sizes: tuple[int, ...], dim: DispatchDim) -> tuple[int, ...]:
    for size in sizes:
        if size < dim.lo or (dim.hi is not None and size > dim.hi):
            raise TranspileError(
                f"--sizes: {size} falls outside {dim.input_name} dim {dim.dim}'s bounds {_bounds(dim)}"
            )
    return sizes


def make_variants(ranges: Sequence[SizeRange], sizes: Sequence[int]) -> tuple[Variant, ...]:
    """Exact sizes first (they win at dispatch), then ranges in order."""
    variants = [Variant(f"size_{size}", SizeRange(size, size), static=True) for size in sizes]
    for size_range in ranges:
        hi = "max" if size_range.hi is None else size_range.hi
        variants.append(Variant(f"range_{size_range.lo}_{hi}", size_range, static=False))
    return tuple(variants)
