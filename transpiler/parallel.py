"""Compile pieces x variants on worker processes as well as this one (-j N).

`-j N` starts N - 1 workers before this process imports torch, so that their start-up
(import torch and Inductor) runs while this process captures the model. The model is
captured once, here: the unique pieces, packed (piece_transfer.py: each graph with its
inputs' shapes as expressions over the captured symbols, and those symbols' ranges), are
sent to every worker (`share`); a worker never loads MODEL.py and never holds weights.
Then every process takes the next task, (piece, variant), as soon as it is free, this
one included; a worker returns plain data (sources, kernel file paths, launch metadata).
Results are put back in task order and deduplicated by the caller, and every process
compiles the same rebuilt pieces, so the package's bytes do not depend on the number of
workers or on which finished first. A worker that cannot rebuild the pieces (an op that
MODEL.py itself registers) hands its tasks back and stops; the others do its share.

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
    """A worker's set-up, while this process captures: import torch and Inductor. It never
    loads MODEL.py: the pieces come from this process (`WorkerPool.share`, a
    piece_transfer.CompilePlan). Returns the function that compiles one task of a plan."""
    import torch._inductor.compile_fx  # noqa: F401  (what the first compile would import)

    from .compiling import compile_planned
    from .prepare import distributed_context
    from .targets import get_target

    # --tensor-parallel: the fake process group the parent compiles under, held for the
    # worker's life (it exits with the process).
    _held.append(distributed_context(options))
    _held[-1].__enter__()
    target = get_target(options.device)

    def compile_one(task, plan):
        return compile_planned(plan, target, options, *task)

    return compile_one, None


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
    shared, unusable = None, None
    while True:
        message = inbox.get()
        if message is None:
            gc.freeze()  # exit without collecting torch's graphs and caches (about a second)
            return
        if message[0] == "share":  # what every task needs (the pieces), sent once
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    shared = pickle.loads(message[1])
                    getattr(shared, "prepare_process", lambda: None)()
            except SystemExit:
                raise
            except BaseException as error:  # noqa: BLE001 (this process compiles nothing; the parent does its share)
                unusable = _portable(error)
                results.put(("unusable", number, None, unusable))
            continue
        round_id, position, task = message
        if unusable is not None:
            results.put(("unusable", number, (round_id, position), unusable))
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                compiled = compile_one(task, shared)
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
        self.digest: str | None = None  # what a worker's set-up must report, where set (tests)
        self.mismatched = 0  # workers stopped: a set-up that differed, or pieces they could not rebuild
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

    def share(self, shared) -> None:
        """Send every worker what all tasks need (pickled once), before the first `compile`."""
        payload = pickle.dumps(shared, protocol=pickle.HIGHEST_PROTOCOL)
        for worker in self._workers:
            worker.inbox.put(("share", payload))

    def compile(self, tasks: list, compile_here, step=None) -> list:
        """compile_here(task) or a worker's result for each task, in the order of `tasks`."""
        self._round += 1
        round_id = self._round
        results: list = [None] * len(tasks)
        done = [False] * len(tasks)
        lock = threading.Lock()
        state = {"next": 0, "failure": None, "stopped": False, "again": []}
        finished = threading.Event()

        def claim():
            with lock:
                if state["stopped"]:
                    return None
                if state["again"]:  # handed back by a worker that could not compile it
                    return state["again"].pop(0)
                if state["next"] >= len(tasks):
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
                            fail(
                                TranspileError(
                                    f"a compile worker exited with code {worker.process.exitcode} while compiling; "
                                    "run again with -j 1 to see the error"
                                )
                            )
                    continue
                if kind == "wake":  # from this process: look at `finished` again
                    continue
                worker = self._workers[number]
                if kind == "failed":
                    fail(TranspileError(f"a compile worker could not prepare the model: {payload}; run with -j 1"))
                    continue
                if kind == "unusable":
                    # It could not rebuild the pieces: it stops, the others (this process
                    # included) take its share, the task it held first.
                    if worker.ready or worker.busy:
                        worker.inbox.put(None)
                        self.mismatched += 1
                    worker.ready = False
                    if where is not None and where[0] == round_id:
                        with lock:
                            state["again"].append(where[1])
                    worker.busy = False
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
            while self.caller_compiles and not finished.is_set():
                position = claim()
                if position is None:  # a worker may yet hand a task back
                    finished.wait(_POLL)
                    continue
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
