"""CUDA-target spike: one run on a GPU machine builds, emits, and checks a tiny CUDA package.

    python scripts/gpu_spike.py all WORKDIR    # build (Inductor) + check (fresh process) + summary

build: export a small block (Linear -> RMSNorm-like -> SiLU -> residual) on CUDA, split it with the
  transpiler's splitter (one piece), compile each variant with Inductor under a fresh ShapeEnv
  (transpiler.cuda_kernels.compile_cuda_variant), autotune once, capture every Triton kernel's cubin
  and launch metadata, rewrite `call` with libcst, and render the package from templates/.
check (a fresh process, empty TRITON_CACHE_DIR and TORCHINDUCTOR_CACHE_DIR): import the emitted
  package, run every variant at several sizes, compare with eager and with Inductor's own `call`,
  and check that neither triton, torch._inductor nor torch._dynamo was imported.
Prints a PASS/FAIL table last; everything else lands in WORKDIR.
"""

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
D = 512  # hidden size
RANGE = (1, 256)
RANGE_SIZES = [1, 2, 3, 17, 64, 100, 255, 256]
STATIC_SIZE = 8
FORBIDDEN = ("triton", "torch._inductor", "torch._dynamo")


def forbidden_modules():
    return sorted(name for name in sys.modules if any(name == f or name.startswith(f + ".") for f in FORBIDDEN))


def make_block_class():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.scale = nn.Parameter(1 + 0.1 * torch.randn(d))
            self.lin = nn.Linear(d, d)
            self.norm_weight = nn.Parameter(1 + 0.1 * torch.randn(d))

        def forward(self, x):
            h = self.lin(x * self.scale)
            hf = h.float()
            hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6)
            h = hf.to(x.dtype) * self.norm_weight
            return x + torch.nn.functional.silu(h)

    return Block


def per_call_us(fn, make_args, iters=200, warmup=20):
    import torch

    for _ in range(warmup):
        fn(make_args())
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn(make_args())
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e6


# ------------------------------------------------------------------------------------------ build


