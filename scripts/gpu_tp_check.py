#!/usr/bin/env python3
"""Tensor parallel on 2 GPUs: the llama_tp example's 1B-class and 8B-class bf16 configs,
transpiled for cuda with --tensor-parallel 2 (and 1), run by torchrun ranks over NCCL and
compared with single-GPU eager; then a latency table. Run on the lent nvidia-h200-x2 machine
in one device call (10 minutes at most; it keeps to about 9):

    run(command="bash scripts/gpu-run.sh scripts/gpu_tp_check.py", carry=[".whl"], kind="nvidia-h200-x2")

Stages, each printed as it finishes:
1. transpile the four packages at once, two per GPU (1b and 8b, 1 and 2 ranks; --sizes 1
   --ranges 2-512, capture sizes 1, 128, 512);
2. per config, torchrun --nproc-per-node 2 runs this file with --worker: every rank builds
   the full model on its GPU (same seed, so the same weights), loads the 2-rank package
   from that state dict (each rank slices its shards), and runs a decode loop plain, with
   piecewise CUDA graphs (collectives inside the piece graphs) and with full graphs (NCCL
   captured inside), comparing logits and its slice of the KV cache with the full model run
   eagerly on its own GPU; rank 0 does the same for the 1-rank package; then times decode
   (1 token after a 32-token prompt) and prefill (128, 512 tokens) for every path;
3. while time remains, torch.compile (default mode) of the same one-rank model on the same
   ranks, and of the full model on rank 0, timed the same way.
bf16 tolerance: the largest logit (or cache) difference over the largest magnitude, 5e-2:
Inductor's fusions round differently from eager's op-by-op bf16 (the 1-rank package, with no
collective, shows the same size of difference; its error is printed beside).
Keeps NCCL_NVLS_ENABLE=0 and TORCH_SYMM_MEM_DISABLE_MULTICAST=1 in every process it starts.
--cpu-dry-run runs the same code on gloo with the tiny config and no graphs (a smoke test).
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, import_file, import_package, markdown_table, transpile_command
from harness import format_us as cell

ROOT = REPO

MODEL = ROOT / "examples" / "llama_tp" / "model.py"
IMPORT_PATHS = [str(ROOT / "examples" / "llama_tp")]
ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
BUDGET_S = 540  # of the device call's 600 s: the wheels, nvidia-smi and the tarball take the rest
TOLERANCE = 5e-2
CAPTURE_SIZES = "1,128,512"
# Tokens per call of the decode loop: exact capture sizes and padded ones (the dry run's
# tiny config takes at most 64 tokens a call into 128 slots).
DECODE_STEPS = {"cuda": [32, 1, 1, 3, 128, 1, 100, 1], "cpu": [32, 1, 1, 3, 16, 1, 64, 1]}
PREFILLS = {"cuda": (128, 512), "cpu": (16, 64)}
MODES = ("plain", "piecewise", "full")


# Collectives as splitting ops (the stitching function calls them between the pieces, and
# piecewise graphs run them eagerly), for the first config: against collectives inside pieces.
SPLIT_OPS = ["--split-ops", "serving::attention,_c10d_functional::all_reduce,_c10d_functional::all_gather_into_tensor"]


def package_name(config: str, ranks: int, split: bool = False) -> str:
    return f"llama_tp_{config}_tp{ranks}{'_split' if split else ''}"


def packages_of(config: str, first: bool) -> list[tuple[str, int, bool]]:
    """(package name, ranks, collectives split) of a config, 2 ranks first."""
    packages = [(package_name(config, 2), 2, False)]
    if first:
        packages.append((package_name(config, 2, True), 2, True))
    return packages + [(package_name(config, 1), 1, False)]


def say(*parts) -> None:
    print(*parts, flush=True)


# --- the parent: transpile, then torchrun ------------------------------------------


def transpile_all(out: Path, configs, device: str, deadline: float) -> dict:
    """Start every transpile at once (two per GPU); return package name -> ok."""
    jobs = {}
    every = [(config, *package) for config in configs for package in packages_of(config, config == configs[0])]
    for index, (config, name, ranks, split) in enumerate(every):
        command = transpile_command(
            MODEL,
            out,
            "--name",
            name,
            "--import",
            "serving_ops",
            "--tensor-parallel",
            str(ranks),
            "-q",
            *(SPLIT_OPS if split else []),
            # One process each: a compile worker would build the model on the GPU again (16 GB
            # for the 8B config at one rank), and four transpiles already share two GPUs.
            "-j",
            "1",
        )
        if device == "cuda":
            command += ["--device", "cuda", "--ranges", "2-512", "--sizes", "1", "--capture-sizes", CAPTURE_SIZES]
        else:
            command += ["--ranges", "2-64", "--sizes", "1"]
        env = {
            **os.environ,
            **ENV,
            "PYTHONPATH": f"{os.environ.get('PYTHONPATH', '')}:{ROOT}",
            "LLAMA_TP_CONFIG": config,
            "LLAMA_TP_DTYPE": "bfloat16" if device == "cuda" else "float32",
            "LLAMA_TP_DEVICE": device,
            "TORCHINDUCTOR_COMPILE_THREADS": "8",
        }
        if device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(index % 2)
        log = open(out.parent / f"transpile-{name}.log", "w")
        jobs[name] = (
            subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
            time.time(),
            log,
        )
    results = {}
    for name, (process, started, log) in jobs.items():
        try:
            code = process.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "timeout"
        log.close()
        results[name] = code == 0
        tail = (out.parent / f"transpile-{name}.log").read_text()[-1500:] if code != 0 else ""
        say(f"{'PASS' if code == 0 else 'FAIL'} transpile {name} ({time.time() - started:.0f} s) {tail}")
    return results


_PORTS = iter(range(29511, 29600))  # a port of its own for each torchrun: none waits on a closing one


def run_workers(config: str, stage: str, out: Path, device: str, deadline: float, first: bool) -> bool:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(next(_PORTS)),
        __file__,
        "--worker",
        config,
        stage,
        str(out),
        device,
        str(deadline),
        str(int(first)),
    ]
    env = {**os.environ, **ENV, "PYTHONPATH": f"{os.environ.get('PYTHONPATH', '')}:{ROOT}", "OMP_NUM_THREADS": "4"}
    try:
        code = subprocess.run(command, cwd=ROOT, env=env, timeout=max(1.0, deadline - time.time() + 20)).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    say(f"{'PASS' if code == 0 else 'FAIL'} workers {config} {stage} (exit {code})")
    return code == 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--cpu-dry-run", action="store_true", help="gloo, the tiny config, no CUDA graphs")
    parser.add_argument("--configs", default=None, help="comma-separated (default: 1b,8b; tiny for the dry run)")
    options = parser.parse_args()
    started = time.time()
    deadline = started + BUDGET_S
    device = "cpu" if options.cpu_dry_run else "cuda"
    configs = (options.configs or ("tiny" if options.cpu_dry_run else "1b,8b")).split(",")
    out = options.scratch / "gen"
    out.mkdir(parents=True, exist_ok=True)
    import torch  # the parent only starts processes: it initialises no GPU

    say(f"torch {torch.__version__}, cuda {torch.version.cuda}; configs {configs}; budget {BUDGET_S} s")
    transpiled = transpile_all(out, configs, device, deadline - 60)
    ok = all(transpiled.values())
    for stage in ("packages", "compile"):
        for config in configs:
            if not all(transpiled[name] for name, _, _ in packages_of(config, config == configs[0])):
                continue
            if deadline - time.time() < (45 if stage == "packages" else 90):
                say(f"SKIP {config} {stage}: {deadline - time.time():.0f} s left")
                continue
            ok &= run_workers(config, stage, out, device, deadline, config == configs[0])
    say(f"done in {time.time() - started:.0f} s")
    return 0 if ok else 1


# --- a torchrun rank ----------------------------------------------------------------


class Rank:
    """What one rank holds: the process group, its device, the full reference model."""

    def __init__(self, config: str, out: Path, device: str, deadline: float, first: bool):
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.deadline = deadline
        self.cuda = device == "cuda"
        local = int(os.environ["LOCAL_RANK"])
        if self.cuda:
            torch.cuda.set_device(local)
        self.device = torch.device("cuda", local) if self.cuda else torch.device("cpu")
        os.environ.update(
            LLAMA_TP_CONFIG=config, LLAMA_TP_DEVICE=device, LLAMA_TP_DTYPE="bfloat16" if self.cuda else "float32"
        )
        self.out = out
        sys.path[:0] = IMPORT_PATHS
        # Before the group exists, so that the model file builds the full model (world size 1).
        self.reference = import_file(MODEL, "llama_tp_reference")
        self.config, self.dtype = self.reference.CONFIG, self.reference.DTYPE
        # A short timeout: a rank that fails alone leaves the other waiting in a collective.
        timeout = datetime.timedelta(seconds=300)
        if self.cuda:
            dist.init_process_group("nccl", device_id=self.device, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        self.state = self.reference.model.state_dict()
        self.name = config
        self.packages = packages_of(config, first)
        self.steps = DECODE_STEPS[device]
        self.prefills = PREFILLS[device]
        self.rows = []  # table rows, rank 0

    def say(self, *parts) -> None:
        if self.rank == 0:
            say(*parts)

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def agree(self, value: bool) -> bool:
        """Rank 0's decision, on every rank."""
        flag = self.torch.tensor([1 if value else 0], device=self.device)
        self.dist.broadcast(flag, 0)
        return bool(flag.item())

    def time_left(self, needed: float) -> bool:
        return self.agree(self.deadline - time.time() > needed)

    def cache(self, ranks: int):
        return self.reference.new_kv_cache(self.config, self.dtype, self.device, world=ranks)

    def inputs(self, tokens: int, start: int, generator):
        torch = self.torch
        ids = torch.randint(0, self.config.vocab, (1, tokens), generator=generator).to(self.device)
        positions = torch.arange(start, start + tokens, device=self.device).unsqueeze(0)
        return ids, positions, positions[0].clone()


