"""scripts/harness.py: the figures, fresh processes, transpile summaries and imports every
benchmark and GPU script shares. Nothing here transpiles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import harness  # noqa: E402


def test_summarize_drops_missing_samples_and_keeps_them_on_request():
    assert harness.summarize([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert harness.summarize([4.0, 1.0], keep_samples=True)["samples"] == [4.0, 1.0]
    assert harness.summarize([None]) == {"n": 0, "median": None, "min": None, "max": None}
    assert harness.median_min_max([7.0]) == (7.0, 7.0, 7.0)


def test_format_summary_scales_rounds_and_collapses_single_samples():
    summary = harness.summarize([0.0123, 0.0101, 0.0150])
    assert harness.format_summary(summary, 1000, " ms") == "12.3 ms (10.1-15.0)"
    assert harness.format_summary([479.4, 411.0, 552.2], unit=" ms", dash="\u2013") == "479 ms (411\u2013552)"
    assert harness.format_summary([0.9], 1000, digits=0) == "900 (900-900)"
    assert harness.format_summary([0.9], 1000, digits=0, single_as_median=True) == "900"
    assert harness.format_summary([]) == "n/a" and harness.format_summary(None) == "n/a"


def test_numbers_keep_about_three_figures():
    assert [harness.format_number(v) for v in (1234.5, 12.345, 1.2345, 0.12345)] == ["1234", "12.3", "1.23", "0.123"]
    assert harness.format_number(None) == "n/a"
    assert harness.format_number(2.0, " s", 1) == "2.0 s"


def test_ratio_is_none_where_undefined():
    assert harness.ratio(3.0, 2.0) == 1.5
    assert harness.ratio(None, 2.0) is None and harness.ratio(1.0, 0) is None
    assert harness.format_ratio(0.6213) == "0.62x" and harness.format_ratio(None) == "n/a"


def test_markdown_table():
    assert harness.markdown_table(["a", "b"], [[1, "x"], [2, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | None |"


def test_result_line_takes_the_last_marked_line():
    stdout = 'noise\nRESULT {"a": 1}\nmore\nRESULT {"a": 2}\n'
    assert harness.result_line(stdout) == {"a": 2}
    assert harness.result_line("BENCH_RESULT [1]", "BENCH_RESULT ") == [1]
    assert harness.result_line("nothing") is None


def test_run_fresh_runs_code_in_another_process_with_its_environment():
    code = "import json, os; print('RESULT ' + json.dumps({'pid': os.getpid(), 'x': os.environ['HARNESS_X']}))"
    run = harness.run_fresh(code, env={"HARNESS_X": "42", "PATH": "/usr/bin:/bin"})
    assert run.ok and run.result["x"] == "42" and run.result["pid"] != __import__("os").getpid()
    assert run.wall_s > 0
    failed = harness.run_fresh("import sys; sys.exit('boom')")
    assert not failed.ok and failed.returncode == 1 and "boom" in failed.stderr and failed.result is None


def test_interleaved_takes_turns_and_leaves_out_failures():
    order = []

    def run(variant):
        order.append(variant)
        return None if variant == "b" else len(order)

    assert harness.interleaved(2, ["a", "b", "c"], run) == {"a": [1, 4], "b": [], "c": [3, 6]}
    assert order == ["a", "b", "c", "a", "b", "c"]


def test_serving_cuda_command():
    command = harness.serving_cuda_command(Path("out"), "serving_llama_1b", *harness.SERVING_1B_VARIANTS, "-q")
    assert command[:3] == [sys.executable, "-m", "transpiler.cli"]
    assert command[3] == str(harness.SERVING_EXAMPLE / "model.py")
    assert command[4:] == ["-o", "out", "--name", "serving_llama_1b", "--import", "serving_ops", "--device", "cuda",
                           "--ranges", "1-64,65-2048", "--sizes", "1", "-q"]  # fmt: skip


def test_transpile_command_and_its_summary():
    command = harness.transpile_command(Path("m/model.py"), Path("out"), "--sizes", "1")
    assert command == [sys.executable, "-m", "transpiler.cli", "m/model.py", "-o", "out", "--sizes", "1"]
    stdout = (
        "wrote out/serving_llama: 32 piece calls (2 unique), 16 splitting-op calls, 4 variants, 36 kernels in 21.9 s\n"
        "  time: capture 2.8 s, compile 15.1 s, render 3.9 s, write 0.1 s\n"
        "  note: something\n"
    )
    assert harness.parse_transpile_summary(stdout) == {
        "piece_calls": 32,
        "unique_pieces": 2,
        "split_calls": 16,
        "variants": 4,
        "kernels": 36,
        "tool_seconds": 21.9,
        "stages": {"capture": 2.8, "compile": 15.1, "render": 3.9, "write": 0.1},
    }
    assert harness.parse_transpile_summary("transpile: error: bad") == {}


def _package(parent: Path, name: str, value: int) -> Path:
    folder = parent / name
    (folder / "sub").mkdir(parents=True)
    (folder / "__init__.py").write_text(f"VALUE = {value}\n")
    (folder / "sub" / "__init__.py").write_text("from .. import VALUE as PARENT\n")
    return folder


def test_import_package_replaces_a_package_of_the_same_name_from_another_folder(tmp_path):
    _package(tmp_path / "one", "harness_probe_pkg", 1)
    _package(tmp_path / "two", "harness_probe_pkg", 2)
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "harness_probe_ops.py").write_text("LOADED = True\n")
    saved = list(sys.path)
    try:
        first = harness.import_package(tmp_path / "one", "harness_probe_pkg", [tmp_path / "ops"])
        assert first.VALUE == 1 and __import__("harness_probe_pkg.sub").sub.PARENT == 1
        assert __import__("harness_probe_ops").LOADED
        second = harness.import_package(tmp_path / "two", "harness_probe_pkg")
        assert second.VALUE == 2 and __import__("harness_probe_pkg.sub").sub.PARENT == 2
    finally:
        sys.path[:] = saved
        for name in [m for m in sys.modules if m.startswith(("harness_probe_pkg", "harness_probe_ops"))]:
            del sys.modules[name]


def test_import_file_runs_a_file_as_its_own_module(tmp_path):
    path = tmp_path / "reference.py"
    path.write_text("CONFIG = {'layers': 2}\n")
    assert harness.import_file(path, "harness_probe_reference").CONFIG == {"layers": 2}


def test_load_model_file_is_the_transpilers_contract(tmp_path):
    (tmp_path / "helper_layer.py").write_text("import torch\nLayer = torch.nn.Linear\n")
    model = tmp_path / "model.py"
    model.write_text(
        "import torch\nfrom helper_layer import Layer\nmodel = Layer(4, 2)\nexample_inputs = torch.randn(3, 4)\n"
    )
    model_file = harness.load_model_file(model)
    assert model_file.model.out_features == 2 and model_file.example_inputs[0].shape == (3, 4)
    (tmp_path / "broken.py").write_text("model = 1\n")
    from transpiler.errors import TranspileError

    with pytest.raises(TranspileError, match="does not define `example_inputs`"):
        harness.load_model_file(tmp_path / "broken.py")


def test_machine_and_process_figures():
    info = harness.machine_info()
    assert info["cpus"] >= 1 and info["cpu_model"]
    line = harness.describe_machine({"cpu_model": "CPU X", "cpus": 4, "cores": 2, "memory_gib": 8.0})
    assert line.startswith("CPU X, 2 cores / 4 CPUs, 8.0 GiB; ")
    assert harness.proc_status_kib("VmRSS") > 0 and harness.proc_status_kib("VmHWM") >= harness.proc_status_kib("VmRSS")
    assert harness.proc_status_kib("NoSuchField") is None and harness.proc_status_kib("VmRSS", pid=0) is None
