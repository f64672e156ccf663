"""Compile pieces x variants on worker processes as well as this one (-j N).

`-j N` starts N - 1 workers before this process prepares the model, so that their
start-up (import torch, load MODEL.py, capture, split: the same steps from the same
options give the same graphs) runs while this process does the same. Then every process
takes the next task, (piece, variant), as soon as it is free, this one included; a
worker returns plain data (sources, kernel file paths, launch metadata). Results are put
back in task order and deduplicated by the caller, so the package's bytes do not depend
on the number of workers or on which finished first. A worker compiles only if it
captured the very graphs this process did (a digest); one that did not is stopped.

Workers are spawned, not forked: a forked child of a process that has used CUDA or
OpenMP cannot use them safely.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import multiprocessing
import pickle
import queue
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass

from .errors import TranspileError

# How often (s) the parent looks for a worker that died without a word.
_POLL = 0.5


def _portable(error: BaseException) -> BaseException:
    """The error itself if it crosses a process boundary, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        last = "".join(traceback.format_exception_only(type(error), error)).strip()
        return RuntimeError(f"in a compile worker: {last}")


# Contexts a worker enters at set-up and never leaves (its fake process group).
_held: list = []


def prepare_to_compile(options):
    """A worker's set-up: prepare the model as the parent did; return the function that
    compiles one task and the digest of what was captured."""
    import torch

    from .compiling import compile_task, compile_threads_per_process, split_digest
    from .prepare import distributed_context, prepare
    from .targets import get_target

    # --tensor-parallel: the fake process group the parent prepares and compiles under,
    # held for the worker's life (it exits with the process).
    _held.append(distributed_context(options))
    _held[-1].__enter__()
    target = get_target(options.device)
    # Every worker captures at once, alongside this process: each takes its share of the
    # cores for torch's own threads while it does. Compiling gets all of them back: the
    # C++ Inductor writes depends on torch's thread count, which must match this process's.
    threads = torch.get_num_threads()
    torch.set_num_threads(compile_threads_per_process(options.jobs) or 1)
    with _weights_left_uninitialized():
        split = prepare(options, target)
    torch.set_num_threads(threads)
    digest = split_digest(split)
    # Compiling needs the pieces' graphs only (split.compile_inputs): free this copy of the
    # weights (the model stays reachable from MODEL.py's namespace, so its tensors are
    # emptied in place) and the exported program.
    inputs = split.compile_inputs
    _empty_tensors(split.model_file.model)
    split.model_file.model = None
    del split
    gc.collect()
    return (lambda task: compile_task(inputs, target, options, *task)), digest


