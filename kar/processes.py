"""Child services (the vLLM server, ``kar serve``, a private ``redis-server``) that never outlive their parent.

Three rules, the same for every service a command starts:

1. **Own process group, guarded.** ``spawn_guarded`` starts the service under ``kar.guard`` as the leader of a
   new process group, holding a pipe from the parent. However the parent ends (SIGKILL included) the guard
   sees the pipe close and stops the group within its grace period.
2. **SIGTERM is Ctrl-C.** ``sigterm_raises`` (installed by the CLI for every command) turns SIGTERM into
   :class:`Terminated`, a ``KeyboardInterrupt``: ``with`` blocks unwind and stop their services in order,
   exactly as on Ctrl-C. Schedulers (cron wrappers, ``timeout``, Airflow, Kubernetes) send SIGTERM.
3. **Stopped as a group.** ``stop_group`` sends SIGTERM to the group, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, TypeVar

from kar.contracts.errors import EnvironmentProblem
from kar.guard import group_exists, signal_group

GUARD = Path(__file__).with_name("guard.py")


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C so every ``with`` block stops what it started."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise Terminated


def stopped_by_sigterm(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`Terminated` or was raised while unwinding from it.

    A SIGTERM to a job's process group stops its Spark JVM too, so the cleanup that ``Terminated`` runs can fail
    on the dead JVM (a Py4J error) and replace it; the stop, not that error, is what ended the command.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Terminated):
            return True
        seen.add(id(current))
        current = current.__context__
    return False


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (a no-op elsewhere)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Service(Protocol):
    """A service run by :func:`serve_until_stopped`: entering it starts it, leaving it stops it."""

    @property
    def running(self) -> bool:
        """Whether the service is still up."""
        ...

    def __enter__(self) -> object: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> object: ...


S = TypeVar("S", bound=Service)


def serve_until_stopped(service: S, *, died: Callable[[S], str], on_ready: Callable[[S], None] | None = None) -> None:
    """Start ``service`` and block until Ctrl-C, SIGTERM or the service dying; always stop it.

    The loop behind ``kar llm serve`` and ``kar spark-cluster``: SIGTERM is handled like Ctrl-C (atexit alone
    does not run on SIGTERM), and either returns quietly once the service is stopped.

    Args:
        service: An unstarted service.
        died: Builds the error message once the service has exited on its own (e.g. with its log tail).
        on_ready: Called once the service is started, e.g. to print where it answers.

    Raises:
        EnvironmentProblem: The service failed to start, or exited on its own (the message is ``died(service)``).
    """
    try:
        with sigterm_raises(), service:
            if on_ready:
                on_ready(service)
            while service.running:
                time.sleep(1)
            raise EnvironmentProblem(died(service))
    except KeyboardInterrupt:
        return


def spawn_guarded(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    grace_s: float = 5.0,
) -> subprocess.Popen[bytes]:
    """Start ``command`` under the guard, in a new process group whose id is the returned process's pid.

    Args:
        command: The service's command line.
        env: Its environment (the guard runs in it too, isolated from ``PYTHON*`` variables by ``-I``).
        stdout: Where its output goes (a log file: nobody reads a pipe while a service runs).
        stderr: Likewise; ``subprocess.STDOUT`` to merge.
        cwd: Working directory.
        grace_s: Seconds between SIGTERM and SIGKILL when the parent is gone.

    Returns:
        The guard's ``Popen``; keep it referenced (its stdin is the parent's half of the pipe).
    """
    return subprocess.Popen(
        [sys.executable, "-I", str(GUARD), "--grace", f"{grace_s:g}", "--", *command],
        stdin=subprocess.PIPE,  # never written: its closing (parent gone) is the guard's signal
        stdout=stdout,
        stderr=stderr,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def watch_group(pgid: int, *, grace_s: float = 5.0) -> subprocess.Popen[bytes]:
    """Guard a group that is already running (a server adopted from an earlier run): it is stopped when this
    process ends, as if ``spawn_guarded`` had started it. Keep the returned process referenced."""
    return subprocess.Popen(
        [sys.executable, "-I", str(GUARD), "--grace", f"{grace_s:g}", "--group", str(pgid)],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[bytes], *, grace_s: float = 20.0) -> None:
    """Stop ``process``'s whole group (``process`` leads it): SIGTERM, then SIGKILL after ``grace_s``."""
    stop_pgid(process.pid, grace_s=grace_s, leader=process)
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


def stop_pgid(pgid: int, *, grace_s: float = 20.0, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM every process of group ``pgid``, SIGKILL after ``grace_s``; returns once none is left (or 10 s
    after the SIGKILL). ``leader``, when it is our child, is reaped so it leaves no zombie."""
    signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and ((leader is not None and leader.poll() is None) or group_alive(pgid)):
        time.sleep(0.1)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
    if leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            leader.wait(timeout=10)
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = _proc_state(Path("/proc") / str(pid) / "stat")
    return state is None or state[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Return whether any non-zombie process is left in process group ``pgid``."""
    if not group_exists(pgid):
        return False
    # killpg(…, 0) also succeeds for zombies nobody has reaped yet (e.g. no init reaper in a container).
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    states = (_proc_state(stat) for stat in proc.glob("[0-9]*/stat"))
    return any(state is not None and state[1] == pgid and state[0] != "Z" for state in states)


def _proc_state(stat: Path) -> tuple[str, int] | None:
    """``(state letter, process group id)`` from ``/proc/<pid>/stat``, None when unreadable."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock on ``path`` (created if missing): two processes never build the same env
    or model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = 25) -> str:
    """Return the last ``lines`` lines of a log file (empty if missing): the part that says what went wrong."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_logged(cmd: Sequence[str], *, log: Path, what: str, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd`` appending stdout+stderr to ``log``; raise ``EnvironmentProblem`` naming the log on failure."""
    with log.open("a") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        code = subprocess.call(list(cmd), stdout=handle, stderr=subprocess.STDOUT, env=dict(env) if env else None)
    if code != 0:
        raise EnvironmentProblem(f"{what} failed (exit {code}); see the full log in {log}")
