#!/usr/bin/env python3
"""Benchmark a transpiled package against eager PyTorch, torch.compile and AOTInductor.

    scripts/bench MODEL.py [--ranges 1-16,17-256] [--sizes 1,8] [--repeats N] [--out DIR] [--quick]

Every measurement runs in a fresh subprocess (scripts/bench_worker.py) and variants
are interleaved (A B C A B C ...) so that drift on the machine hits all of them alike.
Sections:

  import     import cost of the package over `import torch`; torch._dynamo/_inductor modules
  ttfo       time to first output: eager, torch.compile cold / warm cache, AOTInductor, package
  steady     steady-state latency per size: eager, torch.compile(dynamic=True), package
  stitch     stitching overhead: the emitted stitch.forward against torch.fx GraphModules
             running the same split graph and compiled pieces (scripts/bench_models/trivial_pieces.py)
  memory     peak memory of one forward: package, package without stitch.py's `del`s,
             torch.compile, eager
  transpile  transpile time (cold and warm Inductor cache) and package size at several depths
             (TINY_LLAMA_LAYERS)

Writes OUT/bench.md (also printed) and OUT/bench.json (all samples).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from harness import (
    format_number as fmt,
)
from harness import (
    format_ratio as fmt_ratio,
)
from harness import (
    format_summary,
    machine_info,
    parse_transpile_summary,
    ratio,
    result_line,
    summarize,
)
from harness import (
    markdown_table as table,
)

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
WORKER = SCRIPTS / "bench_worker.py"
TRIVIAL_MODEL = SCRIPTS / "bench_models" / "trivial_pieces.py"
SECTIONS = ("import", "ttfo", "steady", "stitch", "memory", "transpile")

# The targets of the issue; the harness reports against them and is never tuned to them.
TARGETS = {
    "ttfo_vs_eager": 1.1,  # package time to first output (after import torch) / eager's, at most
    "ttfo_vs_compile_warm": 10.0,  # torch.compile warm / package, at least
    "import_ms": 20.0,  # import cost over import torch, at most
    "import_dynamo_inductor_modules": 0,
    "steady_vs_compile": 1.0,  # package / torch.compile median latency, at most, every size
    "stitch_vs_graphmodule": 2.0,  # GraphModule overhead / stitch overhead, at least
    "transpile_32_vs_2": 1.5,  # transpile time at 32 layers / at 2 layers, at most
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ statistics
# The figures come from scripts/harness.py; these names keep the report's own format:
# en dash between min and max, a single sample shown as its value.


def stats(values: list) -> dict:
    return summarize(values, keep_samples=True)


def fmt_stats(s: dict, scale=1.0, unit="", digits=None) -> str:
    return format_summary(s, scale, unit, digits, dash="\u2013", single_as_median=True)


# ---------------------------------------------------------------------- subprocesses


class WorkerError(RuntimeError):
    pass


class Runner:
    def __init__(self, work: Path, verbose: bool, threads: int | None = None):
        self.work = work
        self.verbose = verbose
        self.base_env = dict(os.environ)
        # Nothing the harness runs writes to the user's Inductor cache.
        self.base_env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache-warm")
        self.base_env.pop("TORCH_COMPILE_DEBUG", None)
        self.base_env["PYTHONWARNINGS"] = "ignore"
        # Measured processes only; transpile runs keep the defaults.
        self.worker_env = thread_env(threads) if threads else {}
        self.log_file = open(work / "subprocesses.log", "a")

    def worker(self, mode: str, params: dict, env: dict | None = None, timeout: float = 900) -> tuple[float, dict]:
        """Run one worker in a fresh process; return (process wall seconds, its result)."""
        command = [sys.executable, str(WORKER), mode, json.dumps(params)]
        wall, stdout, stderr = self._run(command, {**self.worker_env, **(env or {})}, timeout)
        result = result_line(stdout, "BENCH_RESULT ")
        if result is not None:
            return wall, result
        raise WorkerError(f"worker {mode} {params.get('variant', '')} gave no result:\n{stderr[-3000:]}")

    def command(self, command: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[float, str, str]:
        return self._run(command, env, timeout)

    def _run(self, command, env, timeout):
        full_env = dict(self.base_env)
        full_env.update(env or {})
        started = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)
        wall = time.perf_counter() - started
        self.log_file.write(f"$ {' '.join(command)[:400]}\n  rc={process.returncode} wall={wall:.3f}s\n")
        if process.returncode != 0:
            self.log_file.write(process.stderr[-5000:] + "\n")
        self.log_file.flush()
        if process.returncode != 0:
            raise WorkerError(f"{' '.join(command)[:300]} exited {process.returncode}:\n{process.stderr[-3000:]}")
        return wall, process.stdout, process.stderr


# ----------------------------------------------------------------------------- set-up


def _cpu_busy_seconds() -> float | None:
    """Busy CPU time of the whole machine so far (all CPUs, /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Contention:
    """How much of the machine processes other than the harness and its children used."""

    def __init__(self):
        self.busy = _cpu_busy_seconds()
        self.ours = self._ours()
        self.wall = time.perf_counter()

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def fraction(self) -> float | None:
        busy = _cpu_busy_seconds()
        if busy is None or self.busy is None:
            return None
        others = (busy - self.busy) - (self._ours() - self.ours)
        capacity = (time.perf_counter() - self.wall) * (os.cpu_count() or 1)
        return max(0.0, others / capacity) if capacity > 0 else None


def inputs_for_sizes(model_path: Path, imports: list[str], dispatch: dict, sizes: list[int]) -> dict:
    """Example inputs, and inputs with every dimension tied to the dispatch dimension
    (the same torch.export symbol) resized to each size by cycling the example's values."""
    import torch

    from transpiler.capture import export_model
    from transpiler.model_file import load_model_file

    model_file = load_model_file(model_path, imports)
    captured = export_model(model_file)
    placeholders = {n.name: n for n in captured.graph_module.graph.find_nodes(op="placeholder")}
    dispatch_value = placeholders[dispatch["input"]].meta["val"]
    symbol = dispatch_value.shape[dispatch["dim"]].node.expr

    def tied_dims(name):
        value = placeholders[name].meta["val"]
        return [d for d, s in enumerate(value.shape) if isinstance(s, torch.SymInt) and s.node.expr == symbol]

    def serialize(tensors):
        return [
            {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "data": t.reshape(-1).tolist()}
            for t in tensors
        ]

    dispatch_index = captured.user_inputs.index(dispatch["input"])
    result = {
        "example": serialize(model_file.example_inputs),
        "dispatch_index": dispatch_index,
        "sizes": {},
    }
    example_size = int(model_file.example_inputs[dispatch_index].shape[dispatch["dim"]])
    for size in sorted(set(sizes) | {example_size}):
        tensors = []
        for name, example in zip(captured.user_inputs, model_file.example_inputs):
            tensor = example
            for dim in tied_dims(name):
                index = torch.arange(size) % example.shape[dim]
                tensor = tensor.index_select(dim, index)
            tensors.append(tensor.contiguous())
        result["sizes"][str(size)] = serialize(tensors)
    return result


def package_stats(folder: Path) -> dict:
    total, files, by_kind = 0, 0, {}
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            total += size
            files += 1
            if path.name == "weights.safetensors":
                kind = "weights"
            elif path.suffix == ".so":
                kind = "kernel .so"
            elif path.suffix == ".cpp":
                kind = "kernel .cpp"
            elif path.suffix == ".py":
                kind = ".py"
            else:
                kind = "other"
            by_kind[kind] = by_kind.get(kind, 0) + size
    return {"bytes": total, "files": files, "bytes_by_kind": by_kind}


def strip_dels(package: Path) -> int:
    """Remove every `del` statement from package/stitch.py (libcst); return how many."""
    import libcst as cst

    class StripDel(cst.CSTTransformer):
        removed = 0

        def leave_SimpleStatementLine(self, original_node, updated_node):
            body = [s for s in updated_node.body if not isinstance(s, cst.Del)]
            StripDel.removed += len(updated_node.body) - len(body)
            if not body:
                return cst.RemoveFromParent()
            return updated_node.with_changes(body=body)

    path = package / "stitch.py"
    module = cst.parse_module(path.read_text())
    path.write_text(module.visit(StripDel()).code)
    return StripDel.removed


def release_before_call(package: Path) -> int:
    """Prototype of a stitching change (not what transpile emits): where a compiled-piece
    call is followed by `del` of values it reads, build the argument list first and delete
    those names before the call, so the list the piece clears holds the last reference and
    Inductor's own `del`s inside the piece free them mid-piece. Returns how many calls changed."""
    import libcst as cst

    changed = 0

    def is_piece_call(statement) -> bool:
        if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
            return False
        assign = statement.body[0]
        return (
            isinstance(assign, cst.Assign)
            and isinstance(assign.value, cst.Call)
            and len(assign.value.args) == 1
            and isinstance(assign.value.args[0].value, cst.List)
        )

    class Rewrite(cst.CSTTransformer):
        def leave_FunctionDef(self, original_node, updated_node):
            nonlocal changed
            if updated_node.name.value != "forward":
                return updated_node
            body = list(updated_node.body.body)
            out = []
            i = 0
            while i < len(body):
                statement = body[i]
                following = body[i + 1] if i + 1 < len(body) else None
                if (
                    is_piece_call(statement)
                    and isinstance(following, cst.SimpleStatementLine)
                    and len(following.body) == 1
                    and isinstance(following.body[0], cst.Del)
                ):
                    assign = statement.body[0]
                    out.append(
                        cst.SimpleStatementLine(
                            body=[
                                cst.Assign(
                                    targets=[cst.AssignTarget(cst.Name("_args"))], value=assign.value.args[0].value
                                )
                            ],
                            leading_lines=statement.leading_lines,
                        )
                    )
                    out.append(following.with_changes(leading_lines=[]))
                    call = assign.value.with_changes(args=[cst.Arg(cst.Name("_args"))])
                    out.append(cst.SimpleStatementLine(body=[assign.with_changes(value=call)]))
                    changed += 1
                    i += 2
                    continue
                out.append(statement)
                i += 1
            return updated_node.with_changes(body=updated_node.body.with_changes(body=out))

    path = package / "stitch.py"
    path.write_text(cst.parse_module(path.read_text()).visit(Rewrite()).code)
    return changed


def transpile_once(runner: Runner, model: Path, out: Path, args, env: dict, name: str | None = None) -> dict:
    command = [shutil.which("transpile") or "transpile", str(model), "-o", str(out)]
    if name:
        command += ["--name", name]
    if args.ranges:
        command += ["--ranges", args.ranges]
    if args.sizes:
        command += ["--sizes", args.sizes]
    for module in args.imports:
        command += ["--import", module]
    wall, stdout, _ = runner.command(command, env)
    return {"wall_s": wall, **{k: v for k, v in parse_transpile_summary(stdout).items() if k != "stages"}}


# --------------------------------------------------------------------------- sections


class Bench:
    def __init__(self, args):
        self.args = args
        self.model = args.model.resolve()
        self.work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="transpile-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.runner = Runner(self.work, args.verbose, args.threads[0])
        self.results: dict = {"sections": {}, "errors": {}}
        self.package_parent = self.work / "pkg"
        self.package_name = args.name or self.model.stem
        # Packages built elsewhere (--package LABEL=DIR), measured beside this one's.
        self.other_packages = dict(args.packages)

    # set-up ------------------------------------------------------------------------
    def setup(self):
        import torch

        info = machine_info()
        self.results["header"] = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": info,
            "torch": torch.__version__,
            "torch_threads": self.args.threads[0] or torch.get_num_threads(),
            "threads_note": threads_note(self.args.threads),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "model": str(self.model),
            "ranges": self.args.ranges,
            "sizes": self.args.sizes,
            "repeats": self.args.repeats,
            "quick": self.args.quick,
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        }
        setup = self.results["setup"] = {}

        log(f"work folder {self.work}")
        log("transpiling the model (Inductor cache: the harness's own folder)")
        setup["transpile"] = transpile_once(
            self.runner, self.model, self.package_parent, self.args, {}, self.package_name
        )
        package = self.package_parent / self.package_name
        manifest = json.loads((package / "manifest.json").read_text())
        self.manifest = manifest
        self.dispatch = manifest["dispatch"]
        sizes = set(manifest["sizes"])
        for lo, hi in manifest["ranges"]:
            sizes.update([lo, hi] if hi is not None else [lo])
        self.steady_sizes = sorted(sizes)
        setup["steady_sizes"] = self.steady_sizes

        log("writing inputs")
        self.inputs_file = self.work / "inputs.json"
        inputs = inputs_for_sizes(self.model, self.args.imports, self.dispatch, self.steady_sizes)
        self.inputs_file.write_text(json.dumps(inputs))
        self.example_size = inputs["example"][inputs["dispatch_index"]]["shape"][self.dispatch["dim"]]

        log("copying the package without stitch.py's `del`s")
        self.nodels_parent = self.work / "pkg-nodels"
        shutil.rmtree(self.nodels_parent, ignore_errors=True)
        shutil.copytree(package, self.nodels_parent / self.package_name)
        setup["dels_removed"] = strip_dels(self.nodels_parent / self.package_name)
        self.early_parent = self.work / "pkg-early-release"
        shutil.rmtree(self.early_parent, ignore_errors=True)
        shutil.copytree(package, self.early_parent / self.package_name)
        setup["early_release_calls"] = release_before_call(self.early_parent / self.package_name)

        self.check_outputs(setup)

    def check_outputs(self, setup):
        """Each package against eager at every size: the benchmark is meaningless if they differ."""
        import torch
        from harness import import_package, load_model_file

        model = load_model_file(self.model, self.args.imports).model.eval()
        inputs = json.loads(self.inputs_file.read_text())
        packages = {"package": self.package_parent / self.package_name}
        packages.update({f"package:{label}": folder for label, folder in self.other_packages.items()})
        for label, folder in packages.items():
            compiled = import_package(folder.parent, folder.name).load()
            diffs = {}
            with torch.no_grad():
                for size in self.steady_sizes:
                    args = tuple(
                        torch.tensor(s["data"], dtype=getattr(torch, s["dtype"])).reshape(s["shape"])
                        for s in inputs["sizes"][str(size)]
                    )
                    expected, got = model(*args), compiled(*args)
                    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
                    got = got[0] if isinstance(got, (tuple, list)) else got
                    diffs[str(size)] = float((expected - got).abs().max())
            key = "max_abs_diff_package_vs_eager" + ("" if label == "package" else f" ({label})")
            setup[key] = diffs
        for folder in {str(f.parent) for f in packages.values()}:
            sys.path.remove(folder)

    def common(self, **extra) -> dict:
        return {
            "model": str(self.model),
            "imports": self.args.imports,
            "inputs": str(self.inputs_file),
            "package_parent": str(self.package_parent),
            "package_name": self.package_name,
            **extra,
        }

    # import ------------------------------------------------------------------------
    def section_import(self):
        repeats = self.args.import_repeats
        variants = ("torch", "package", "package_load")
        runs = {v: [] for v in variants}
        walls = {v: [] for v in variants}
        for r in range(repeats):
            for variant in variants:
                wall, result = self.runner.worker("import", self.common(variant=variant))
                runs[variant].append(result)
                walls[variant].append(wall)
        log(f"import: {repeats} x {variants}")
        imported = runs["package"] + runs["package_load"]
        loaded = runs["package_load"]
        section = {
            "method": (
                "Fresh processes, interleaved: (a) `import torch` only; (b) `import torch` then "
                "`import PACKAGE`; (c) as (b), then load() and one call. Import cost = the in-process "
                "perf_counter delta around `import PACKAGE` (torch already imported), from (b) and (c); "
                "the whole-process delta is the median wall time of (b) minus that of (a). Module counts: "
                "names in sys.modules equal to or under torch._dynamo / torch._inductor."
            ),
            "import_torch_s": stats([r["import_torch_s"] for v in variants for r in runs[v]]),
            "import_package_s": stats([r["import_package_s"] for r in imported]),
            "load_s": stats([r["load_s"] for r in loaded]),
            "first_call_s": stats([r["first_call_s"] for r in loaded]),
            "process_wall_torch_only_s": stats(walls["torch"]),
            "process_wall_torch_and_package_s": stats(walls["package"]),
            "process_wall_with_load_and_call_s": stats(walls["package_load"]),
            "process_wall_delta_s": (statistics.median(walls["package"]) - statistics.median(walls["torch"])),
            "dynamo_inductor_after_torch": max(r["dynamo_inductor_after_torch"] for v in variants for r in runs[v]),
            "dynamo_inductor_after_import": max(r["dynamo_inductor_after_import"] for r in imported),
            "dynamo_inductor_after_first_call": max(r["dynamo_inductor_after_first_call"] for r in loaded),
            "dynamo_inductor_names": loaded[-1]["dynamo_inductor_names"],
            "new_modules_on_import": loaded[-1]["new_modules_on_import"],
            "new_module_names": loaded[-1]["new_module_names"],
        }
        self.results["sections"]["import"] = section

    # time to first output ---------------------------------------------------------------
    def section_ttfo(self):
        setup = self.results["setup"]
        aoti_package = self.work / "aoti" / f"{self.package_name}.pt2"
        variants = ["eager", "compile_cold", "compile_warm", "aoti", "package"]
        if not self.args.skip_aoti:
            log("AOTInductor: export + aoti_compile_and_package (once, not timed as first output)")
            aoti_package.parent.mkdir(parents=True, exist_ok=True)
            try:
                wall, result = self.runner.worker(
                    "aoti_compile",
                    self.common(aoti_package=str(aoti_package)),
                    env={"TORCHINDUCTOR_CACHE_DIR": str(self.work / "inductor-cache-aoti")},
                )
                setup["aoti_compile"] = {"wall_s": wall, **result}
            except WorkerError as error:
                self.results["errors"]["aoti_compile"] = str(error)
                variants.remove("aoti")
        else:
            variants.remove("aoti")
        log("torch.compile: one untimed run to fill the warm cache")
        wall, _ = self.runner.worker("ttfo", self.common(variant="compile"))
        setup["compile_cache_fill_wall_s"] = wall

        samples = {
            v: {"process_wall_s": [], "after_import_torch_s": [], "import_torch_s": [], "checksum": []}
            for v in variants
        }
        for r in range(self.args.repeats):
            for variant in variants:
                env, params = {}, self.common(variant=variant)
                if variant == "compile_cold":
                    cache = Path(tempfile.mkdtemp(prefix="cold-", dir=self.work))
                    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
                    params["variant"] = "compile"
                elif variant == "compile_warm":
                    params["variant"] = "compile"
                elif variant == "aoti":
                    params["aoti_package"] = str(aoti_package)
                wall, result = self.runner.worker("ttfo", params, env=env)
                if variant == "compile_cold":
                    shutil.rmtree(env["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)
                samples[variant]["process_wall_s"].append(wall)
                samples[variant]["after_import_torch_s"].append(result["after_import_torch_s"])
                samples[variant]["import_torch_s"].append(result["import_torch_s"])
                samples[variant]["checksum"].append(result["checksum"])
            log(f"ttfo: round {r + 1}/{self.args.repeats} done")
        section = {
            "method": (
                "One fresh process per sample, variants interleaved. process_wall: the harness's "
                "wall clock around the whole subprocess (interpreter start to exit). after_import_torch: "
                "perf_counter in the process from just after `import torch` to the first output "
                "(includes building the example inputs from a JSON list, identical for every variant). "
                "eager: exec MODEL.py + forward. compile_cold: torch.compile(model) (default options) "
                "with a fresh, empty TORCHINDUCTOR_CACHE_DIR. compile_warm: the same with a cache filled "
                "by an earlier identical run (FX graph and AOTAutograd caches). aoti: "
                "torch._inductor.aoti_load_package + first call of a package built beforehand by "
                "aoti_compile_and_package (dynamic shapes of MODEL.py). package: import + load() + first call."
            ),
            "variants": {},
        }
        eager = statistics.median(samples["eager"]["after_import_torch_s"])
        eager_wall = statistics.median(samples["eager"]["process_wall_s"])
        for variant, data in samples.items():
            after = stats(data["after_import_torch_s"])
            wall = stats(data["process_wall_s"])
            section["variants"][variant] = {
                "after_import_torch_s": after,
                "process_wall_s": wall,
                "import_torch_s": stats(data["import_torch_s"]),
                "checksums": data["checksum"],
                "after_import_vs_eager": ratio(after["median"], eager),
                "wall_vs_eager": ratio(wall["median"], eager_wall),
            }
        self.results["sections"]["ttfo"] = section

    # steady state ------------------------------------------------------------------
    def section_steady(self):
        variants = [v for v in self.args.steady_variants.split(",") if v]
        variants += [f"package:{label}" for label in self.other_packages]
        thread_counts = self.args.threads
        labels = [steady_label(v, t, thread_counts) for t in thread_counts for v in variants]
        per_label = {label: {str(s): [] for s in self.steady_sizes} for label in labels}
        raw = {label: [] for label in labels}
        for r in range(self.args.repeats):
            for threads in thread_counts:
                env = thread_env(threads)
                for variant in variants:
                    params = self.common(
                        variant="package" if variant.startswith("package:") else variant,
                        sizes=self.steady_sizes,
                        budget_s=self.args.steady_budget,
                        warmup=5,
                        compile={"dynamic": True},
                    )
                    if variant.startswith("package:"):
                        folder = self.other_packages[variant.split(":", 1)[1]]
                        params.update(package_parent=str(folder.parent), package_name=folder.name)
                    _, result = self.runner.worker("steady", params, env=env)
                    label = steady_label(variant, threads, thread_counts)
                    raw[label].append(result)
                    for size, data in result["sizes"].items():
                        per_label[label][size].append(data["median_us"])
            log(f"steady: round {r + 1}/{self.args.repeats} done")
        others = "".join(
            f" package:{label} is the package in {folder} (built elsewhere, e.g. by another commit of the transpiler)."
            for label, folder in self.other_packages.items()
        )
        section = {
            "method": (
                f"One fresh process per variant and round ({self.args.repeats} rounds, interleaved"
                f"{', thread counts interleaved too' if len(thread_counts) > 1 else ''}). "
                "In each, per size: one call (compiles, for torch.compile), 5 warm-up calls, then calls "
                f"timed one by one with perf_counter_ns for {self.args.steady_budget} s (at least 20), "
                "garbage collector off, under torch.no_grad(). The per-process median is one sample; "
                "the table shows the median of those samples (min–max across processes). "
                "torch.compile uses dynamic=True (size 1 is specialized by Dynamo's 0/1 rule)." + others
            ),
            "sizes": self.steady_sizes,
            "variants": variants,
            "threads": thread_counts,
            "median_us": {v: {s: stats(vals) for s, vals in d.items()} for v, d in per_label.items()},
            "raw": raw,
        }
        self.results["sections"]["steady"] = section

    # stitching overhead --------------------------------------------------------------
    def section_stitch(self):
        model = TRIVIAL_MODEL
        parent = self.work / "pkg-trivial"
        name = "trivial_pieces"
        size = 4
        log("transpiling the trivial-pieces model")
        self.results["setup"]["trivial_transpile"] = transpile_once(
            self.runner, model, parent, argparse.Namespace(ranges=None, sizes=str(size), imports=[]), {}, name
        )
        manifest = json.loads((parent / name / "manifest.json").read_text())
        inputs_file = self.work / "inputs-trivial.json"
        inputs_file.write_text(json.dumps(inputs_for_sizes(model, [], manifest["dispatch"], [size])))
        runs = []
        for r in range(self.args.stitch_processes):
            _, result = self.runner.worker(
                "stitch",
                {
                    "model": str(model),
                    "inputs": str(inputs_file),
                    "package_parent": str(parent),
                    "package_name": name,
                    "split_ops": manifest["split_ops"],
                    "size": size,
                    "blocks": self.args.stitch_blocks,
                    "block_calls": 20,
                },
            )
            runs.append(result)
        log(f"stitch: {len(runs)} processes")
        calls = runs[0]["compiled_calls"] + runs[0]["split_calls"]
        keys = runs[0]["results"].keys()
        medians = {k: stats([run["results"][k]["median_us"] for run in runs]) for k in keys}
        summary = {}
        for label, real, stub in (
            ("stitch (emitted)", "stitch", "stitch_stub"),
            ("GraphModule, flat", "graphmodule_flat", "graphmodule_flat_stub"),
            ("GraphModule, vLLM-style split_module", "graphmodule_vllm", "graphmodule_vllm_stub"),
        ):
            forward = medians[real]["median"]
            stubbed = medians[stub]["median"]
            summary[label] = {
                "forward_us": forward,
                "forward_us_per_call": forward / calls,
                "overhead_us": stubbed,
                "overhead_us_per_call": stubbed / calls,
                "overhead_us_min_max": [medians[stub]["min"], medians[stub]["max"]],
            }
        base = summary["stitch (emitted)"]["overhead_us"]
        for value in summary.values():
            value["overhead_vs_stitch"] = ratio(value["overhead_us"], base)
            value["forward_vs_stitch"] = ratio(value["forward_us"], summary["stitch (emitted)"]["forward_us"])
        self.results["sections"]["stitch"] = {
            "method": (
                f"{TRIVIAL_MODEL.relative_to(REPO)} ({runs[0]['compiled_calls']} compiled-piece calls of "
                f"{runs[0]['unique_pieces']} unique pieces, {runs[0]['split_calls']} splitting-op calls: "
                f"{calls} calls per forward) transpiled with --sizes {size}, run at size {size}. "
                "GraphModules run the transpiler's split_graph result with the package's own compiled "
                "piece functions for that size (no per-call dispatch, which favours them): 'flat' inlines "
                "the splitting ops and calls each piece function from one graph; 'vLLM-style' is "
                "split_module's shape: a submodule per piece, compiled ones replaced by a callable "
                "taking positional args, splitting ones left as GraphModules. 'stitch' calls "
                "stitch.forward(weights, *inputs) (dispatch included; 'package_call' adds the input "
                "checks of CompiledModel.__call__). Overhead = the forward with every compiled piece "
                "function and every splitting op replaced by a function returning its recorded outputs "
                "(the same stubs for every runner; the ops are reached through the same "
                "torch.ops.<ns>.<op>.<overload> attribute chain), i.e. the stitching code alone plus "
                "one trivial call per piece/op. Timing: "
                f"{self.args.stitch_blocks} rounds per process; in each, every runner in turn runs a block of "
                "20 calls (perf_counter_ns around the block, GC off); a process's figure is the median "
                f"block mean; the table shows the median over {len(runs)} processes "
                "(min–max in bench.json)."
            ),
            "calls_per_forward": calls,
            "medians_us": medians,
            "summary": summary,
            "max_abs_diff_vs_stitch": [run["max_abs_diff_vs_stitch"] for run in runs],
            "stub_method": runs[0]["stub_method"],
        }

    # memory --------------------------------------------------------------------------
    def section_memory(self):
        variants = ["package", "package_nodels", "compile", "eager"]
        if self.results["setup"].get("early_release_calls"):
            variants.insert(2, "package_early_release")
        sizes = sorted({self.example_size, max(self.steady_sizes)})
        data = {v: {str(s): [] for s in sizes} for v in variants}
        for r in range(self.args.memory_repeats):
            for variant in variants:
                params = self.common(variant=variant, sizes=sizes, compile={"dynamic": True})
                if variant == "package_nodels":
                    params["package_parent"] = str(self.nodels_parent)
                elif variant == "package_early_release":
                    params["package_parent"] = str(self.early_parent)
                    params["variant"] = "package"
                _, result = self.runner.worker("memory", params)
                for size, values in result["sizes"].items():
                    data[variant][size].append(values)
        log(f"memory: {self.args.memory_repeats} rounds")
        section = {
            "method": (
                "Fresh process per variant and round; per size: 3 warm-up calls (torch.compile compiles "
                "there), then (1) allocator peak: one forward under torch.profiler with "
                "profile_memory=True; every allocation/free through c10's CPU allocator carries the "
                "running total of bytes allocated since profiling started; peak = its maximum during "
                "the call (outputs included, weights and inputs excluded as they exist before). It does "
                "not see memory that does not come from torch's allocator (oneDNN scratch, malloc "
                "inside kernels, Python objects). (2) RSS: VmHWM reset to VmRSS by writing 5 to "
                "/proc/self/clear_refs, one forward, then VmHWM - VmRSS-before: coarse (pages; freed "
                "heap memory is reused without growing RSS), shown for reference. tracemalloc is not "
                "used: it does not see torch's allocations. package_nodels is the same package with "
                f"the {self.results['setup'].get('dels_removed')} `del` statements of stitch.py removed "
                "(libcst). package_early_release is a prototype of a stitching change, not what "
                f"transpile emits: at the {self.results['setup'].get('early_release_calls')} compiled-piece "
                "calls followed by a `del`, the argument list is built and those names deleted before the "
                "call, so the list the piece clears holds the last reference."
            ),
            "sizes": sizes,
            "results": {
                v: {
                    s: {
                        "peak_bytes": stats([x["peak_bytes"] for x in vals]),
                        "retained_bytes": stats([x["retained_bytes"] for x in vals]),
                        "allocations": stats([x["allocations"] for x in vals]),
                        "rss_hwm_delta_kib": stats([x["rss_hwm_delta_kib"] for x in vals]),
                    }
                    for s, vals in d.items()
                }
                for v, d in data.items()
            },
        }
        self.results["sections"]["memory"] = section

    # transpile time and size ---------------------------------------------------------
    def section_transpile(self):
        layers = [int(x) for x in self.args.layers.split(",")]
        if self.args.layers_env not in self.model.read_text():
            self.results["sections"]["transpile"] = {
                "skipped": f"{self.model.name} does not read {self.args.layers_env}; pass --layers-env NAME"
            }
            log(self.results["sections"]["transpile"]["skipped"])
            return
        cold = not self.args.quick and not self.args.no_cold_transpile
        runs = {L: {"cold": [], "warm": []} for L in layers}
        sizes = {}
        caches = {}

        def run(L, kind, cache):
            out = self.work / f"transpile-{L}"
            result = transpile_once(
                self.runner,
                self.model,
                out,
                self.args,
                {self.args.layers_env: str(L), "TORCHINDUCTOR_CACHE_DIR": str(cache)},
                self.package_name,
            )
            if kind:
                runs[L][kind].append(result)
                sizes[L] = package_stats(out / self.package_name)
                log(f"transpile {kind} {L} layers: {result['wall_s']:.1f} s")

        if cold:
            policy = (
                "cold: a fresh, empty TORCHINDUCTOR_CACHE_DIR per run (no FX-graph cache hits, every kernel "
                "built by the C++ compiler). warm: the same command again right after, with the cache its "
                "cold run left"
            )
        else:
            shared = Path(tempfile.mkdtemp(prefix="tcache-shared-", dir=self.work))
            policy = (
                f"warm only (cold runs skipped by --quick / --no-cold-transpile): one cache folder shared "
                f"by all depths, filled first by an untimed run at {max(layers)} layers (whose pieces "
                "include every smaller depth's)"
            )
            run(max(layers), None, shared)
            caches = {L: shared for L in layers}
        for r in range(self.args.transpile_repeats):
            if cold:
                for L in layers:
                    caches[L] = Path(tempfile.mkdtemp(prefix=f"tcache-{L}-", dir=self.work))
                    run(L, "cold", caches[L])
            for L in layers:
                run(L, "warm", caches[L])
        for L in layers:
            shutil.rmtree(self.work / f"transpile-{L}", ignore_errors=True)
        for cache in set(caches.values()):
            shutil.rmtree(cache, ignore_errors=True)
        self.results["sections"]["transpile"] = {
            "method": (
                f"`transpile MODEL.py -o OUT --name {self.package_name}"
                f"{' --ranges ' + self.args.ranges if self.args.ranges else ''}"
                f"{' --sizes ' + self.args.sizes if self.args.sizes else ''}` in a fresh process with "
                f"{self.args.layers_env}=L. Inductor cache policy: " + policy + ". With a warm cache "
                "Inductor's FX graph cache and built kernels are reused; torch.export, AOTAutograd "
                "tracing (transpile turns AOTAutograd's cache off), splitting, the libcst rewrite, "
                "rendering and black still run. wall: the process's wall clock; tool: the seconds transpile reports itself "
                "(from loading MODEL.py to the rendered package, excluding interpreter start, "
                "`import torch` and writing). Package size: every file under OUT/NAME, nothing excluded."
            ),
            "layers": layers,
            "runs": {str(L): v for L, v in runs.items()},
            "package": {str(L): v for L, v in sizes.items()},
            "cold": cold,
        }

    def wait_quiet(self, section: str):
        """Wait (at most --wait-quiet seconds) until other processes use < 10% of the CPUs."""
        deadline = time.perf_counter() + self.args.wait_quiet
        waited = 0.0
        while True:
            probe = Contention()
            time.sleep(2.0)
            share = probe.fraction()
            if share is None or share < 0.10 or time.perf_counter() >= deadline:
                break
            waited += 2.0
        self.results.setdefault("waited_for_quiet_s", {})[section] = waited
        if waited:
            log(f"waited {waited:.0f} s for other processes to quieten before {section} (last share {share:.0%})")

    # ------------------------------------------------------------------------------
    def run(self):
        wanted = self.args.only.split(",") if self.args.only else list(SECTIONS)
        started = time.perf_counter()
        self.setup()
        for section in SECTIONS:
            if section not in wanted:
                continue
            if self.args.wait_quiet:
                self.wait_quiet(section)
            section_started = time.perf_counter()
            contention = Contention()
            try:
                getattr(self, f"section_{section}")()
            except Exception as error:  # keep going: report what could be measured
                log(f"section {section} failed: {error}")
                self.results["errors"][section] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}"
            self.results.setdefault("section_seconds", {})[section] = time.perf_counter() - section_started
            self.results.setdefault("other_processes_cpu_share", {})[section] = contention.fraction()
        self.results["total_seconds"] = time.perf_counter() - started


# --------------------------------------------------------------------------- reporting

VARIANT_TITLES = {"eager": "eager", "compile": "torch.compile (dynamic)", "package": "package"}


def threads_note(thread_counts: list[int]) -> str:
    if thread_counts == [0]:
        return "torch's default intra-op threads (--threads 0)"
    counts = " and ".join(str(t) for t in thread_counts)
    return f"OMP_NUM_THREADS={counts} in every measured process (--threads)"


def thread_env(threads: int) -> dict:
    """The environment of a measured process at `threads` intra-op threads (0: torch's default)."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def steady_label(variant: str, threads: int | None, thread_counts: list) -> str:
    """The steady section's key of a variant: its name, with the thread count when several are measured."""
    return variant if len(thread_counts) <= 1 else f"{variant} @{threads}t"


def steady_table(section: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the steady-state table: a row per size (and thread count, when
    several), a column per variant, then the package's ratio to each other variant."""
    thread_counts = section.get("threads", [None])
    variants = section.get("variants", ["eager", "compile", "package"])
    # Ratios to torch.compile first, then eager (the report's order before packages of other builds).
    others = [v for v in ("compile", "eager") if v in variants] + [
        v for v in variants if v not in ("package", "compile", "eager")
    ]
    several = len(thread_counts) > 1
    header = ["size", *(["threads"] if several else [])]
    header += [VARIANT_TITLES.get(v, v) for v in variants]
    header += [f"package/{v}" for v in others] if "package" in variants else []
    rows = []
    for size in section["sizes"]:
        for threads in thread_counts:
            cells = {v: section["median_us"][steady_label(v, threads, thread_counts)][str(size)] for v in variants}
            row = [str(size), *([str(threads)] if several else [])]
            row += [fmt_stats(cells[v], 1, " us") for v in variants]
            if "package" in variants:
                row += [fmt_ratio(ratio(cells["package"]["median"], cells[v]["median"])) for v in others]
            rows.append(row)
    return header, rows


def targets(results: dict) -> list[list[str]]:
    rows = []
    sections = results["sections"]

    def verdict(ok):
        return "n/a" if ok is None else ("met" if ok else "missed")

    ttfo = sections.get("ttfo")
    if ttfo:
        v = ttfo["variants"]
        package = v["package"]["after_import_torch_s"]["median"]
        eager = v["eager"]["after_import_torch_s"]["median"]
        warm = v.get("compile_warm", {}).get("after_import_torch_s", {}).get("median")
        r = ratio(package, eager)
        rows.append(
            [
                "time to first output after import torch <= 1.1x eager",
                f"package {fmt(package * 1000, ' ms')} vs eager {fmt(eager * 1000, ' ms')}: {fmt_ratio(r)}",
                verdict(None if r is None else r <= TARGETS["ttfo_vs_eager"]),
            ]
        )
        r = ratio(warm, package)
        rows.append(
            [
                "time to first output after import torch >= 10x faster than torch.compile warm",
                f"compile warm {fmt(warm, ' s') if warm else 'n/a'} / package: {fmt(r, 'x', 1)}",
                verdict(None if r is None else r >= TARGETS["ttfo_vs_compile_warm"]),
            ]
        )
    imp = sections.get("import")
    if imp:
        ms = imp["import_package_s"]["median"] * 1000
        rows.append(
            [
                "import cost <= 20 ms over import torch",
                f"{fmt(ms, ' ms')} in-process (whole-process delta {fmt(imp['process_wall_delta_s'] * 1000, ' ms')})",
                verdict(ms <= TARGETS["import_ms"]),
            ]
        )
        count = imp["dynamo_inductor_after_import"] - imp["dynamo_inductor_after_torch"]
        after_call = imp["dynamo_inductor_after_first_call"]
        rows.append(
            [
                "zero torch._dynamo / torch._inductor modules loaded",
                f"{count} by import (import torch alone: {imp['dynamo_inductor_after_torch']}); "
                f"{after_call} after load() + first call",
                verdict(count == 0 and after_call == imp["dynamo_inductor_after_torch"]),
            ]
        )
    steady = sections.get("steady")
    threads = steady.get("threads", [None]) if steady else [None]
    package_label = steady_label("package", threads[0], threads)
    compile_label = steady_label("compile", threads[0], threads)
    if steady and package_label in steady["median_us"] and compile_label in steady["median_us"]:
        for size in steady["sizes"]:
            package = steady["median_us"][package_label][str(size)]
            compiled = steady["median_us"][compile_label][str(size)]
            r = ratio(package["median"], compiled["median"])
            overlap = package["min"] <= compiled["max"] and compiled["min"] <= package["max"]
            rows.append(
                [
                    f"steady-state latency <= torch.compile at size {size}",
                    f"package {fmt(package['median'], ' us')} vs compile {fmt(compiled['median'], ' us')}: "
                    f"{fmt_ratio(r)}{' (process ranges overlap)' if overlap and package['n'] > 1 else ''}",
                    verdict(None if r is None else r <= TARGETS["steady_vs_compile"]),
                ]
            )
    stitch = sections.get("stitch")
    if stitch:
        s = stitch["summary"]
        base = s["stitch (emitted)"]
        flat = s["GraphModule, flat"]
        vllm = s["GraphModule, vLLM-style split_module"]
        rows.append(
            [
                "stitching >= 2x cheaper than the GraphModule (overhead per call)",
                f"stitch {fmt(base['overhead_us_per_call'], ' us', 3)}/call vs flat GraphModule "
                f"{fmt(flat['overhead_us_per_call'], ' us', 3)}/call: {fmt_ratio(flat['overhead_vs_stitch'])}; "
                f"vs vLLM-style {fmt(vllm['overhead_us_per_call'], ' us', 3)}/call: {fmt_ratio(vllm['overhead_vs_stitch'])}",
                verdict(
                    None
                    if flat["overhead_vs_stitch"] is None
                    else flat["overhead_vs_stitch"] >= TARGETS["stitch_vs_graphmodule"]
                ),
            ]
        )
    memory = sections.get("memory")
    if memory:
        for size in memory["sizes"]:
            res = memory["results"]
            p = res["package"][str(size)]["peak_bytes"]["median"]
            c = res["compile"][str(size)]["peak_bytes"]["median"]
            n = res["package_nodels"][str(size)]["peak_bytes"]["median"]
            rows.append(
                [
                    f"peak memory <= torch.compile at size {size} (allocator)",
                    f"package {fmt(p / 1024, ' KiB')} vs compile {fmt(c / 1024, ' KiB')}: {fmt_ratio(ratio(p, c))}",
                    verdict(None if p is None or c is None else p <= c),
                ]
            )
            no_dels = results.get("setup", {}).get("dels_removed") == 0
            rows.append(
                [
                    f"peak memory < without the dels at size {size} (allocator)",
                    f"package {fmt(p / 1024, ' KiB')} vs no dels {fmt(n / 1024, ' KiB')}: {fmt_ratio(ratio(p, n))}"
                    + (" (stitch.py has no `del`: nothing to compare)" if no_dels else ""),
                    "n/a" if no_dels else verdict(None if p is None or n is None else p < n),
                ]
            )
    tp = sections.get("transpile")
    if tp and "skipped" not in tp:
        layers = tp["layers"]
        if str(2) in tp["runs"] and str(32) in tp["runs"]:
            for kind in ("cold", "warm"):
                a = [r["wall_s"] for r in tp["runs"]["2"][kind]]
                b = [r["wall_s"] for r in tp["runs"]["32"][kind]]
                if a and b:
                    r = statistics.median(b) / statistics.median(a)
                    rows.append(
                        [
                            f"transpile time at 32 layers <= 1.5x at 2 layers ({kind} cache)",
                            f"{fmt(statistics.median(b), ' s')} vs {fmt(statistics.median(a), ' s')}: {fmt_ratio(r)}",
                            verdict(r <= TARGETS["transpile_32_vs_2"]),
                        ]
                    )
        del layers
    return rows


def render_markdown(results: dict) -> str:
    h = results["header"]
    m = h["machine"]
    out = [
        "# transpile benchmark",
        "",
        f"- date: {h['date']}",
        f"- machine: {m.get('cpu_model')}, {m.get('cores', m.get('cpus'))} cores / {m.get('cpus')} CPUs"
        f"{', ' + str(m['memory_gib']) + ' GiB' if 'memory_gib' in m else ''}; {h['platform']}",
        f"- torch {h['torch']}, Python {h['python']}; {h.get('threads_note', '')}; transpile runs use the defaults",
        f"- model: {h['model']} --ranges {h['ranges']} --sizes {h['sizes']}; repeats {h['repeats']}"
        f"{' (--quick)' if h['quick'] else ''}",
        f"- command: `{h['command']}`",
        f"- total time: {fmt(results.get('total_seconds'), ' s')}",
    ]
    shares = {k: v for k, v in results.get("other_processes_cpu_share", {}).items() if v is not None}
    if shares:
        out.append(
            "- CPU used by other processes during each section (share of all CPUs; the harness's own "
            "processes excluded): "
            + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + (" — **the machine was shared; expect noise**" if max(shares.values()) > 0.1 else "")
        )
    out += [
        "",
        "Values are median (min–max) over fresh processes unless stated.",
    ]
    setup = results.get("setup", {})
    if "max_abs_diff_package_vs_eager" in setup:
        out += [
            "",
            "Package vs eager, max abs difference per size: "
            + ", ".join(f"{s}: {d:.2e}" for s, d in setup["max_abs_diff_package_vs_eager"].items()),
        ]
    s = results["sections"]

    if "ttfo" in s:
        t = s["ttfo"]
        rows = []
        for name, v in t["variants"].items():
            rows.append(
                [
                    name,
                    fmt_stats(v["after_import_torch_s"], 1000, " ms"),
                    fmt_ratio(v["after_import_vs_eager"]),
                    fmt_stats(v["process_wall_s"], 1000, " ms"),
                    fmt_ratio(v["wall_vs_eager"]),
                ]
            )
        out += [
            "",
            "## Time to first output (fresh process)",
            "",
            table(["variant", "after import torch", "vs eager", "whole process", "vs eager"], rows),
            "",
            t["method"],
        ]
        sums = {name: v["checksums"] for name, v in t["variants"].items()}
        reference = statistics.median(sums["eager"])
        worst = max(abs(c - reference) / max(abs(reference), 1e-12) for values in sums.values() for c in values)
        out += [f"First outputs agree with eager's (sum of the output): largest relative difference {worst:.1e}."]
        if "aoti_compile" in setup:
            out += [
                f"AOTInductor build beforehand: export {fmt(setup['aoti_compile']['export_s'], ' s')}, "
                f"aoti_compile_and_package {fmt(setup['aoti_compile']['compile_s'], ' s')}."
            ]

    if "import" in s:
        i = s["import"]
        rows = [
            ["import torch (in process)", fmt_stats(i["import_torch_s"], 1000, " ms")],
            ["import PACKAGE after torch (in process)", fmt_stats(i["import_package_s"], 1000, " ms")],
            ["load() (kernels + weights)", fmt_stats(i["load_s"], 1000, " ms")],
            ["first call after load()", fmt_stats(i["first_call_s"], 1000, " ms")],
            ["whole process: import torch only", fmt_stats(i["process_wall_torch_only_s"], 1000, " ms")],
            ["whole process: import torch + PACKAGE", fmt_stats(i["process_wall_torch_and_package_s"], 1000, " ms")],
            ["whole process: delta of medians", fmt(i["process_wall_delta_s"] * 1000, " ms")],
            ["whole process: + load() + first call", fmt_stats(i["process_wall_with_load_and_call_s"], 1000, " ms")],
            ["torch._dynamo/_inductor modules after import torch", str(i["dynamo_inductor_after_torch"])],
            ["... after import PACKAGE", str(i["dynamo_inductor_after_import"])],
            ["... after load() + first call", str(i["dynamo_inductor_after_first_call"])],
            ["modules added by import PACKAGE", str(i["new_modules_on_import"])],
        ]
        out += ["", "## Import cost", "", table(["measure", "value"], rows), "", i["method"]]

    if "steady" in s:
        st = s["steady"]
        header, rows = steady_table(st)
        out += ["", "## Steady-state latency per call", "", table(header, rows), "", st["method"]]

    if "stitch" in s:
        sc = s["stitch"]
        rows = []
        for label, v in sc["summary"].items():
            rows.append(
                [
                    label,
                    fmt(v["forward_us"], " us"),
                    fmt(v["forward_us_per_call"], " us"),
                    fmt(v["overhead_us"], " us"),
                    fmt(v["overhead_us_per_call"], " us", 3),
                    fmt_ratio(v["overhead_vs_stitch"]),
                ]
            )
        med = sc["medians_us"]
        out += [
            "",
            "## Stitching overhead (trivial pieces)",
            "",
            table(
                [
                    "runner",
                    "forward",
                    "per call",
                    "overhead: forward, all calls stubbed",
                    "overhead per call",
                    "overhead vs stitch",
                ],
                rows,
            ),
            "",
            f"Splitting ops alone (real, in a loop): {fmt(med['split_ops_only']['median'], ' us')}; package __call__ (input checks + "
            f"stitch): {fmt(med['package_call']['median'], ' us')}; empty lambda call: "
            f"{fmt(med['empty_call']['median'], ' us', 3)}. Stubs installed by: {sc['stub_method']}.",
            "",
            sc["method"],
        ]

    if "memory" in s:
        mem = s["memory"]
        rows = []
        for size in mem["sizes"]:
            for variant, by_size in mem["results"].items():
                v = by_size[str(size)]
                rows.append(
                    [
                        str(size),
                        variant,
                        fmt_stats(v["peak_bytes"], 1 / 1024, " KiB"),
                        fmt_stats(v["retained_bytes"], 1 / 1024, " KiB"),
                        fmt_stats(v["allocations"], 1, "", 0),
                        fmt_stats(v["rss_hwm_delta_kib"], 1, " KiB", 0),
                    ]
                )
        out += [
            "",
            "## Peak memory of one forward",
            "",
            table(["size", "variant", "allocator peak", "outputs held", "allocations", "RSS HWM delta"], rows),
            "",
            mem["method"],
        ]

    if "transpile" in s and "skipped" in s["transpile"]:
        out += ["", "## Transpile time and package size", "", "Skipped: " + s["transpile"]["skipped"]]
    elif "transpile" in s:
        tp = s["transpile"]
        rows = []
        for L in tp["layers"]:
            r = tp["runs"][str(L)]
            pkg = tp["package"].get(str(L), {})
            any_run = (r["warm"] or r["cold"])[0]
            rows.append(
                [
                    str(L),
                    fmt_stats(stats([x["wall_s"] for x in r["cold"]]), 1, " s"),
                    fmt_stats(stats([x.get("tool_seconds") for x in r["cold"]]), 1, " s"),
                    fmt_stats(stats([x["wall_s"] for x in r["warm"]]), 1, " s"),
                    fmt_stats(stats([x.get("tool_seconds") for x in r["warm"]]), 1, " s"),
                    f"{any_run.get('piece_calls', '?')} ({any_run.get('unique_pieces', '?')} unique)",
                    str(any_run.get("kernels", "?")),
                    f"{pkg.get('bytes', 0):,}",
                    str(pkg.get("files", "?")),
                    ", ".join(f"{k} {v:,}" for k, v in sorted(pkg.get("bytes_by_kind", {}).items())),
                ]
            )
        out += [
            "",
            "## Transpile time and package size",
            "",
            table(
                [
                    "layers",
                    "cold wall",
                    "cold tool",
                    "warm wall",
                    "warm tool",
                    "piece calls",
                    "kernels",
                    "package bytes",
                    "files",
                    "bytes by kind",
                ],
                rows,
            ),
            "",
            tp["method"],
        ]

    out += ["", "## Targets", "", table(["target", "measured", "status"], targets(results))]
    if results["errors"]:
        out += ["", "## Errors", ""]
        for name, error in results["errors"].items():
            out += [f"- {name}: " + error.strip().splitlines()[0][:300] + " (details in bench.json)"]
    if results.get("section_seconds"):
        out += ["", "Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in results["section_seconds"].items())]
    return "\n".join(out) + "\n"


def package_option(value: str) -> tuple[str, Path]:
    """--package LABEL=DIR -> (LABEL, DIR resolved); DIR must hold a package's __init__.py."""
    label, separator, folder = value.partition("=")
    if not separator or not label or not folder:
        raise argparse.ArgumentTypeError(f"{value!r}: give LABEL=DIR, e.g. before=/tmp/out/tiny_llama")
    path = Path(folder).resolve()
    if not (path / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(
            f"{folder}: no package there (no __init__.py); pass the package folder OUT/NAME"
        )
    return label, path


def thread_counts_option(value: str) -> list[int]:
    """--threads 1 or 1,2 -> [1] or [1, 2]."""
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give thread counts such as 1 or 1,2") from None
    if any(count < 0 for count in counts) or (0 in counts and len(counts) > 1):
        raise argparse.ArgumentTypeError(f"{value!r}: counts are positive (0 alone: torch's default)")
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark the package transpile emits for MODEL.py against eager, torch.compile and AOTInductor."
    )
    parser.add_argument("model", type=Path, metavar="MODEL.py")
    parser.add_argument("--ranges", help="passed to transpile (e.g. 1-16,17-256)")
    parser.add_argument("--sizes", help="passed to transpile (e.g. 1,8)")
    parser.add_argument("--name", help="package name (default: MODEL.py's stem)")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    parser.add_argument("--repeats", type=int, help="rounds of interleaved fresh processes (default 3, --quick 1)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results", help="where bench.md and bench.json go")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter timing loops, no cold transpiles")
    parser.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--layers", default="2,8,32", help="depths for the transpile section (default 2,8,32)")
    parser.add_argument("--layers-env", default="TINY_LLAMA_LAYERS", help="env var MODEL.py reads its depth from")
    parser.add_argument("--transpile-repeats", type=int, default=1, help="rounds of the transpile section (default 1)")
    parser.add_argument("--no-cold-transpile", action="store_true", help="skip cold-cache transpiles")
    parser.add_argument("--skip-aoti", action="store_true", help="leave AOTInductor out of time to first output")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each section wait up to S seconds for other processes to use < 10%% of the CPUs",
    )
    parser.add_argument(
        "--package",
        dest="packages",
        action="append",
        default=[],
        type=package_option,
        metavar="LABEL=DIR",
        help="a package built elsewhere (DIR: the package folder, e.g. by another commit of the transpiler), "
        "measured in the steady section as package:LABEL beside this one's (repeatable)",
    )
    parser.add_argument(
        "--steady-variants",
        default="eager,compile,package",
        help="variants of the steady section (default eager,compile,package; --package ones are added)",
    )
    parser.add_argument(
        "--threads",
        type=thread_counts_option,
        default=[1],
        help="intra-op threads (OMP_NUM_THREADS) of every measured process, all variants alike; a list (1,2) "
        "measures the steady section at each, interleaved, and the other sections at the first (default 1: on a "
        "shared machine a parallel region waits whenever another process holds one of its cores, which "
        "stalls calls by a whole scheduler slice); 0 leaves torch's default",
    )
    parser.add_argument("--work", help="work folder (default: a fresh temporary folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    quick = args.quick
    if args.repeats is None:
        args.repeats = 1 if quick else 3
    args.import_repeats = 3 if quick else max(5, args.repeats)
    args.steady_budget = 0.15 if quick else 0.3
    args.stitch_processes = 1 if quick else 2
    args.stitch_blocks = 60 if quick else 150
    args.memory_repeats = 1  # the allocator peak is deterministic; RSS is shown for reference only
    if not args.model.is_file():
        parser.error(f"{args.model}: no such file")

    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    try:
        bench.run()
    finally:
        results = bench.results
        if "header" in results:
            (args.out / "bench.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
            markdown = render_markdown(results)
            (args.out / "bench.md").write_text(markdown)
            print(markdown)
            log(f"wrote {args.out / 'bench.md'} and {args.out / 'bench.json'}")
        if not args.keep and not args.work:
            shutil.rmtree(bench.work, ignore_errors=True)
    return 0 if not results.get("errors") else 1


if __name__ == "__main__":
    sys.exit(main())
