"""The compile pool (-j N): results in task order whatever finished first, this process
compiling alongside the workers, and one clear error for each way a worker can fail.
Workers run stand-in tasks (pool_fakes.py), so these tests need no model."""

from __future__ import annotations

import os
import shutil

import pool_fakes
import pytest

from transpiler.errors import TranspileError
from transpiler.parallel import WorkerPool


def _pool(count=1, digest="same", setup=pool_fakes.setup):
    pool = WorkerPool({"digest": digest}, count, setup=setup)
    pool.digest = "same"
    return pool


def _here(task):
    value, delay, _ = task
    return pool_fakes._compile((value, delay, "ok"))


def test_results_come_back_in_task_order_from_every_process():
    pool = _pool(count=2)
    steps = []
    try:
        # Early tasks are slow: later ones finish first, some on the workers.
        tasks = [(n, 0.6 if n < 3 else 0.05, "ok") for n in range(16)]
        results = pool.compile(tasks, _here, step=lambda: steps.append(1))
        assert [r["value"] for r in results] == [n * 10 for n in range(16)]
        assert len(steps) == 16
        pids = {r["pid"] for r in results}
        assert os.getpid() in pids and len(pids) >= 2, pids
        # A second round (as after a range split) on the same workers.
        again = pool.compile([(n, 0.0, "ok") for n in range(5)], _here)
        assert [r["value"] for r in again] == [0, 10, 20, 30, 40]
        pool.finish()
    finally:
        pool.close()
    assert all(not w.process.is_alive() for w in pool._workers)


def _first_worker_task(pool, what):
    """Tasks that keep this process busy until the worker has taken the one that misbehaves."""
    return [(0, 3.0, "ok"), (1, 0.0, what), (2, 0.0, "ok")]


@pytest.mark.parametrize(
    "what, error, message",
    [
        ("fail", ValueError, "task 1 failed in a worker"),
        ("unpicklable", RuntimeError, "in a compile worker: .*Unpicklable: an error that cannot cross processes"),
        ("die", TranspileError, "a compile worker exited with code 3 while compiling; run again with -j 1"),
    ],
)
def test_a_failing_worker_stops_the_compile_with_its_error(what, error, message):
    pool = _pool()
    try:
        with pytest.raises(error, match=message):
            pool.compile(_first_worker_task(pool, what), _here)
    finally:
        pool.close()


def test_a_worker_that_captured_another_graph_is_stopped_and_its_share_done_here():
    pool = _pool(digest="other")
    try:
        results = pool.compile([(0, 0.5, "ok"), (1, 0.0, "ok"), (2, 0.0, "ok")], _here)
        assert [r["value"] for r in results] == [0, 10, 20]
        assert {r["pid"] for r in results} == {os.getpid()}
        assert pool.mismatched == 1
        pool.finish()
    finally:
        pool.close()


def test_a_worker_that_cannot_prepare_is_an_error():
    pool = _pool(setup=pool_fakes.setup_fails)
    try:
        with pytest.raises(TranspileError, match="could not prepare the model: the model file vanished; run with -j 1"):
            pool.compile([(0, 3.0, "ok"), (1, 0.0, "ok")], _here)
    finally:
        pool.close()


def test_an_error_here_abandons_the_round_and_the_next_one_is_clean():
    pool = _pool()
    calls = []

    def here(task):
        calls.append(task[0])
        if task[0] == 0:
            raise TranspileError("split the range")
        return _here(task)

    try:
        with pytest.raises(TranspileError, match="split the range"):
            # The worker is still on its slow task when this process fails.
            pool.compile([(0, 0.5, "ok"), (1, 1.5, "ok")], here)
        results = pool.compile([(5, 0.0, "ok"), (6, 0.0, "ok"), (7, 0.0, "ok")], lambda t: _here(t))
        assert [r["value"] for r in results] == [50, 60, 70]
    finally:
        pool.close()


def test_workers_compile_the_same_bytes_as_this_process(example_out, tmp_path):
    """The mlp example through two workers (this process compiling nothing) equals its
    transpile with -j 1, file for file."""
    from conftest import EXAMPLES, ROOT

    from transpiler.options import Options, parse_ranges, parse_sizes
    from transpiler.pipeline import transpile
    from transpiler.treediff import diff_trees
    from transpiler.write import materialize_to

    args = EXAMPLES["mlp"]
    assert args[1:] == ["--name", "mlp", "--ranges", "1-32,33-128", "--sizes", "4"]
    options = Options(
        model_path=ROOT / args[0], name="mlp", ranges=parse_ranges("1-32,33-128"), sizes=parse_sizes("4"), jobs=3
    )
    pool = WorkerPool(options, 2)
    pool.caller_compiles = False
    rendered, summary = transpile(options, pool=pool)
    assert summary.variants == 3
    assert pool.mismatched == 0 and not any("compile worker" in note for note in summary.notes)
    materialize_to(rendered, tmp_path / "mlp")
    assert diff_trees(example_out("mlp") / "mlp", tmp_path / "mlp") == []


class _Unbuildable:
    """A shared plan that a worker cannot rebuild (as pieces calling an op MODEL.py registers)."""

    def prepare_process(self):
        raise LookupError("op mine::op is not registered in this process")


def test_a_worker_that_cannot_rebuild_the_pieces_hands_its_tasks_back():
    pool = _pool(count=2)
    try:
        pool.share(_Unbuildable())
        results = pool.compile([(n, 0.2, "ok") for n in range(6)], _here)
        assert [r["value"] for r in results] == [n * 10 for n in range(6)]
        assert {r["pid"] for r in results} == {os.getpid()}
        assert pool.mismatched == 2
        pool.finish()
    finally:
        pool.close()


def test_workers_get_the_pieces_and_never_run_the_model_file(tmp_path):
    """serving_llama (a custom op in its compiled pieces, from --import) through two workers
    alone equals its -j 1 transpile, and only this process ran MODEL.py."""
    from conftest import ROOT

    from transpiler.options import Options, parse_ranges, parse_sizes
    from transpiler.pipeline import transpile
    from transpiler.treediff import diff_trees
    from transpiler.write import materialize_to

    folder = tmp_path / "serving"
    shutil.copytree(ROOT / "examples" / "serving_llama", folder)
    marker = tmp_path / "ran-model-file"
    model = folder / "model.py"
    model.write_text(model.read_text() + f"\nopen({str(marker)!r}, 'a').write(f'{{__import__(\"os\").getpid()}}\\n')\n")

    def options(jobs):
        return Options(
            model_path=model,
            name="serving",
            imports=("serving_ops",),
            ranges=parse_ranges("1-16,17-128"),
            sizes=parse_sizes("1"),
            weights="none",
            jobs=jobs,
        )

    rendered_here, _ = transpile(options(1))
    materialize_to(rendered_here, tmp_path / "j1" / "serving")
    pool = WorkerPool(options(3), 2)
    pool.caller_compiles = False
    rendered, _ = transpile(options(3), pool=pool)
    materialize_to(rendered, tmp_path / "j3" / "serving")
    assert pool.mismatched == 0
    assert diff_trees(tmp_path / "j1" / "serving", tmp_path / "j3" / "serving") == []
    assert marker.read_text().split() == [str(os.getpid())] * 2  # once per transpile, here