def build(work: Path) -> dict:
    sys.path.insert(0, str(REPO))
    import jinja2
    import torch

    from transpiler import cuda_kernels as ck
    from transpiler.inductor import inductor_config
    from transpiler.ir import SizeRange, Variant
    from transpiler.split import split_graph

    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "cases": {}, "errors": []}
    import torch._inductor.config as iconfig
    import triton

    report["triton"] = triton.__version__
    report["inductor_config"] = {
        key: repr(getattr(iconfig, key, "<absent>"))
        for key in ("use_static_triton_launcher", "use_static_cuda_launcher", "compile_threads", "max_autotune")
    }
    report["inductor_config"]["triton.store_cubin"] = repr(iconfig.triton.store_cubin)
    report["inductor_config"]["triton.autotune_pointwise"] = repr(iconfig.triton.autotune_pointwise)
    report["static_cuda_launcher_dir"] = [n for n in dir(torch._C._StaticCudaLauncher) if not n.startswith("__")]

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(REPO / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    package = work / "emit" / "spikepkg"
    (package / "pieces").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""Spike package emitted by scripts/gpu_spike.py."""\n')
    (package / "pieces" / "__init__.py").write_text("")
    (package / "runtime.py").write_text(env.get_template("runtime.py.jinja").render(name="spikepkg"))
    (package / "cuda_runtime.py").write_text(env.get_template("cuda_runtime.py.jinja").render(name="spikepkg"))
    (work / "inductor").mkdir(exist_ok=True)

    Block = make_block_class()
    cases = [
        (
            "f32",
            torch.float32,
            [
                Variant("range_1_256", SizeRange(*RANGE), False),
                Variant(f"size_{STATIC_SIZE}", SizeRange(STATIC_SIZE, STATIC_SIZE), True),
            ],
        ),
        ("bf16", torch.bfloat16, [Variant("range_1_256", SizeRange(*RANGE), False)]),
    ]
    refs = {}
    for tag, dtype, variants in cases:
        case = report["cases"].setdefault(tag, {"variants": {}})
        try:
            torch.manual_seed(0)
            model = Block(D).to("cuda", dtype).eval()
            x = torch.randn(64, D, device="cuda", dtype=dtype)
            dim = torch.export.Dim("T", min=RANGE[0], max=RANGE[1])
            with torch.no_grad():
                program = torch.export.export(model, (x,), dynamic_shapes=({0: dim},), strict=False)
            graph_module = torch.fx.GraphModule(program.graph_module, program.graph)
            pieces = split_graph(graph_module, [])
            assert len(pieces) == 1, f"{len(pieces)} pieces"
            piece = pieces[0]
            input_names = [node.name for node in piece.inputs]
            placeholders = {n.name: n for n in program.graph.find_nodes(op="placeholder")}
            x_name = next(s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT")
            dispatch_symbol = placeholders[x_name].meta["val"].shape[0].node.expr
            symbol_ranges = {}
            for symbol, value_range in program.range_constraints.items():
                hi = None if value_range.upper.is_infinite else int(value_range.upper)
                symbol_ranges[symbol] = (int(value_range.lower), hi, 64 if symbol == dispatch_symbol else 2)
            targets = {s.arg.name: s.target for s in program.graph_signature.input_specs if s.kind.name != "USER_INPUT"}
            # Detached: Inductor's extern_kernels.addmm(..., out=) refuses tensors that require grad
            # (so must the emitted package's weights).
            weights = [program.state_dict[targets[name]].detach() for name in input_names if name != x_name]
            assert input_names[-1] == x_name, input_names
            case["input_names"] = input_names

            piece_name = f"piece_{tag}"
            kernel_dir = package / "kernels" / piece_name
            kernel_dir.mkdir(parents=True, exist_ok=True)
            compiled_variants, kernel_contexts = [], []
            refs[tag] = {"weights": [w.detach().cpu() for w in weights], "variants": {}}
            for variant in variants:
                info = case["variants"].setdefault(variant.name, {})
                started = time.perf_counter()
                with inductor_config("cuda", "native"):
                    output = ck.compile_cuda_variant(piece.graph_module, dispatch_symbol, variant, symbol_ranges)
                info["compile_s"] = round(time.perf_counter() - started, 2)
                (work / "inductor" / f"{tag}_{variant.name}.py").write_text(output.source_code)
                (work / "inductor" / f"{tag}_{variant.name}_state.json").write_text(
                    json.dumps(output.launcher_state, indent=1, default=repr)
                )
                prefix = f"{variant.name}_"
                info["align_indices"] = list(output.align_indices)
                rewritten = ck.rewrite_cuda_call(
                    output.source_code, variant.name, input_names, prefix, output.align_indices
                )
                assert set(rewritten.triton_sources) == set(output.kernels), (
                    sorted(rewritten.triton_sources),
                    sorted(output.kernels),
                )
                info["kernels"] = {}
                for name, kernel in output.kernels.items():
                    function_name = f"{prefix}{name}"
                    (kernel_dir / f"{function_name}.cubin").write_bytes(kernel.cubin)
                    (kernel_dir / f"{function_name}.py").write_text(kernel.source)
                    (kernel_dir / f"{function_name}.json").write_text(json.dumps(ck.kernel_manifest(kernel), indent=1))
                    kernel_contexts.append(ck.launcher_context(kernel, function_name, f"_{function_name}"))
                    info["kernels"][name] = ck.kernel_manifest(kernel) | {"cubin_bytes": len(kernel.cubin)}
                compiled_variants.append(
                    {"variant": variant, "function_source": rewritten.function_source, "rewritten": rewritten}
                )

                # References: eager and Inductor's own `call`, at each size the variant serves.
                sizes = [STATIC_SIZE] if variant.static else RANGE_SIZES
                vrefs = refs[tag]["variants"].setdefault(variant.name, {})
                for size in sizes:
                    generator = torch.Generator(device="cpu").manual_seed(1000 + size)
                    xs = torch.randn(size, D, generator=generator).to("cuda", dtype)
                    with torch.no_grad():
                        eager = model(xs)
                        inductor = output.call([*weights, xs])[0]
                    vrefs[size] = {"x": xs.cpu(), "eager": eager.cpu(), "inductor": inductor.cpu()}
                    if size == sizes[0]:
                        info["inductor_vs_eager_max_abs"] = float((inductor.float() - eager.float()).abs().max())
                # Host time per call (launch-bound at these sizes), eager and Inductor's call.
                for size in ([STATIC_SIZE] if variant.static else [1, 256]):
                    xs = torch.randn(size, D, device="cuda", dtype=dtype)
                    with torch.no_grad():
                        info[f"eager_us_T{size}"] = round(per_call_us(lambda a: model(a[0]), lambda: [xs]), 1)
                    with torch.no_grad():
                        info[f"inductor_us_T{size}"] = round(per_call_us(output.call, lambda: [*weights, xs]), 1)

            first = compiled_variants[0]["rewritten"]
            piece_ns = type("P", (), {})()
            piece_ns.module_name = piece_name
            piece_ns.call_count = 1
            piece_ns.variants = [type("V", (), {"function_source": v["function_source"]})() for v in compiled_variants]
            source = env.get_template("pieces/cuda_piece.py.jinja").render(
                name="spikepkg",
                piece=piece_ns,
                variant_names=[v["variant"].name for v in compiled_variants],
                modules=sorted({m for v in compiled_variants for m in v["rewritten"].module_names}),
                runtime_names=sorted({n for v in compiled_variants for n in v["rewritten"].runtime_names}),
                cuda_runtime_names=sorted(
                    {"load_triton_kernel"} | {n for v in compiled_variants for n in v["rewritten"].cuda_runtime_names}
                ),
                kernels=kernel_contexts,
            )
            compile(source, f"{piece_name}.py", "exec")  # valid Python, or fail here
            (package / "pieces" / f"{piece_name}.py").write_text(source)
            del first
        except Exception:
            case["error"] = traceback.format_exc()
            report["errors"].append(f"build {tag}: {traceback.format_exc(limit=3)}")
            print(case["error"], flush=True)
    torch.save(refs, work / "refs.pt")
    return report


# ------------------------------------------------------------------------------------------ check


def check(work: Path) -> dict:
    started = time.perf_counter()
    import torch

    t_torch = time.perf_counter() - started
    after_torch = forbidden_modules()
    sys.path.insert(0, str(work / "emit"))
    t0 = time.perf_counter()
    import importlib

    modules = {}
    result = {"import_torch_s": round(t_torch, 3), "forbidden_after_import_torch": after_torch, "cases": {}}
    for tag in ("f32", "bf16"):
        try:
            modules[tag] = importlib.import_module(f"spikepkg.pieces.piece_{tag}")
        except Exception:
            result["cases"][tag] = {"error": traceback.format_exc()}
    result["import_package_s"] = round(time.perf_counter() - t0, 3)
    refs = torch.load(work / "refs.pt")
    first_call = None
    for tag, module in modules.items():
        case = result["cases"].setdefault(tag, {})
        weights = [w.cuda() for w in refs[tag]["weights"]]
        for variant, by_size in refs[tag]["variants"].items():
            rows = case.setdefault(variant, {})
            fn = getattr(module, variant)
            for size, ref in by_size.items():
                try:
                    x = ref["x"].cuda()
                    t = time.perf_counter()
                    out = fn([*weights, x])[0]
                    torch.cuda.synchronize()
                    if first_call is None:
                        first_call = time.perf_counter() - t
                    out = out.cpu()
                    eager, inductor = ref["eager"], ref["inductor"]
                    rel = float((out.double() - eager.double()).norm() / eager.double().norm())
                    rows[str(size)] = {
                        "bitwise_equal_inductor": bool(torch.equal(out, inductor)),
                        "rel_err_vs_eager": rel,
                        "finite": bool(torch.isfinite(out).all()),
                    }
                except Exception:
                    rows[str(size)] = {"error": traceback.format_exc()}
            try:
                size = STATIC_SIZE if variant.startswith("size_") else 1
                xs = torch.randn(size, D, device="cuda", dtype=weights[0].dtype)
                rows[f"emitted_us_T{size}"] = round(per_call_us(fn, lambda: [*weights, xs]), 1)
                if not variant.startswith("size_"):
                    xs = torch.randn(256, D, device="cuda", dtype=weights[0].dtype)
                    rows["emitted_us_T256"] = round(per_call_us(fn, lambda: [*weights, xs]), 1)
            except Exception:
                rows["timing_error"] = traceback.format_exc()
    result["first_call_s"] = None if first_call is None else round(first_call, 4)
    result["forbidden_modules"] = forbidden_modules()
    result["cache_dirs"] = {
        key: sorted(os.listdir(os.environ[key])) if os.path.isdir(os.environ[key]) else "absent"
        for key in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")
    }
    # Extra: CUDA graph capture of an emitted variant (kernels launch on the capture stream).
    try:
        module = modules["f32"]
        weights = [w.cuda() for w in refs["f32"]["weights"]]
        ref = refs["f32"]["variants"]["range_1_256"][64]
        static_x = ref["x"].cuda()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                module.range_1_256([*weights, static_x])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module.range_1_256([*weights, static_x])[0]
        graph.replay()
        torch.cuda.synchronize()
        result["cuda_graph_equal"] = bool(torch.equal(static_out.cpu(), ref["inductor"]))
    except Exception:
        result["cuda_graph_equal"] = traceback.format_exc(limit=4)
    result["forbidden_after_cuda_graph"] = forbidden_modules()
    # Extra, last (a fault here would poison the CUDA context): a misaligned input view, which
    # the emitted align_inputs(...) must copy, as Inductor's own wrapper does.
    try:
        module = modules["f32"]
        weights = [w.cuda() for w in refs["f32"]["weights"]]
        ref = refs["f32"]["variants"]["range_1_256"][17]
        storage = torch.empty(ref["x"].numel() + 1, device="cuda")
        x = storage[1:].view(ref["x"].shape)
        x.copy_(ref["x"].cuda())
        assert x.data_ptr() % 16 != 0
        out = module.range_1_256([*weights, x])[0]
        torch.cuda.synchronize()
        result["misaligned_input_equal"] = bool(torch.equal(out.cpu(), ref["inductor"]))
    except Exception:
        result["misaligned_input_equal"] = traceback.format_exc(limit=4)
    return result


def first_output(work: Path, kind: str) -> None:
    """Time to first output in a fresh process: `emitted` or `eager`."""
    started = time.perf_counter()
    import torch

    if kind == "emitted":
        sys.path.insert(0, str(work / "emit"))
        from spikepkg.pieces import piece_f32

        refs = torch.load(work / "refs.pt")
        weights = [w.cuda() for w in refs["f32"]["weights"]]
        out = piece_f32.range_1_256([*weights, refs["f32"]["variants"]["range_1_256"][1]["x"].cuda()])[0]
    else:
        torch.manual_seed(0)
        model = make_block_class()(D).cuda().eval()
        with torch.no_grad():
            out = model(torch.randn(1, D, device="cuda"))
    out.sum().item()
    print(json.dumps({"kind": kind, "in_process_s": round(time.perf_counter() - started, 3)}))


# ------------------------------------------------------------------------------------------ main


def fresh_env(work: Path, tag: str) -> dict:
    env = dict(os.environ)
    for key, folder in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        path = work / f"fresh_{tag}_{folder}"
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env.pop("TORCHINDUCTOR_COMPILE_THREADS", None)
    env["PYTHONPATH"] = ""
    return env


def main(work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    try:
        report = build(work)
    except Exception:
        report = {"errors": [traceback.format_exc()], "cases": {}}
        print(report["errors"][0], flush=True)
    report["build_s"] = round(time.perf_counter() - t, 1)
    (work / "build.json").write_text(json.dumps(report, indent=1, default=repr))

    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "check", str(work)], env=fresh_env(work, "check"), capture_output=True, text=True
    )
    report["check_process_s"] = round(time.perf_counter() - t, 1)
    try:
        checked = json.loads((work / "check.json").read_text())
    except Exception:
        checked = {"error": proc.stdout[-3000:] + proc.stderr[-3000:]}
    if proc.returncode:
        checked.setdefault("stderr", proc.stderr[-3000:])
    firsts = {}
    for kind in ("eager", "emitted"):
        t = time.perf_counter()
        first = subprocess.run(
            [sys.executable, __file__, "first", str(work), kind],
            env=fresh_env(work, kind),
            capture_output=True,
            text=True,
        )
        firsts[kind] = {"process_s": round(time.perf_counter() - t, 2), "stdout": first.stdout.strip()[-300:]}
        if first.returncode:
            firsts[kind]["stderr"] = first.stderr[-1500:]
    checked["first_output"] = firsts
    (work / "check.json").write_text(json.dumps(checked, indent=1, default=repr))

    # -------- summary
    lines, ok = [], True

    def verdict(name, passed, detail=""):
        nonlocal ok
        ok &= bool(passed)
        lines.append(f"{'PASS' if passed else 'FAIL'}  {name}  {detail}")

    for tag, case in report.get("cases", {}).items():
        verdict(f"build {tag}", "error" not in case, case.get("error", "").strip().splitlines()[-1:] or "")
        for vname, info in case.get("variants", {}).items():
            kernels = info.get("kernels", {})
            detail = "; ".join(
                f"{k}: cfgs={v['num_configs']} {v['config']} warps={v['num_warps']} shared={v['shared']} "
                f"tys={v['arg_types']} static={v['inductor_static']} arch={v['arch']}"
                for k, v in kernels.items()
            )
            lines.append(f"      {tag}/{vname}: compile {info.get('compile_s')}s; {detail}")
    for tag, case in checked.get("cases", {}).items():
        if "error" in case:
            verdict(f"import {tag}", False, case["error"].strip().splitlines()[-1])
            continue
        for vname, rows in case.items():
            sizes = {k: v for k, v in rows.items() if k.isdigit()}
            errors = [f"T={k}: {v['error'].strip().splitlines()[-1]}" for k, v in sizes.items() if "error" in v]
            bitwise = all(v.get("bitwise_equal_inductor") for v in sizes.values())
            tol = 1e-5 if tag == "f32" else 1e-2
            worst = max((v.get("rel_err_vs_eager", 1.0) for v in sizes.values()), default=1.0)
            verdict(
                f"run {tag}/{vname}",
                not errors and bitwise and worst < tol,
                f"sizes={list(sizes)} bitwise==inductor:{bitwise} max rel err vs eager {worst:.2e} (tol {tol}) {errors}",
            )
    verdict(
        "no triton/_inductor/_dynamo in fresh process",
        checked.get("forbidden_modules") == [],
        checked.get("forbidden_modules"),
    )
    caches = checked.get("cache_dirs", {})
    verdict("fresh caches stay empty", all(v == [] for v in caches.values()) and bool(caches), caches)
    lines.append(f"INFO  cuda graph capture equal: {checked.get('cuda_graph_equal')}")
    lines.append(f"INFO  misaligned input (x[1:] view) equal: {checked.get('misaligned_input_equal')}")
    lines.append(
        f"INFO  import torch {checked.get('import_torch_s')}s, import package {checked.get('import_package_s')}s, "
        f"first call {checked.get('first_call_s')}s"
    )
    for tag, case in report.get("cases", {}).items():
        for vname, info in case.get("variants", {}).items():
            emitted = checked.get("cases", {}).get(tag, {}).get(vname, {})
            timing = {
                k: v
                for k, v in info.items()
                if k.endswith("_us_T1") or k.endswith("_us_T256") or k.endswith(f"_us_T{STATIC_SIZE}")
            }
            timing.update({k: v for k, v in emitted.items() if k.startswith("emitted_us")})
            lines.append(f"INFO  us/call {tag}/{vname}: {timing}")
    lines.append(f"INFO  time to first output (fresh process): {json.dumps(firsts)}")
    lines.append(
        f"INFO  build {report.get('build_s')}s, check process {report.get('check_process_s')}s; "
        f"torch {report.get('torch')} triton {report.get('triton')} on {report.get('device')}"
    )
    lines.append(f"{'PASS' if ok else 'FAIL'}  overall")
    (work / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    mode, work = sys.argv[1], Path(sys.argv[2])
    if mode == "all":
        sys.exit(main(work))
    elif mode == "check":
        out = check(work)
        (work / "check.json").write_text(json.dumps(out, indent=1, default=repr))
    elif mode == "first":
        first_output(work, sys.argv[3])
    elif mode == "build":
        print(json.dumps(build(work), indent=1, default=repr))
