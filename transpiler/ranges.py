"""Parse and check --ranges and --sizes against the dispatch dimension's bounds.

vLLM's compile_ranges / compile_sizes semantics: ranges are compiled with symbolic
shapes bounded by the range; exact sizes with static shapes, and win at dispatch.
"""

from __future__ import annotations

from .errors import TranspileError
from .ir import DispatchDim, SizeRange, Variant


def _bounds(dim: DispatchDim) -> str:
    return f"[{dim.lo}, {'inf' if dim.hi is None else dim.hi}]"


def parse_ranges(text: str | None, dim: DispatchDim) -> list[SizeRange]:
    if text is None:
        return [SizeRange(dim.lo, dim.hi)]
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
            raise TranspileError(f"--ranges: {part.strip()!r} is not LO-HI with LO <= HI; write for example 1-16,17-256")
        ranges.append(SizeRange(int(lo), int(hi)))
    ranges.sort()
    for previous, current in zip(ranges, ranges[1:]):
        if current.lo <= previous.hi:
            raise TranspileError(
                f"--ranges: {previous.label()} and {current.label()} overlap; make each range start after the previous one ends"
            )
        if current.lo > previous.hi + 1:
            raise TranspileError(
                f"--ranges: sizes {previous.hi + 1}-{current.lo - 1} fall between {previous.label()} and "
                f"{current.label()}; make the ranges contiguous"
            )
    for size_range in ranges:
        if size_range.lo < dim.lo or (dim.hi is not None and size_range.hi > dim.hi):
            raise TranspileError(
                f"--ranges: {size_range.label()} falls outside {dim.input_name} dim {dim.dim}'s bounds "
                f"{_bounds(dim)}; keep ranges inside them or widen the Dim in `dynamic_shapes`"
            )
    return ranges


def parse_sizes(text: str | None, dim: DispatchDim) -> list[int]:
    if not text:
        return []
    sizes = set()
    for part in text.split(","):
        if not part.strip().isdigit():
            raise TranspileError(f"--sizes: {part.strip()!r} is not a whole number; write for example 1,8")
        size = int(part)
        if size < dim.lo or (dim.hi is not None and size > dim.hi):
            raise TranspileError(
                f"--sizes: {size} falls outside {dim.input_name} dim {dim.dim}'s bounds {_bounds(dim)}"
            )
        sizes.add(size)
    return sorted(sizes)


def make_variants(ranges: list[SizeRange], sizes: list[int]) -> list[Variant]:
    """Exact sizes first (they win at dispatch), then ranges in order."""
    variants = [Variant(f"size_{size}", SizeRange(size, size), static=True) for size in sizes]
    for size_range in ranges:
        hi = "max" if size_range.hi is None else size_range.hi
        variants.append(Variant(f"range_{size_range.lo}_{hi}", size_range, static=False))
    return variants