def relative(actual, expected) -> float:
    scale = expected.float().abs().max().item() or 1.0
    return (actual.float() - expected.float()).abs().max().item() / scale


def decode_loop(node: Rank, model, cache, ranks: int) -> tuple[float, float]:
    """The package and the full eager model over the decode steps; worst (logits, cache) errors."""
    torch = node.torch
    eager_cache = node.cache(1)
    kv_heads = node.config.kv_heads // ranks
    mine = slice(node.rank * kv_heads, (node.rank + 1) * kv_heads) if ranks > 1 else slice(None)
    generator = torch.Generator().manual_seed(0)
    position, worst_logits, worst_cache = 0, 0.0, 0.0
    for tokens in node.steps:
        ids, positions, slots = node.inputs(tokens, position, generator)
        with torch.no_grad():
            expected = node.reference.model(ids, positions, eager_cache, slots)
        actual = model(ids, positions, cache, slots)
        worst_logits = max(worst_logits, relative(actual, expected))
        worst_cache = max(worst_cache, relative(cache[:, :, :-1], eager_cache[:, :, :-1, mine]))
        position += tokens
    return worst_logits, worst_cache


def time_path(node: Rank, run, ranks: int, cache=None) -> dict:
    """Per size (1 = decode after a 32-token prompt, else prefill): microseconds per call.
    `cache`: the one a graph-captured model was captured on."""
    torch = node.torch
    cache = node.cache(ranks) if cache is None else cache
    samples = {}
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ids, positions, slots = node.inputs(32, 0, generator)
        run(ids, positions, cache, slots)  # the prompt the decode steps follow
        for size, repeats in ((1, 50), *((p, 15) for p in node.prefills)):
            start = 32 if size == 1 else 0
            inputs = node.inputs(size, start, generator)
            times = []
            for index in range(repeats + 3):
                if ranks > 1:
                    node.dist.barrier()  # both ranks start together: the collectives wait for the later one
                node.synchronize()
                begin = time.perf_counter()
                if node.cuda:
                    first, last = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    first.record()
                run(inputs[0], inputs[1], cache, inputs[2])
                if node.cuda:
                    last.record()
                    last.synchronize()
                    elapsed = first.elapsed_time(last) * 1e3
                else:
                    elapsed = (time.perf_counter() - begin) * 1e6
                if index >= 3:
                    times.append(elapsed)
            samples[size] = times
    return samples


