"""One worker pool for independent fits: joblib's, whose loky workers never outlive us."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from ._logging import tqdm

PARENT_POLL_S = 0.5
"""How often a worker checks that the process that started it is still alive."""

_watching: list[int] = []  # the parent this worker process already watches


def watch_parent(parent_pid: int) -> None:
    """In a worker started by ``parent_pid``: exit as soon as that process is gone.

    Without it a killed fit (SIGKILL, out of memory) leaves its workers computing as
    orphans until their task ends. A thread polls the parent (the process, not the thread
    that started the worker, which may end long before). Does nothing in a process that
    ``parent_pid`` did not start (the caller itself, or a worker of another backend).
    """
    if _watching or os.getppid() != parent_pid:
        return
    _watching.append(parent_pid)

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="scresidual-parent-watch", daemon=True).start()


def _call(fn: Callable, args: tuple, parent_pid: int):
    watch_parent(parent_pid)
    return fn(*args)


def worker_map(
    fn: Callable, args: Sequence[tuple], n_jobs: int, *, desc: str | None = None, progress=False
) -> list:
    """``[fn(*a) for a in args]``, in order, in ``n_jobs`` joblib (loky) worker processes.

    With ``n_jobs=1`` (or one task) everything runs here, in turn. ``fn`` and its arguments
    are sent with cloudpickle (a function defined in a notebook travels by value); results
    come back pickled (our own objects, between our own processes: nothing from a file).
    A worker's exception is raised here. ``desc``: a progress bar over the tasks.
    """
    jobs = max(1, min(int(n_jobs), len(args)))
    if jobs == 1:
        return [fn(*a) for a in args]
    from joblib import Parallel, delayed

    parent = os.getpid()
    results = Parallel(n_jobs=jobs, backend="loky", return_as="generator")(
        delayed(_call)(fn, a, parent) for a in args
    )
    if desc is not None:
        results = tqdm(results, total=len(args), desc=desc, progress=progress)
    return list(results)
