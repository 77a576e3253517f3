"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal this process gets when its parent dies."""


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: on Linux, the kernel SIGKILLs this process when its parent dies.

    Without it a killed ``fit`` (SIGKILL, out-of-memory) leaves its forked fold workers
    running as orphans. Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no usable libc: keep the old behaviour
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _send_result(fn: Callable[[int], object], i: int, conn, parent_pid: int) -> None:
    """Body of a forked worker: ``fn(i)``, or the error it raised, sent through ``conn``."""
    die_with_parent(parent_pid)
    try:
        out = (True, fn(i))
    except BaseException as err:  # noqa: BLE001 (re-raised in the parent)
        out = (False, err)
    # Plain pickle, not multiprocessing's: torch registers reducers there that share tensors
    # through file descriptors, which die with this process. (Our own data, between our own
    # processes: nothing from a file is unpickled.)
    try:
        payload = pickle.dumps(out)
    except Exception as err:  # an exception that does not pickle: send its text
        payload = pickle.dumps((False, RuntimeError(f"{type(out[1]).__name__}: {out[1]} ({err})")))
    conn.send_bytes(payload)
    conn.close()


def fork_map(fn: Callable[[int], object], n: int, jobs: int) -> Iterator:
    """``fn(i)`` for ``i`` in ``range(n)`` in forked workers, at most ``jobs`` at once; in order.

    Forked children inherit ``fn`` and everything it refers to, so nothing is pickled on the
    way in and no module-level state is needed; results come back pickled through a pipe.
    A worker's exception is raised here (the other workers are stopped first). Linux only.
    """
    ctx = multiprocessing.get_context("fork")
    todo, running, done, parent = list(range(n)), {}, {}, os.getpid()
    try:
        for next_out in range(n):
            while next_out not in done:
                while todo and len(running) < jobs:
                    i = todo.pop(0)
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_send_result, args=(fn, i, send, parent))
                    proc.start()
                    send.close()
                    running[recv] = (i, proc)
                for recv in multiprocessing.connection.wait(list(running)):
                    i, proc = running.pop(recv)
                    try:
                        ok, value = pickle.loads(recv.recv_bytes())
                    except EOFError:  # killed before it could answer (e.g. out of memory)
                        proc.join()
                        ok, value = (
                            False,
                            RuntimeError(
                                f"a worker process died (exit code {proc.exitcode}); use n_jobs=1 "
                                "or free memory."
                            ),
                        )
                    proc.join()
                    if not ok:
                        raise value
                    done[i] = value
            yield done.pop(next_out)
    finally:
        for _, proc in running.values():
            proc.kill()
            proc.join()
