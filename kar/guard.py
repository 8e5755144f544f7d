"""A child service's watchdog: the service dies with the process that started it, however that process ends.

``kar.processes.spawn_guarded`` runs ``python -I guard.py --grace S -- COMMAND…`` as the leader of a new
process group, with its stdin a pipe from the parent. The guard starts COMMAND in its group and waits. When the
parent ends (exit, Ctrl-C, SIGTERM or SIGKILL alike) the kernel closes the pipe's write end, the guard reads
EOF and stops the whole group: SIGTERM to every process, SIGKILL after ``grace`` seconds. A pipe, not a pid
watch: it cannot be fooled by pid reuse, and it costs nothing while the parent lives.

``guard.py --grace S --group PGID`` only watches: for a service already running in group PGID (a server
adopted from an earlier run), it stops that group when the parent is gone.

stdlib only, run with ``-I``: it starts in milliseconds and works beside any environment (vLLM's own venv).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

USAGE = "usage: guard.py --grace SECONDS (-- COMMAND [ARGS…] | --group PGID)"


def _watch_parent(gone: threading.Event) -> None:
    """Block on stdin until EOF: the parent never writes, so EOF means the parent is gone (or let go)."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    gone.set()


def group_exists(pgid: int) -> bool:
    """Whether any process (zombies included) is in group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, signum: int) -> None:
    """``killpg``, where a group that is already gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _stop(pgid: int, grace: float, *, done: Callable[[], bool]) -> None:
    """SIGTERM group ``pgid``, SIGKILL it after ``grace`` seconds unless ``done()`` says it is over sooner."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Grandchildren (vLLM's engine core, workers) may outlive the child: the group kill takes them too.
    signal_group(pgid, signal.SIGKILL)


def _run(command: list[str], grace: float) -> int:
    stop = threading.Event()
    # The parent stops a service with killpg(SIGTERM): the guard then gives its child the grace period.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    threading.Thread(target=_watch_parent, args=(stop,), daemon=True).start()
    while child.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if child.poll() is not None:
        return child.returncode
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group signal below reaches the guard too
    _stop(os.getpgrp(), grace, done=lambda: child.poll() is not None)
    return 0  # not reached: the group kill includes the guard


def _watch_group(pgid: int, grace: float) -> int:
    gone = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: gone.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(gone,), daemon=True).start()
    while not gone.wait(1.0):
        if not group_exists(pgid):
            return 0
    _stop(pgid, grace, done=lambda: not group_exists(pgid))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "--grace" and argv[2] == "--group":
        return _watch_group(int(argv[3]), float(argv[1]))
    if len(argv) < 4 or argv[0] != "--grace" or argv[2] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    return _run(argv[3:], float(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
