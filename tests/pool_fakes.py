"""Stand-ins for a compile worker's set-up (transpiler.parallel.prepare_to_compile), for
tests of the pool itself: spawned workers import this module, and it imports no torch."""

from __future__ import annotations

import os
import time


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle this error")


def _compile(task, shared=None):
    """A task is (value, delay, what): return value * 10 after `delay` seconds, or misbehave."""
    value, delay, what = task
    time.sleep(delay)
    if what == "fail" and os.environ.get("POOL_FAKE_WORKER"):
        raise ValueError(f"task {value} failed in a worker")
    if what == "unpicklable" and os.environ.get("POOL_FAKE_WORKER"):
        raise Unpicklable("an error that cannot cross processes")
    if what == "die" and os.environ.get("POOL_FAKE_WORKER"):
        os._exit(3)
    return {"value": value * 10, "pid": os.getpid()}


def setup(options):
    os.environ["POOL_FAKE_WORKER"] = "1"
    return _compile, options["digest"]


def setup_fails(options):
    raise RuntimeError("the model file vanished")
