"""Reproducible autotuning: Inductor's choices benchmarked once (`--autotune`) and kept in a
lockfile, `tuning.json`, that later transpiles replay without benchmarking.

Two kinds of choice are tuned, per piece and variant:
- GEMM backends: which of Inductor's candidates implements a matmul (ATen/cuBLAS, Triton
  templates, C++ templates on the CPU), at the `AlgorithmSelectorCache` call that picks one;
- Triton configs (CUDA): which block sizes, warps and stages each kernel launches with,
  at the `CachingAutotuner` of each kernel (cuda_kernels.py applies those).

Both paths end the same way: Inductor is handed the one chosen candidate, so a tuning run
and a replay of its lockfile build the same code. Range variants are compiled and
benchmarked at a representative size of the range (its geometric middle), recorded in the
lockfile. Without `--autotune` and without a lockfile nothing here runs: configs are chosen
by Inductor's heuristics, without timing, as before.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TranspileError
from .ir import SizeRange, Variant
from .ranges import make_variants

FORMAT = 1
FILE_NAME = "tuning.json"
REFRESH = "run with --autotune to tune again"

# Inductor settings of every tuned transpile, tuning run and replay alike: GEMM candidates
# beyond ATen, and no cache that would hand back an earlier run's choice (or skip the
# lowering where the choice is made). Each target adds its GEMM backends.
TUNING_PATCHES = {
    "max_autotune_gemm": True,
    "autotune_local_cache": False,
    "autotune_remote_cache": False,
    "fx_graph_cache": False,
    "benchmark_epilogue_fusion": False,
}


def representative_size(variant: Variant, hint: int) -> int:
    """The size a variant is compiled and benchmarked at: an exact size itself, a range its
    geometric middle (1-16 -> 4, 17-256 -> 66), an unbounded range the export hint."""
    lo, hi = variant.range.lo, variant.range.hi
    if variant.static:
        return lo
    if hi is None:
        return max(lo, hint)
    return min(hi, max(lo, round(math.sqrt(lo * hi))))


@dataclass
class Tuning:
    """What a tuned transpile does: "tune" (benchmark and record) or "replay" (a lockfile's choices)."""

    mode: str
    header: dict  # device, torch and the machine the choices were measured on
    lock: dict = field(default_factory=dict)  # replay: piece -> variant -> entry
    source: str = FILE_NAME  # the lockfile's name, for messages

    def session(self, piece: str, variant: Variant, hint: int) -> TuningSession:
        if self.mode == "tune":
            return TuningSession(self, piece, variant.name, representative_size(variant, hint), None)
        entry = self.lock[piece][variant.name]
        return TuningSession(self, piece, variant.name, entry["benchmark_size"], entry)

    def plan(self, pieces: list[str], ranges: list[SizeRange], sizes: list[int]) -> list[Variant] | None:
        """A replay compiles the lockfile's variants: the requested sizes, and the requested
        ranges or the parts the tuning run split them into (where Inductor specialized).
        None for a tuning run; one line when the lockfile was made for other ranges or pieces."""
        if self.mode != "replay":
            return None
        if sorted(self.lock) != sorted(pieces):
            raise TranspileError(
                f"{self.source} has pieces {', '.join(sorted(self.lock))}, this transpile {', '.join(pieces)} "
                f"(the model or --split-ops changed); {REFRESH}"
            )
        names = {name for by_variant in self.lock.values() for name in by_variant}
        if any(set(by_variant) != names for by_variant in self.lock.values()):
            raise TranspileError(f"{self.source}: its pieces have different variants; {REFRESH}")
        locked_sizes = sorted(int(n[len("size_") :]) for n in names if re.fullmatch(r"size_\d+", n))
        parsed = [_parse_range(n) for n in names if not re.fullmatch(r"size_\d+", n)]
        locked_ranges = sorted(r for r in parsed if r is not None)
        if None in parsed or locked_sizes != sorted(sizes) or not _refines(locked_ranges, ranges):
            wanted = ", ".join([f"size {s}" for s in sizes] + [r.label() for r in ranges])
            raise TranspileError(
                f"{self.source} was tuned for {', '.join(sorted(names))}, not {wanted} (--ranges/--sizes changed); {REFRESH}"
            )
        return make_variants(locked_ranges, locked_sizes)

    def lockfile(self, entries: dict) -> str:
        """The lockfile's text: sorted keys, no paths or timestamps, one choice per few lines."""
        return json.dumps({"format": FORMAT, **self.header, "pieces": entries}, indent=2, sort_keys=True) + "\n"


def start_tuning(autotune: bool, lockfile: Path | None, header: Callable[[], dict]) -> Tuning | None:
    """--autotune: a tuning run; a lockfile: its replay; neither: an untuned transpile (None).
    `header()` (tuning_header): what the choices hold for, asked only when tuned."""
    if autotune and lockfile is not None:
        raise TranspileError("--autotune and --tuning: choose one (--autotune measures anew, --tuning replays FILE)")
    if not autotune and lockfile is None:
        return None
    return Tuning("tune", header()) if autotune else load_tuning(lockfile, header())


def tuning_header(device: str, identity: dict) -> dict:
    """What the choices hold for: a lockfile made for another device, torch or machine is
    refused. `identity`: the target's own (targets' tuning_identity: the GPU, or the ISA)."""
    import torch

    return {"device": device, "torch": torch.__version__.split("+")[0], **identity}


def _parse_range(name: str) -> SizeRange | None:
    match = re.fullmatch(r"range_(\d+)_(\d+|max)", name)
    if not match:
        return None
    return SizeRange(int(match[1]), None if match[2] == "max" else int(match[2]))


def _refines(parts: list[SizeRange], ranges: list[SizeRange]) -> bool:
    """`parts` cover exactly the sizes of `ranges`, contiguously, none straddling two of them."""
    if not parts or not ranges or parts[0].lo != ranges[0].lo or parts[-1].hi != ranges[-1].hi:
        return False
    if any(a.hi is None or b.lo != a.hi + 1 for a, b in zip(parts, parts[1:])):
        return False
    return all(
        any(r.lo <= p.lo and (r.hi is None or (p.hi is not None and p.hi <= r.hi)) for r in ranges) for p in parts
    )


def load_tuning(path: Path, header: dict) -> Tuning:
    """Read a lockfile to replay; one line naming what is wrong otherwise."""
    name = str(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TranspileError(f"--tuning {name}: no such file; give an existing tuning.json or {REFRESH}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TranspileError(f"{name}: cannot read it ({error}); {REFRESH}") from None
    except json.JSONDecodeError as error:
        raise TranspileError(f"{name} is not valid JSON (line {error.lineno}: {error.msg}); {REFRESH}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise TranspileError(f"{name}: not a tuning lockfile of format {FORMAT} (found {found!r}); {REFRESH}")
    for key, expected in header.items():
        if data.get(key) != expected:
            raise TranspileError(
                f"{name} was tuned for {key} {data.get(key)!r}, this transpile is for {expected!r}; {REFRESH}"
            )
    pieces = data.get("pieces")
    if not isinstance(pieces, dict) or not all(
        isinstance(by_variant, dict) and all(_valid_entry(e) for e in by_variant.values())
        for by_variant in pieces.values()
    ):
        raise TranspileError(f'{name}: its "pieces" are not piece -> variant -> choices; {REFRESH}')
    return Tuning("replay", header, pieces, name)


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("benchmark_size"), int):
        return False
    for kind in ("gemm", "triton"):
        choices = entry.get(kind, {})
        if not isinstance(choices, dict) or not all(
            isinstance(c, dict) and isinstance(c.get("choice"), str) for c in choices.values()
        ):
            return False
    return True


class TuningSession:
    """The choices of one piece compiled for one variant: made by benchmark, or replayed."""

    def __init__(self, tuning: Tuning, piece: str, variant: str, benchmark_size: int, locked: dict | None):
        self.tuning = tuning
        self.piece = piece
        self.variant = variant
        self.benchmark_size = benchmark_size
        self.locked = locked
        self.made: dict[str, dict] = {"gemm": {}, "triton": {}}
        self.error: TranspileError | None = None

    @property
    def replaying(self) -> bool:
        return self.locked is not None

    def choice(self, kind: str, key: str) -> str | None:
        """The choice already made for `key` here, or the lockfile's; None when still to tune."""
        made = self.made[kind].get(key)
        if made is not None:
            return made["choice"]
        if not self.replaying:
            return None
        entry = self.locked.get(kind, {}).get(key)
        if entry is None:
            self.fail(f"{self.tuning.source} has no {kind} choice for {key} in {self.piece} {self.variant}; {REFRESH}")
        self.made[kind][key] = entry
        return entry["choice"]

    def record(self, kind: str, key: str, choice: str, timings_ms: dict[str, float]) -> None:
        self.made[kind][key] = {
            "choice": choice,
            "us": {label: _microseconds(ms) for label, ms in timings_ms.items()},
        }

    def fail(self, message: str):
        """Raise from inside Inductor, which may wrap the error; compile_variant re-raises it."""
        self.error = TranspileError(message)
        raise self.error

    def finish(self) -> dict:
        """This piece and variant's lockfile entry; a replay must have used every locked choice."""
        if self.replaying:
            for kind in ("gemm", "triton"):
                unused = sorted(set(self.locked.get(kind, {})) - set(self.made[kind]))
                if unused:
                    raise TranspileError(
                        f"{self.tuning.source} has a {kind} choice for {unused[0]} in {self.piece} {self.variant} "
                        f"that this transpile never made (the model changed?); {REFRESH}"
                    )
            return self.locked
        return {"benchmark_size": self.benchmark_size, **{k: v for k, v in self.made.items() if v}}

    @contextlib.contextmanager
    def reraised(self):
        """Inductor wraps errors raised during lowering; hand ours back unwrapped."""
        try:
            yield
        except TranspileError:
            raise
        except Exception:
            if self.error is not None:
                raise self.error from None
            raise


def _microseconds(ms: float) -> float | None:
    return round(ms * 1000, 2) if math.isfinite(ms) else None


# ---------------------------------------------------------------- GEMM backends


def choice_labels(choices) -> list[str]:
    """Stable names of Inductor's candidates: its names less their run-dependent counters
    (`triton_mm_17`), with the config they describe; repeats numbered in order."""
    labels = []
    for choice in choices:
        name = re.sub(r"_\d+$", "", str(getattr(choice, "name", type(choice).__name__)))
        description = str(getattr(choice, "description", "") or "")
        labels.append(f"{name} ({description})" if description else name)
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return unique


def selection_key(name: str, input_nodes) -> str:
    """`bmm(f32[4, s0, 64] (64*s0, 64, 1), f32[4, 64, 64] (4096, 64, 1))`: op and inputs,
    symbolic where the variant is a range, so that it reads the same at every hint."""
    parts = []
    for node in input_nodes:
        try:
            dtype = str(node.get_dtype()).replace("torch.", "")
            size = ", ".join(str(s) for s in node.get_size())
            stride = ", ".join(str(s) for s in node.get_stride())
            parts.append(f"{dtype}[{size}] ({stride})")
        except Exception:  # an input without a fixed layout
            parts.append(type(node).__name__)
    return f"{name}({', '.join(parts)})"


def open_session(
    tuning: Tuning | None, piece: str, variant: Variant, symbol_ranges: dict, dispatch_symbol
) -> TuningSession | None:
    """The session of one compile of a tuned transpile; None when the transpile is not tuned."""
    if tuning is None:
        return None
    export_hint = symbol_ranges[dispatch_symbol][2] if dispatch_symbol in symbol_ranges else variant.range.lo
    return tuning.session(piece, variant, export_hint)


def lockfile_text(tuning: Tuning | None, pieces) -> str | None:
    """tuning.json of the package: every piece and variant's entry; None when not tuned."""
    if tuning is None:
        return None
    return tuning.lockfile({p.module_name: {v.variant.name: v.tuning for v in p.variants} for p in pieces})


@contextlib.contextmanager
def tuned(session: TuningSession | None):
    """Around one compile: GEMM choices decided here, and our errors handed back unwrapped."""
    if session is None:
        yield
        return
    with session.reraised(), gemm_choices(session):
        yield


@contextlib.contextmanager
def gemm_choices(session: TuningSession | None):
    """While Inductor lowers under this context, each GEMM selection with several candidates
    is decided here: benchmarked once and recorded, or replayed from the lockfile."""
    if session is None:
        yield
        return
    from torch._inductor.select_algorithm import AlgorithmSelectorCache

    original = AlgorithmSelectorCache.__call__

    def choose(self, name, choices, input_nodes, layout, *args, **kwargs):
        for preprocess in getattr(self, "preprocessing_fns", ()):
            choices = preprocess(choices)
        if len(choices) <= 1:
            return original(self, name, choices, input_nodes, layout, *args, **kwargs)
        key = selection_key(name, input_nodes)
        labels = choice_labels(choices)
        chosen = session.choice("gemm", key)
        if chosen is None:
            input_gen_fns = kwargs.get("input_gen_fns", args[0] if args else None)
            timings = self.benchmark(choices, input_nodes, layout, input_gen_fns)
            by_label = {label: float(timings.get(c, math.inf)) for c, label in zip(choices, labels)}
            finite = [label for label in labels if math.isfinite(by_label[label])]
            if not finite:
                session.fail(f"every candidate of {key} failed to run while tuning {session.piece} {session.variant}")
            chosen = min(finite, key=lambda label: (by_label[label], labels.index(label)))
            session.record("gemm", key, chosen, by_label)
        kept = [c for c, label in zip(choices, labels) if label == chosen]
        if not kept:
            session.fail(
                f"{session.tuning.source} chose {chosen!r} for {key} in {session.piece} {session.variant}, "
                f"which is not among Inductor's candidates ({', '.join(labels)}); {REFRESH}"
            )
        return original(self, name, kept, input_nodes, layout, *args, **kwargs)

    AlgorithmSelectorCache.__call__ = choose
    try:
        yield
    finally:
        AlgorithmSelectorCache.__call__ = original
