#!/usr/bin/env python3
"""The subprocess side of scripts/bench: one measurement per fresh process.

    bench_worker.py MODE PARAMS_JSON

prints one line `BENCH_RESULT {json}` on stdout. Modes:

  ttfo          time to first output of one variant (eager, compile, aoti, package)
  import        import cost of the package over `import torch` (or torch alone)
  steady        steady-state latency of one variant at several sizes
  memory        peak memory of one forward of one variant at several sizes
  stitch        stitching overhead: stitch.forward against torch.fx GraphModules
  aoti_compile  torch.export + aoti_compile_and_package once (set-up, not timed here)

Only json, sys, time and scripts/harness.py (standard library only: loading MODEL.py
through transpiler.model_file, importing the package) are imported before `import torch`,
so that the time after `import torch` is not inflated by the harness; the whole process's
wall time includes the harness's import alike for every variant.
"""

import json
import sys
import time

WORKER_STARTED = time.perf_counter()

import harness  # noqa: E402  (after the start time: a cost of every variant alike)


def emit(result: dict) -> None:
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- helpers


def make_inputs(torch, specs):
    """Tensors from [{"dtype", "shape", "data"}] (written by scripts/bench)."""
    return tuple(
        torch.tensor(spec["data"], dtype=getattr(torch, spec["dtype"])).reshape(spec["shape"]) for spec in specs
    )


def read_inputs(params):
    with open(params["inputs"]) as file:
        return json.load(file)


def load_model(path, imports=()):
    """MODEL.py's eval-mode `model`, loaded as the transpiler loads it."""
    return harness.load_model_file(path, imports).model.eval()


def import_package(parent, name):
    return harness.import_package(parent, name)


def checksum(output) -> float:
    import torch

    if isinstance(output, torch.Tensor):
        return float(output.detach().double().sum())
    if isinstance(output, dict):
        return sum(checksum(v) for v in output.values())
    if isinstance(output, (list, tuple)):
        return sum(checksum(v) for v in output)
    return 0.0


def dynamo_inductor_modules():
    return sorted(
        name
        for name in list(sys.modules)
        if name in ("torch._dynamo", "torch._inductor") or name.startswith(("torch._dynamo.", "torch._inductor."))
    )


def build_callable(params, torch):
    """The forward of one variant, ready to call with the inputs."""
    variant = params["variant"]
    if variant == "eager":
        return load_model(params["model"], params.get("imports", ()))
    if variant == "compile":
        model = load_model(params["model"], params.get("imports", ()))
        options = params.get("compile", {})
        return torch.compile(model, dynamic=options.get("dynamic"))
    if variant == "aoti":
        return torch._inductor.aoti_load_package(params["aoti_package"])
    if variant in ("package", "package_nodels"):
        package = import_package(params["package_parent"], params["package_name"])
        return package.load()
    raise SystemExit(f"unknown variant {variant}")


def summarize_ns(samples):
    ordered = sorted(samples)
    n = len(ordered)

    def pick(q):
        return ordered[min(n - 1, max(0, int(round(q * (n - 1)))))] / 1000.0

    return {
        "n": n,
        "median_us": pick(0.5),
        "min_us": ordered[0] / 1000.0,
        "p10_us": pick(0.1),
        "p90_us": pick(0.9),
        "max_us": ordered[-1] / 1000.0,
        "mean_us": sum(ordered) / n / 1000.0,
    }


def time_calls(fn, args, budget_s, min_iters, max_iters):
    """Per-call wall times (ns) of fn(*args) for about budget_s seconds, GC off."""
    import gc

    perf_ns = time.perf_counter_ns
    samples = []
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() < deadline):
            start = perf_ns()
            fn(*args)
            samples.append(perf_ns() - start)
    finally:
        gc.enable()
    return samples


# ------------------------------------------------------------------------------ modes


