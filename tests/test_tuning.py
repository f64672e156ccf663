"""--autotune and tuning.json on the CPU: a tuning run benchmarks Inductor's GEMM candidates
(ATen's bmm against its C++ GEMM template) and records its choices; a replay of the lockfile
gives the same bytes without benchmarking, follows the lockfile's choices, and a bad lockfile
is refused with one line."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import EXAMPLES, ROOT, boundary_sizes, imported_package, inputs_at, load_model_module, run_cli
from torch._inductor.select_algorithm import AlgorithmSelectorCache

from transpiler.ir import SizeRange, Variant
from transpiler.treediff import diff_trees
from transpiler.tuning import _refines, choice_labels, representative_size

NAME = "grouped_mlp"
GOLDEN = ROOT / "generated" / NAME
LOCKFILE = GOLDEN / "tuning.json"
ARGS = [str(ROOT / a) if a.startswith("examples/") else a for a in EXAMPLES[NAME]]
BMM_KEY_PREFIX = "bmm(float32[4, "


@pytest.fixture
def benchmarks(monkeypatch):
    """Counts Inductor's GEMM benchmarks (the real ones still run)."""
    calls = []
    real = AlgorithmSelectorCache.benchmark

    def counted(self, choices, *args, **kwargs):
        calls.append([getattr(c, "name", "") for c in choices])
        return real(self, choices, *args, **kwargs)

    monkeypatch.setattr(AlgorithmSelectorCache, "benchmark", counted)
    return calls


@pytest.fixture
def no_benchmark(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a replay benchmarked a GEMM")

    monkeypatch.setattr(AlgorithmSelectorCache, "benchmark", refuse)


def transpile(out, *extra) -> int:
    return run_cli([*ARGS, "-o", str(out), "-q", *extra])


def lock_with_choice(tmp_path, variant: str, choice: str):
    data = json.loads(LOCKFILE.read_text())
    (entry,) = data["pieces"]["piece_0"][variant]["gemm"].values()
    entry["choice"] = choice
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def other_choice(variant: str) -> str:
    (entry,) = json.loads(LOCKFILE.read_text())["pieces"]["piece_0"][variant]["gemm"].values()
    (other,) = [label for label in entry["us"] if label != entry["choice"]]
    return other


# --- pure functions -------------------------------------------------------------------


def test_representative_size_is_the_geometric_middle_of_a_range():
    assert representative_size(Variant("range_1_16", SizeRange(1, 16), False), hint=8) == 4
    assert representative_size(Variant("range_17_256", SizeRange(17, 256), False), hint=8) == 66
    assert representative_size(Variant("size_8", SizeRange(8, 8), True), hint=3) == 8
    assert representative_size(Variant("range_5_max", SizeRange(5, None), False), hint=40) == 40


def test_a_replay_may_compile_the_parts_a_tuning_run_split_a_range_into():
    S = SizeRange
    assert _refines([S(1, 8), S(9, 16), S(17, 128)], [S(1, 16), S(17, 128)])
    assert not _refines([S(1, 20), S(21, 128)], [S(1, 16), S(17, 128)])  # straddles 16|17
    assert not _refines([S(1, 8), S(10, 128)], [S(1, 128)])  # a gap
    assert not _refines([S(1, 64)], [S(1, 128)])  # short


def test_choice_labels_drop_counters_and_number_repeats():
    class Choice:
        def __init__(self, name, description=""):
            self.name, self.description = name, description

    choices = [
        Choice("bmm"),
        Choice("triton_mm_17", "BLOCK_M=16"),
        Choice("triton_mm_18", "BLOCK_M=32"),
        Choice("cpp_gemm_3"),
        Choice("cpp_gemm_4"),
    ]
    assert choice_labels(choices) == [
        "bmm",
        "triton_mm (BLOCK_M=16)",
        "triton_mm (BLOCK_M=32)",
        "cpp_gemm #1",
        "cpp_gemm #2",
    ]


# --- the golden lockfile --------------------------------------------------------------


def test_golden_lockfile_is_canonical_and_has_no_paths_or_timestamps():
    text = LOCKFILE.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["format"] == 1 and data["device"] == "cpu" and data["torch"] == torch.__version__.split("+")[0]
    assert not re.search(r"/(tmp|home|work|root|usr)/", text)
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}:\d{2}", text)
    variants = data["pieces"]["piece_0"]
    assert sorted(variants) == ["range_17_128", "range_1_16", "size_1"]
    assert variants["range_1_16"]["benchmark_size"] == 4 and variants["range_17_128"]["benchmark_size"] == 47
    for variant in ("range_1_16", "range_17_128"):
        ((key, entry),) = variants[variant]["gemm"].items()
        assert key.startswith(BMM_KEY_PREFIX)
        assert entry["choice"] in entry["us"] and len(entry["us"]) == 2  # ATen and the C++ template