@contextlib.contextmanager
def _weights_left_uninitialized():
    """torch.nn.init's functions do nothing while MODEL.py builds the model in a worker:
    compiling needs the graphs, not the weights' values (which this process writes), and
    initializing a 1B-parameter model in every worker at once costs seconds of the cores
    they share. A graph that did depend on them would not match the parent's digest, and
    the parent would then compile that worker's share itself."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(torch.nn.init, n))]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    try:
        for name in names:
            setattr(torch.nn.init, name, _leave)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def _leave(tensor, *args, **kwargs):
    return tensor


def _empty_tensors(model) -> None:
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype, device=tensor.device)


def _worker_main(number: int, options, inbox, results, setup) -> None:
    """A worker: set up once, then compile the tasks sent to it until told to stop."""
    # Ctrl-C is the parent's to handle: it stops the workers (without a traceback from each),
    # with SIGTERM, on which a worker exits through Python's own exit path (releasing what
    # multiprocessing registered for it) rather than dying on the spot.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            compile_one, digest = setup(options)
    except SystemExit:
        raise
    except BaseException as error:  # noqa: BLE001 (reported to the parent, which decides)
        results.put(("failed", number, None, _portable(error)))
        return
    results.put(("ready", number, None, digest))
    while True:
        message = inbox.get()
        if message is None:
            gc.freeze()  # exit without collecting torch's graphs and caches (about a second)
            return
        round_id, position, task = message
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                compiled = compile_one(task)
            # Pickled here: a result the queue could not send would be lost without a word.
            results.put(("done", number, (round_id, position), pickle.dumps(compiled)))
        except SystemExit:
            raise
        except BaseException as error:  # noqa: BLE001
            results.put(("error", number, (round_id, position), _portable(error)))


@dataclass
class _Worker:
    process: object
    inbox: object
    ready: bool = False
    busy: bool = False  # a task was sent and its result has not come back


class WorkerPool:
    """N spawned compile workers; `compile` shares a list of tasks between them and the caller."""

    def __init__(self, options, count: int, setup=prepare_to_compile):
        context = multiprocessing.get_context("spawn")
        self._results = context.Queue()
        self._workers: list[_Worker] = []
        self._round = 0
        self._finished = False
        self._closed = False
        self.digest: str | None = None  # the parent's, set before the first `compile`
        self.mismatched = 0  # workers whose graphs differed from this process's, stopped
        # Whether the caller compiles tasks too (tests turn it off so that every task
        # goes through a worker).
        self.caller_compiles = True
        for number in range(count):
            inbox = context.Queue()
            process = context.Process(
                target=_worker_main,
                args=(number, options, inbox, self._results, setup),
                name=f"transpile-compile-{number}",
                daemon=True,
            )
            process.start()
            self._workers.append(_Worker(process, inbox))

    def compile(self, tasks: list, compile_here, step=None) -> list:
        """compile_here(task) or a worker's result for each task, in the order of `tasks`."""
        self._round += 1
        round_id = self._round
        results: list = [None] * len(tasks)
        done = [False] * len(tasks)
        lock = threading.Lock()
        state = {"next": 0, "failure": None, "stopped": False}
        finished = threading.Event()

        def claim():
            with lock:
                if state["stopped"] or state["next"] >= len(tasks):
                    return None
                state["next"] += 1
                return state["next"] - 1

        def record(position, value):
            with lock:
                results[position], done[position] = value, True
                if all(done):
                    finished.set()
            if step:
                with lock:
                    step()

        def fail(error):
            """Stop the round; `error` (None for this process's own) is raised at its end."""
            with lock:
                state["stopped"] = True
                if state["failure"] is None:
                    state["failure"] = error
            finished.set()

        def send(worker):
            position = claim()
            if position is not None:
                worker.busy = True
                worker.inbox.put((round_id, position, tasks[position]))

        def serve():
            """Hand tasks to free workers and collect their results (a thread of this process)."""
            for worker in self._workers:
                if worker.ready and not worker.busy:
                    send(worker)
            while not finished.is_set():
                try:
                    kind, number, where, payload = self._results.get(timeout=_POLL)
                except queue.Empty:
                    if not self.caller_compiles and not any(w.process.is_alive() for w in self._workers):
                        fail(TranspileError("every compile worker has exited; run again with -j 1"))
                    for worker in self._workers:
                        if worker.busy and not worker.process.is_alive():
                            fail(TranspileError(
                                f"a compile worker exited with code {worker.process.exitcode} while compiling; "
                                "run again with -j 1 to see the error"
                            ))
                    continue
                if kind == "wake":  # from this process: look at `finished` again
                    continue
                worker = self._workers[number]
                if kind == "failed":
                    fail(TranspileError(f"a compile worker could not prepare the model: {payload}; run with -j 1"))
                    continue
                if kind == "ready":
                    if payload != self.digest:
                        # Its graphs differ from this process's (graphs that depend on the
                        # weights' values, or a capture that is not deterministic): it stops,
                        # and the others, this process included, take its share.
                        worker.inbox.put(None)
                        self.mismatched += 1
                        continue
                    worker.ready = True
                else:
                    worker.busy = False
                    if where[0] != round_id:  # a late result of an abandoned round
                        pass
                    elif kind == "error":
                        fail(payload)
                        continue
                    else:
                        record(where[1], pickle.loads(payload))
                send(worker)

        if not tasks:
            return results
        server = threading.Thread(target=serve, name="transpile-compile-pool", daemon=True)
        server.start()
        try:
            while self.caller_compiles and (position := claim()) is not None:
                record(position, compile_here(tasks[position]))
            finished.wait()
        except BaseException:
            fail(None)  # not the error itself: it would hold this frame, and the pool, in a cycle
            raise
        finally:
            self._results.put(("wake", None, None, None))
            server.join()
        failure = state.pop("failure")
        if failure is not None:
            try:
                raise failure
            finally:
                del failure
        return results

    def finish(self) -> None:
        """Tell the workers to exit once idle (they do while the caller renders)."""
        for worker in self._workers:
            with contextlib.suppress(Exception):
                worker.inbox.put(None)
        self._finished = True

    def close(self) -> None:
        """Wait a little for finished workers to exit; stop the others (after an error) now."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.process.join(timeout=10 if self._finished and worker.ready and not worker.busy else 0)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():  # stuck where SIGTERM cannot reach Python
                worker.process.kill()
                worker.process.join()
        self._results.close()
        for worker in self._workers:
            worker.inbox.close()