def mode_ttfo(params):
    before_torch = time.perf_counter()
    import torch

    after_torch = time.perf_counter()
    inputs = make_inputs(torch, read_inputs(params)["example"])
    with torch.no_grad():
        forward = build_callable(params, torch)
        output = forward(*inputs)
    done = time.perf_counter()
    emit(
        {
            "import_torch_s": after_torch - before_torch,
            "after_import_torch_s": done - after_torch,
            "worker_start_to_output_s": done - WORKER_STARTED,
            "checksum": checksum(output),
            "threads": torch.get_num_threads(),
        }
    )


def mode_import(params):
    import_started = time.perf_counter()
    import torch

    torch_done = time.perf_counter()
    baseline_modules = set(sys.modules)
    result = {
        "import_torch_s": torch_done - import_started,
        "dynamo_inductor_after_torch": len(dynamo_inductor_modules()),
        "modules_after_torch": len(baseline_modules),
    }
    if params["variant"] in ("package", "package_load"):
        package = import_package(params["package_parent"], params["package_name"])
        package_done = time.perf_counter()
        after_import = dynamo_inductor_modules()
        new_modules = sorted(set(sys.modules) - baseline_modules)
        result.update(
            {
                "import_package_s": package_done - torch_done,
                "new_modules_on_import": len(new_modules),
                "new_module_names": new_modules[:40],
                "dynamo_inductor_after_import": len(after_import),
            }
        )
    if params["variant"] == "package_load":
        inputs = make_inputs(torch, read_inputs(params)["example"])
        load_started = time.perf_counter()
        model = package.load()
        load_done = time.perf_counter()
        with torch.no_grad():
            model(*inputs)
        call_done = time.perf_counter()
        after_call = dynamo_inductor_modules()
        result.update(
            {
                "load_s": load_done - load_started,
                "first_call_s": call_done - load_done,
                "dynamo_inductor_after_first_call": len(after_call),
                "dynamo_inductor_names": after_call[:20],
                "modules_after_first_call": len(sys.modules),
            }
        )
    emit(result)


def mode_steady(params):
    import torch

    inputs = read_inputs(params)["sizes"]
    results = {}
    with torch.no_grad():
        forward = build_callable(params, torch)
        for size in params["sizes"]:
            args = make_inputs(torch, inputs[str(size)])
            compile_started = time.perf_counter()
            forward(*args)  # compiles, for torch.compile
            first_call_s = time.perf_counter() - compile_started
            for _ in range(params.get("warmup", 5)):
                forward(*args)
            samples = time_calls(
                forward, args, params["budget_s"], params.get("min_iters", 20), params.get("max_iters", 100000)
            )
            results[str(size)] = {**summarize_ns(samples), "first_call_s": first_call_s}
    emit({"sizes": results, "threads": torch.get_num_threads()})


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


def _profiled_peak(torch, forward, args):
    """Peak bytes allocated through torch's CPU allocator during one call, above the level
    at its start, and the bytes still held when it returns (the outputs).

    The profiler with profile_memory=True records every allocation and free of c10's CPU
    allocator with a running total of the bytes it has seen allocated (total_allocated);
    the maximum of that total over the call is the peak."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        output = forward(*args)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            if fields.device.type == "cpu":
                events.append((event.start_time_ns, fields.alloc_size, fields.total_allocated))
        stack.extend(event.children)
    events.sort()
    if not events:
        return {"peak_bytes": 0, "retained_bytes": 0, "allocations": 0}, output
    base = events[0][2] - events[0][1]
    return {
        "peak_bytes": max(total for _, _, total in events) - base,
        "retained_bytes": events[-1][2] - base,
        "allocations": sum(1 for _, size, _ in events if size > 0),
        "allocated_bytes": sum(size for _, size, _ in events if size > 0),
    }, output


def mode_memory(params):
    import gc

    import torch

    inputs = read_inputs(params)["sizes"]
    results = {}
    with torch.no_grad():
        forward = build_callable(params, torch)
        for size in params["sizes"]:
            args = make_inputs(torch, inputs[str(size)])
            for _ in range(3):  # compile (torch.compile) and settle the allocator
                forward(*args)
            gc.collect()
            # Method 2: resident set high-water mark, reset just before the call.
            rss_before = harness.proc_status_kib("VmRSS")
            reset = _reset_peak_rss()
            output = forward(*args)
            hwm = harness.proc_status_kib("VmHWM")
            del output
            gc.collect()
            # Method 1: torch's CPU allocator, through the profiler.
            profiled, output = _profiled_peak(torch, forward, args)
            del output
            results[str(size)] = {
                **profiled,
                "rss_hwm_delta_kib": (hwm - rss_before) if reset else None,
                "rss_before_kib": rss_before,
            }
    emit({"sizes": results})


def mode_aoti_compile(params):
    import torch

    model_started = time.perf_counter()
    model_file = harness.load_model_file(params["model"], params.get("imports", ()))
    with torch.no_grad():
        program = torch.export.export(
            model_file.model.eval(), model_file.example_inputs, dynamic_shapes=model_file.dynamic_shapes
        )
        exported = time.perf_counter()
        torch._inductor.aoti_compile_and_package(program, package_path=params["aoti_package"])
    done = time.perf_counter()
    emit({"export_s": exported - model_started, "compile_s": done - exported})


# --------------------------------------------------------------------------- stitching


class PieceBackend:
    """What a vLLM-style split GraphModule calls for a compiled piece: positional
    arguments in, the compiled function's list calling convention out."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(list(args))


