"""The reproducibility contract (README, "Reproducibility"): the emitted bytes depend on
MODEL.py, the options, the lockfile and the versions of torch and Python, and on nothing
else of the machine or the environment.

Two fresh processes transpile the same example in environments that differ in every item
the contract names: CPU affinity (one core / two), OMP_NUM_THREADS, HOME, TMPDIR (and so
the Inductor cache: two builds of every kernel binary), locale, umask, working directory,
the model's path (absolute / relative), hash seed and -j. The trees must be equal, the
binaries too, and a package built on one core passes `transpile --check` on two.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from transpiler.treediff import diff_trees

MODEL = ROOT / "examples" / "mlp" / "model.py"
ARGS = ["--name", "mlp", "--ranges", "1-32,33-128", "-q"]
# Variables of the calling environment that the contract says do not matter: each run sets
# its own (or none).
_CONTRACT_VARIABLES = (
    "HOME",
    "TMPDIR",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LANGUAGE",
    "OMP_NUM_THREADS",
    "PYTHONHASHSEED",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "TORCHINDUCTOR_CACHE_DIR",
)


def _environment(root: Path, **variables) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CONTRACT_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for folder in ("home", "tmp", "cwd"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), XDG_CACHE_HOME=str(root / "home" / ".cache"))
    env.update({k: v for k, v in variables.items() if v is not None})
    return env


def _run(env: dict, cwd: Path, cores: set[int], umask: int, args: list[str]) -> subprocess.Popen:
    def confine():  # in the child, before exec: what `taskset` and `umask` would do
        os.sched_setaffinity(0, cores)
        os.umask(umask)

    return subprocess.Popen(
        [sys.executable, "-m", "transpiler.cli", *args],
        cwd=cwd,
        env=env,
        preexec_fn=confine,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


CORES = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The same example transpiled in two environments at once: (one core, two cores), each
    with its own fresh output, HOME, TMPDIR and Inductor cache."""
    if len(CORES) < 2:
        pytest.fail("the contract test needs a machine with at least two cores (it compares one and two)")
    root = tmp_path_factory.mktemp("reproducible")
    one, two = root / "one-core", root / "a" / "deeper" / "two-cores"
    one_env = _environment(one, LANG="C", LC_ALL="C", OMP_NUM_THREADS="1", PYTHONHASHSEED="1")
    # The two-core run keeps the suite's shared Inductor cache (a build made elsewhere, or its
    # own); the one-core run builds every kernel afresh in its TMPDIR.
    two_env = _environment(
        two,
        LANG="C.UTF-8",
        LC_ALL="C.UTF-8",
        PYTHONHASHSEED="4242",
        TORCHINDUCTOR_CACHE_DIR=os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor")),
    )
    runs = [
        _run(one_env, one / "cwd", {CORES[0]}, 0o077, [str(MODEL), "-o", str(one / "out"), *ARGS, "-j", "1"]),
        _run(
            two_env,
            two / "cwd",
            set(CORES[:2]),
            0o022,
            [os.path.relpath(MODEL, two / "cwd"), "-o", "../out", *ARGS, "-j", "2"],
        ),
    ]
    for result in map(_finish, runs):
        assert result.returncode == 0, result.stderr[-2000:]
    return {"one": one / "out" / "mlp", "two": two / "out" / "mlp", "two_env": two_env, "two_root": two}


def test_one_core_and_two_cores_emit_the_same_tree(two_builds):
    assert diff_trees(two_builds["one"], two_builds["two"]) == []
    manifest = (two_builds["one"] / "manifest.json").read_text()
    assert '"threads": 8' in manifest  # the count the kernels were generated for, not the machine's


def test_a_golden_built_on_one_core_passes_check_on_two(two_builds):
    two = two_builds["two_root"]
    result = _finish(
        _run(
            two_builds["two_env"],
            two / "cwd",
            set(CORES[:2]),
            0o022,
            [str(MODEL), "-o", str(two_builds["one"].parent), *ARGS, "--check"],
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_kernel_binaries_built_twice_are_identical_and_name_no_folder(two_builds):
    one_binaries = sorted(p.relative_to(two_builds["one"]) for p in two_builds["one"].rglob("*.so"))
    assert one_binaries, "the example has no kernel binary"
    assert one_binaries == sorted(p.relative_to(two_builds["two"]) for p in two_builds["two"].rglob("*.so"))
    folders = [str(two_builds["one"].parent.parent), str(Path(torch.__file__).parent), sysconfig.get_paths()["include"]]
    for relative in one_binaries:
        data = (two_builds["one"] / relative).read_bytes()
        assert data == (two_builds["two"] / relative).read_bytes(), f"{relative}: two builds differ"
        for folder in folders:
            assert folder.encode() not in data, f"{relative} embeds {folder}"
    assert (two_builds["one"] / "binaries.json").read_bytes() == (two_builds["two"] / "binaries.json").read_bytes()


def test_modes_do_not_follow_the_umask(two_builds):
    """The one-core run had umask 077: its package is still readable by everyone."""
    for root in (two_builds["one"], two_builds["two"]):
        assert stat.S_IMODE(root.stat().st_mode) == 0o755
        for path in root.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


# A machine with other caches (a 2-core Intel Xeon: 48 KiB L1d, 1.25 MiB L2), as Inductor's
# C++ GEMM template reads them through torch.cpu.get_capabilities().
_OTHER_CPU = """
import sys, torch
real = torch.cpu.get_capabilities
torch.cpu.get_capabilities = lambda: {**real(), "l1d_cache_size": 49152, "l2_cache_size": 1310720}
from transpiler.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_cpu_with_other_cache_sizes_emits_the_same_tuned_gemms(example_out):
    """The tuned example (its batched matmuls use the C++ GEMM template, whose blocking
    depends on the cache sizes) transpiled as on a CPU with other caches equals the fixture's
    transpile on this one: the kernels are generated for BUILD_ASSUMPTIONS' caches."""
    import json

    from conftest import EXAMPLES

    out = example_out("grouped_mlp")
    cpp = "".join(p.read_text() for p in (out / "grouped_mlp").rglob("*.cpp"))
    assert "L2_cache_size = 524288" in cpp  # the GEMM template is there, with the assumed L2
    args = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES["grouped_mlp"]]
    args += ["--tuning", str(ROOT / "generated" / "grouped_mlp" / "tuning.json"), "-o", str(out), "--check", "-j", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_CPU, *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert (
        json.loads((out / "grouped_mlp" / "manifest.json").read_text())["build_assumptions"]["l2_cache_bytes"] == 524288
    )