def add_row(node: Rank, ranks: int, path: str, samples: dict) -> None:
    row = [node.name, ranks, path, cell(samples[1]), *(cell(samples[p]) for p in node.prefills)]
    node.rows.append(row)
    node.say("ROW | " + " | ".join(str(v) for v in row) + " |")


def stage_packages(node: Rank) -> bool:
    dist = node.dist
    ok = True
    for name, ranks, split in node.packages:
        if ranks == 2 or node.rank == 0:  # rank 1 waits at the barrier below while rank 0 runs one rank
            package = import_package(node.out, name, IMPORT_PATHS)
            started = time.perf_counter()
            base = package.load(weights=node.state)
            node.synchronize()
            load_s = time.perf_counter() - started
            for mode in MODES if node.cuda else ("plain",):
                try:
                    cache = node.cache(ranks)
                    # The same weights, shared: another load() would copy this rank's shards again.
                    model = base if mode == "plain" else package.load(rank_weights=base.state_dict())
                    if mode != "plain":
                        model.capture(mode=mode, kv_cache=cache)
                    logits, cached = decode_loop(node, model, cache, ranks)
                    passed = max(logits, cached) < TOLERANCE
                    samples = time_path(node, model, ranks, cache)
                except Exception as error:  # report and go on
                    logits, cached, passed, samples = float("nan"), float("nan"), False, None
                    say(f"rank {node.rank}: {type(error).__name__}: {str(error)[:1500]}")
                ok &= passed
                say(
                    f"{'PASS' if passed else 'FAIL'} {name}, rank {node.rank}, {mode}: decode loop "
                    f"vs single-GPU eager, relative error logits {logits:.2e} cache {cached:.2e} (tolerance {TOLERANCE:g}); "
                    f"load {load_s:.1f} s"
                )
                if samples:
                    path = "package" + (" (collectives split)" if split else "")
                    add_row(node, ranks, path if mode == "plain" else f"{path} + {mode} graphs", samples)
                model = base = None
        if ranks == 2:
            dist.barrier()
    if node.rank == 0:
        add_row(node, 1, "eager", time_path(node, node.reference.model, 1))
        loaded = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor")))
        ok &= not loaded
        say(f"{'PASS' if not loaded else 'FAIL'} {node.name}: the packages loaded no compiler modules {loaded[:5]}")
    dist.barrier()
    return ok