# --- tuning run, replay, refresh ------------------------------------------------------


def test_autotune_benchmarks_and_writes_a_deterministic_lockfile(tmp_path, benchmarks):
    assert transpile(tmp_path / "a", "--autotune") == 0
    # One GEMM selection per range (the two bmms share a shape); size 1 lowers bmm to a loop.
    assert len(benchmarks) == 2 and all(len(names) == 2 for names in benchmarks)
    text = (tmp_path / "a" / NAME / "tuning.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert str(tmp_path) not in text
    golden = json.loads(LOCKFILE.read_text())
    # Same keys and candidates as the golden record; the measured times are this run's.
    strip = lambda d: {
        p: {v: {k: sorted(e["us"]) for k, e in entry.get("gemm", {}).items()} for v, entry in vs.items()}
        for p, vs in d["pieces"].items()
    }
    assert strip(data) == strip(golden)
    # Its replay, in another folder, gives the same package, lockfile included.
    assert transpile(tmp_path / "b", "--tuning", str(tmp_path / "a" / NAME / "tuning.json")) == 0
    assert diff_trees(tmp_path / "a" / NAME, tmp_path / "b" / NAME) == []


def test_replay_gives_the_golden_bytes_without_benchmarking(tmp_path, no_benchmark):
    # The lockfile inside OUT/NAME is replayed when no --tuning is given.
    shutil.copytree(GOLDEN, tmp_path / NAME, ignore=shutil.ignore_patterns("*.so", "binaries.json", "__pycache__"))
    assert transpile(tmp_path) == 0
    assert diff_trees(GOLDEN, tmp_path / NAME) == []


def test_replay_follows_the_lockfile_not_a_benchmark(tmp_path, no_benchmark):
    choice = other_choice("range_1_16")
    edited = lock_with_choice(tmp_path, "range_1_16", choice)
    assert transpile(tmp_path / "out", "--tuning", str(edited)) == 0
    package_dir = tmp_path / "out" / NAME
    assert (package_dir / "tuning.json").read_text() == edited.read_text()
    golden_source = (GOLDEN / "pieces" / "piece_0.py").read_text()
    source = (package_dir / "pieces" / "piece_0.py").read_text()
    function = source[source.index("def range_1_16(") :].split("\n\n\n")[0]
    if choice.startswith("cpp_"):
        assert "torch.bmm(" not in function and "cpp_fused_bmm" in function
    else:
        assert "torch.bmm(" in function
    assert source != golden_source
    model_file = load_model_module(ROOT / ARGS[0])
    with imported_package(tmp_path / "out", NAME) as package:
        compiled = package.load()
        for size in boundary_sizes(package):
            inputs = inputs_at(model_file.example_inputs, package.INPUTS, size, seed=size)
            with torch.no_grad():
                expected = model_file.model.eval()(*inputs)
            torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-4, atol=1e-5)


def test_autotune_refreshes_an_existing_lockfile(tmp_path, benchmarks):
    shutil.copytree(GOLDEN, tmp_path / NAME, ignore=shutil.ignore_patterns("*.so", "binaries.json", "__pycache__"))
    stale = json.loads(LOCKFILE.read_text())
    for entry in stale["pieces"]["piece_0"]["range_1_16"]["gemm"].values():
        entry["us"] = {label: 123456.0 for label in entry["us"]}
    (tmp_path / NAME / "tuning.json").write_text(json.dumps(stale, indent=2, sort_keys=True) + "\n")
    assert transpile(tmp_path, "--autotune") == 0
    assert len(benchmarks) == 2
    assert "123456.0" not in (tmp_path / NAME / "tuning.json").read_text()


