"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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