def _build_graph_modules(torch, captured, pieces, piece_fns):
    """Two GraphModules running the transpiler's split graph with the given compiled
    functions (one per compiled-piece call, in order):

    flat: one graph; compiled pieces are call_function nodes, splitting ops are inlined
          (the cheapest GraphModule form of the split graph);
    vllm: torch.fx.passes.split_module's shape as vLLM runs it: the top graph calls a
          submodule per piece (call_module); compiled submodules are replaced by a
          callable taking positional arguments, splitting submodules stay GraphModules.
    """
    import operator

    import torch.fx

    placeholders = {node.name: node for node in captured.graph_module.graph.find_nodes(op="placeholder")}
    order = [w.name for w in captured.weights] + list(captured.user_inputs)
    output_node = captured.graph_module.graph.output_node()

    # flat
    graph = torch.fx.Graph()
    env = {placeholders[name]: graph.placeholder(name) for name in order}
    fns = iter(piece_fns)
    for piece in pieces:
        if piece.is_split:
            for node in piece.nodes:
                env[node] = graph.node_copy(node, env.__getitem__)
            continue
        call = graph.call_function(next(fns), ([env[node] for node in piece.inputs],))
        for index, node in enumerate(piece.outputs):
            env[node] = graph.call_function(operator.getitem, (call, index))
    graph.output(torch.fx.map_arg(output_node.args[0], env.__getitem__))
    flat = torch.fx.GraphModule(torch.nn.Module(), graph)

    # vllm-style
    root = torch.nn.Module()
    graph = torch.fx.Graph()
    env = {placeholders[name]: graph.placeholder(name) for name in order}
    fns = iter(piece_fns)
    for piece in pieces:
        target = f"submod_{piece.index}"
        if piece.is_split:
            sub_graph = torch.fx.Graph()
            sub_env = {node: sub_graph.placeholder(node.name) for node in piece.inputs}
            for node in piece.nodes:
                sub_env[node] = sub_graph.node_copy(node, sub_env.__getitem__)
            sub_graph.output(tuple(sub_env[node] for node in piece.outputs))
            root.add_module(target, torch.fx.GraphModule(torch.nn.Module(), sub_graph))
        else:
            root.__dict__[target] = PieceBackend(next(fns))
        call = graph.call_module(target, tuple(env[node] for node in piece.inputs))
        for index, node in enumerate(piece.outputs):
            env[node] = graph.call_function(operator.getitem, (call, index))
    graph.output(torch.fx.map_arg(output_node.args[0], env.__getitem__))
    vllm = torch.fx.GraphModule(root, graph)
    for name, value in list(root.__dict__.items()):
        if isinstance(value, PieceBackend):
            vllm.__dict__[name] = value
    return flat, vllm