def rank_model(node: Rank):
    """The model file's one-rank model at world size 2, on the 2-rank package's shards."""
    package = import_package(node.out, package_name(node.name, 2), IMPORT_PATHS)
    shards = package.load(weights=node.state).state_dict()
    module = node.reference.build(node.config, node.dtype, world=node.world, device="meta")
    keys = set(module.state_dict())
    module.load_state_dict({k: v for k, v in shards.items() if k in keys}, assign=True)
    module.inv_freq = node.reference.model.inv_freq
    return module.eval()


def stage_compile(node: Rank) -> bool:
    torch, dist = node.torch, node.dist
    if node.time_left(100):
        started = time.perf_counter()
        module = rank_model(node)
        add_row(node, 2, "eager", time_path(node, module, 2))
        add_row(node, 2, "torch.compile", time_path(node, torch.compile(module, dynamic=True), 2))
        node.say(f"  (2 ranks: torch.compile and its runs took {time.perf_counter() - started:.0f} s)")
    else:
        node.say(f"SKIP {node.name} torch.compile on 2 ranks: too little time left")
    if node.time_left(80):
        if node.rank == 0:
            started = time.perf_counter()
            add_row(node, 1, "torch.compile", time_path(node, torch.compile(node.reference.model, dynamic=True), 1))
            say(f"  (1 rank: torch.compile and its runs took {time.perf_counter() - started:.0f} s)")
    else:
        node.say(f"SKIP {node.name} torch.compile on 1 rank: too little time left")
    dist.barrier()
    return True


def worker(config: str, stage: str, out: str, device: str, deadline: str, first: str) -> int:
    node = Rank(config, Path(out), device, float(deadline), first == "1")
    gpu = node.torch.cuda.get_device_name() if node.cuda else "CPU (gloo)"
    node.say(f"{config} {stage} on {node.world} x {gpu}")
    ok = stage_packages(node) if stage == "packages" else stage_compile(node)
    if node.rank == 0 and node.rows:
        headers = ["config", "ranks", "path", "decode, 1 token", *(f"prefill, {p} tokens" for p in node.prefills)]
        say(markdown_table(headers, node.rows))
    node.dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(*sys.argv[2:8]))
    sys.exit(main())