# --- bad lockfiles: one line, exit 2, nothing written ---------------------------------


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "bad.json"
    path.write_text(text)
    return str(path)


def _rewrite(tmp_path, change) -> str:
    data = json.loads(LOCKFILE.read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return str(path)


BAD_LOCKFILES = {
    "not json": (lambda p: _write(p, "{not json"), [], "is not valid JSON (line 1"),
    "missing": (lambda p: str(p / "none.json"), [], "no such file"),
    "other format": (lambda p: _rewrite(p, lambda d: d.update(format=99)), [], "not a tuning lockfile of format 1"),
    "other torch": (lambda p: _rewrite(p, lambda d: d.update(torch="1.0.0")), [], "was tuned for torch '1.0.0'"),
    "other device": (lambda p: _rewrite(p, lambda d: d.update(device="cuda")), [], "was tuned for device 'cuda'"),
    "pieces not a mapping": (lambda p: _rewrite(p, lambda d: d.update(pieces=[])), [], "are not piece -> variant"),
    "other ranges": (
        lambda p: str(LOCKFILE),
        ["--ranges", "1-32,33-128"],
        "was tuned for range_17_128, range_1_16, size_1, not size 1, 1-32, 33-128",
    ),
    "other pieces": (
        lambda p: _rewrite(p, lambda d: d["pieces"].update(piece_1=d["pieces"]["piece_0"])),
        [],
        "has pieces piece_0, piece_1, this transpile piece_0",
    ),
    "unknown choice": (
        lambda p: _rewrite(
            p,
            lambda d: [
                e.update(choice="no_such_kernel") for e in d["pieces"]["piece_0"]["range_1_16"]["gemm"].values()
            ],
        ),
        [],
        "chose 'no_such_kernel' for bmm(",
    ),
    "missing choice": (
        lambda p: _rewrite(p, lambda d: d["pieces"]["piece_0"]["range_1_16"].pop("gemm")),
        [],
        "has no gemm choice for bmm(",
    ),
    "choice never made": (
        lambda p: _rewrite(p, lambda d: d["pieces"]["piece_0"]["size_1"].update(gemm={"mm(x)": {"choice": "mm"}})),
        [],
        "has a gemm choice for mm(x) in piece_0 size_1 that this transpile never made",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LOCKFILES))
def test_bad_lockfile_fails_with_one_line(case, tmp_path, capsys, no_benchmark):
    make, extra, expected = BAD_LOCKFILES[case]
    lockfile = make(tmp_path)
    out = tmp_path / "out"
    rc = run_cli([*ARGS, "-o", str(out), "-q", "--tuning", lockfile, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("transpile: error:") and expected in err[0], err
    assert "--autotune" in err[0]  # says what to do
    assert not (out / NAME).exists()


def test_autotune_and_tuning_together_are_refused(tmp_path, capsys):
    rc = run_cli([*ARGS, "-o", str(tmp_path), "--autotune", "--tuning", str(LOCKFILE)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--autotune and --tuning: choose one" in err[0]


def test_replay_compiles_the_split_ranges_of_its_lockfile(tmp_path, no_benchmark):
    """Where a tuning run split a range at Inductor's guards, its lockfile names the parts;
    a replay of the same --ranges compiles those parts."""
    data = json.loads(LOCKFILE.read_text())
    variants = data["pieces"]["piece_0"]
    variants["range_1_8"] = variants["range_9_16"] = variants.pop("range_1_16")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert transpile(tmp_path / "out", "--tuning", str(path)) == 0
    with imported_package(tmp_path / "out", NAME) as package:
        assert package.RANGES == ((1, 8), (9, 16), (17, 128))
    assert (tmp_path / "out" / NAME / "tuning.json").read_text() == path.read_text()