def mode_stitch(params):
    import importlib
    import re

    import torch
    import torch.fx

    from transpiler import opaque_attention
    from transpiler.capture import export_model
    from transpiler.model_file import load_model_file
    from transpiler.split import split_graph

    name = params["package_name"]
    package = import_package(params["package_parent"], name)
    model = package.load()
    stitch = importlib.import_module(f"{name}.stitch")
    dispatch = importlib.import_module(f"{name}.dispatch")
    weights = model.weights
    size = params["size"]
    args = make_inputs(torch, read_inputs(params)["sizes"][str(size)])

    model_file = load_model_file(params["model"], params.get("imports", []))
    # Captured as the pipeline captures it: attention as transpile::sdpa when the package
    # splits at it (its stitch.py calls that op, which the stubs below must stand in for).
    route_attention = opaque_attention.OP in params["split_ops"]
    if route_attention:
        opaque_attention.register()
    captured = export_model(model_file, "cpu", route_attention)
    pieces = split_graph(captured.graph_module, params["split_ops"])
    compiled = [piece for piece in pieces if not piece.is_split]
    with open(stitch.__file__) as file:
        call_names = re.findall(r"variant\.(\w+)\(", file.read())
    if len(call_names) != len(compiled):
        raise SystemExit(f"stitch.py calls {len(call_names)} compiled pieces, split_graph found {len(compiled)}")
    n_split_calls = sum(len([n for n in p.nodes if n.op == "call_function"]) for p in pieces if p.is_split)
    variant = dispatch.select(size)

    real_fns = [getattr(variant, call) for call in call_names]
    flat, vllm = _build_graph_modules(torch, captured, pieces, real_fns)

    # Record each compiled function's outputs, for the stubs.
    cached = {}

    def recorder(call_name, fn):
        def record(arguments):
            outputs = fn(list(arguments))  # the Interpreter passes an immutable list
            cached.setdefault(call_name, outputs)
            return outputs

        return record

    recording, _ = _build_graph_modules(torch, captured, pieces, [recorder(c, f) for c, f in zip(call_names, real_fns)])
    split_calls = []

    class SplitRecorder(torch.fx.Interpreter):
        def call_function(self, target, call_args, kwargs):
            result = super().call_function(target, call_args, kwargs)
            if isinstance(target, torch._ops.OpOverload) and any(
                n.target is target for p in pieces if p.is_split for n in p.nodes
            ):
                split_calls.append((target, call_args, kwargs, result))
            return result

    with torch.no_grad():
        reference = stitch.forward(weights, *args)
        flat_out = flat(*weights, *args)
        vllm_out = vllm(*weights, *args)
        SplitRecorder(recording).run(*weights, *args)  # also records the piece outputs

    def first(value):
        return value[0] if isinstance(value, (tuple, list)) else value

    agree = {
        "flat": float((first(flat_out) - first(reference)).abs().max()),
        "vllm": float((first(vllm_out) - first(reference)).abs().max()),
    }

    # Stubs: each compiled piece function returns its recorded outputs at once, so what
    # remains is the stitching code plus the (real) splitting ops.
    stubs = {}
    for call_name in set(call_names):
        outputs = cached[call_name]
        stubs[call_name] = lambda arguments, _outputs=outputs: _outputs
    stub_variant = variant._replace(**stubs)
    flat_stub, vllm_stub = _build_graph_modules(torch, captured, pieces, [stubs[c] for c in call_names])

    # The splitting ops too: stitch.py and the GraphModules' generated code both reach them
    # as `torch.ops.<ns>.<op>.<overload>(...)` through a global `torch`; in stubbed runs
    # that global is a stand-in whose chain ends in a function returning the op's recorded
    # output (four plain attribute lookups, as on the real torch.ops objects once cached).
    import types

    class TorchStandIn:
        def __init__(self):
            self.ops = types.SimpleNamespace()

        def __getattr__(self, name):
            return getattr(torch, name)

    stand_in = TorchStandIn()
    for target, _, _, result in split_calls:
        namespace, op_name = target._schema.name.split("::")
        ns = getattr(stand_in.ops, namespace, None) or types.SimpleNamespace()
        setattr(stand_in.ops, namespace, ns)
        packet = getattr(ns, op_name, None) or types.SimpleNamespace()
        setattr(ns, op_name, packet)
        if not hasattr(packet, target._overloadname):
            setattr(packet, target._overloadname, lambda *a, _result=result, **k: _result)
    flat_stub.forward.__globals__["torch"] = stand_in
    for module in vllm_stub.modules():
        if isinstance(module, torch.fx.GraphModule) and module is not vllm_stub:
            module.forward.__globals__["torch"] = stand_in
    stub_method = "dispatch table entry replaced (dispatch.select itself runs unchanged)"
    original_exact = dict(getattr(dispatch, "EXACT", {}))
    original_ranges = getattr(dispatch, "RANGE_VARIANTS", None)
    stub_select = {}  # extra keyword arguments for stitch.forward in stubbed runs

    def install_stubs():
        nonlocal stub_method
        stitch.torch = stand_in
        if size in original_exact:
            dispatch.EXACT[size] = stub_variant
        elif original_ranges is not None:
            dispatch.RANGE_VARIANTS = tuple(stub_variant if v is variant else v for v in original_ranges)
        if dispatch.select(size) is not stub_variant:  # the dispatch module changed shape
            stub_method = "select= argument of stitch.forward (a lambda returning the stub variant)"
            stub_select["select"] = lambda _size: stub_variant

    def restore():
        stitch.torch = torch
        if original_exact:
            dispatch.EXACT.clear()
            dispatch.EXACT.update(original_exact)
        if original_ranges is not None:
            dispatch.RANGE_VARIANTS = original_ranges

    def split_only():
        for target, call_args, kwargs, _ in split_calls:
            target(*call_args, **kwargs)

    forward = stitch.forward

    candidates = {
        "stitch": lambda: forward(weights, *args),
        "package_call": lambda: model(*args),
        "graphmodule_flat": lambda: flat(*weights, *args),
        "graphmodule_vllm": lambda: vllm(*weights, *args),
        "stitch_stub": lambda: forward(weights, *args, **stub_select),
        "graphmodule_flat_stub": lambda: flat_stub(*weights, *args),
        "graphmodule_vllm_stub": lambda: vllm_stub(*weights, *args),
        "split_ops_only": split_only,
        "empty_call": lambda: None,
    }
    # Fine-grained interleaving: many short blocks, one per candidate in turn, so that
    # load from other processes falls on every candidate alike. A sample is the mean
    # per-call time of one block of `block_calls` calls.
    import gc

    samples = {key: [] for key in candidates}
    block_calls = params["block_calls"]
    perf_ns = time.perf_counter_ns
    with torch.no_grad():
        for key, fn in candidates.items():  # warm up
            if key == "stitch_stub":
                install_stubs()
            for _ in range(50):
                fn()
            if key == "stitch_stub":
                restore()
        gc.collect()
        gc.disable()
        for _ in range(params["blocks"]):
            for key, fn in candidates.items():
                if key == "stitch_stub":
                    install_stubs()
                start = perf_ns()
                for _ in range(block_calls):
                    fn()
                samples[key].append((perf_ns() - start) / block_calls)
                if key == "stitch_stub":
                    restore()
        gc.enable()
    emit(
        {
            "size": size,
            "compiled_calls": len(compiled),
            "unique_pieces": len(set(call_names)),
            "split_calls": n_split_calls,
            "max_abs_diff_vs_stitch": agree,
            "stub_method": stub_method,
            "results": {key: summarize_ns(value) for key, value in samples.items()},
            "flat_code_lines": len(flat.code.splitlines()),
        }
    )


MODES = {
    "ttfo": mode_ttfo,
    "import": mode_import,
    "steady": mode_steady,
    "memory": mode_memory,
    "aoti_compile": mode_aoti_compile,
    "stitch": mode_stitch,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
