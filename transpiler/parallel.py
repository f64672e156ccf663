"""Compile pieces x variants on a pool of worker processes (-j N).

Each worker prepares the model itself (load MODEL.py, capture, split, group: the same
steps from the same options give the same graphs) and compiles the (piece, variant)
tasks it is sent; it returns plain data (sources, kernel files, launch metadata). The
parent puts the results back in task order, so the package's bytes do not depend on
the number of workers or on which finished first. Workers are spawned, not forked: a
forked child of a process that has used CUDA or OpenMP cannot use them safely.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import logging
import multiprocessing
import warnings

_WORKER: dict = {}


def _start_worker(options) -> None:
    """Pool initializer: prepare the model once per worker, quietly."""
    from .pipeline import prepare
    from .targets import get_target

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _WORKER["prepared"] = prepare(options)
    _WORKER["target"] = get_target(options.device)
    _WORKER["options"] = options


def _compile(task):
    from .pipeline import compile_task

    index, variant = task
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return compile_task(_WORKER["prepared"], _WORKER["target"], _WORKER["options"], index, variant)


def compile_in_pool(options, tasks: list, jobs: int, step=None) -> list:
    """The compiled variant of each task, in the order of `tasks`."""
    context = multiprocessing.get_context("spawn")
    results: list = [None] * len(tasks)
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_start_worker, initargs=(options,)
    ) as pool:
        futures = {pool.submit(_compile, task): position for position, task in enumerate(tasks)}
        try:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                if step:
                    step()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
