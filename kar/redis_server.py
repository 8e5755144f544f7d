"""A private ``redis-server`` on a loopback port, for tests, benchmarks and trying the Redis online store.

Production points Feast at its own Redis (``kar feast materialize --redis HOST:PORT``); this module only starts
a throwaway one: no persistence, bound to 127.0.0.1, stopped by the pid it wrote.

Typical use::

    from kar.redis_server import RedisServer

    with RedisServer() as redis:
        store.materialize(data_dir=..., online_store=redis.feast_config())
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from kar.errors import EnvironmentProblem
from kar.llm_server import free_port

INSTALL_HINT = "install it with `apt-get install -y redis-server` (`make redis` does it)"


class RedisServer:
    """``redis-server`` started on ``127.0.0.1:<free port>`` in a temporary folder; a context manager.

    Args:
        port: Port to bind; a free one when None.
        executable: The server binary; ``redis-server`` on PATH when None.
        start_timeout: Seconds to wait for the first PING.
    """

    def __init__(self, *, port: int | None = None, executable: str | None = None, start_timeout: float = 20.0) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self._executable = executable or shutil.which("redis-server")
        self._start_timeout = start_timeout
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.pid: int | None = None

    @property
    def connection_string(self) -> str:
        return f"{self.host}:{self.port}"

    def feast_config(self) -> dict[str, str]:
        """The ``online_store`` section pointing Feast at this server."""
        return {"type": "redis", "connection_string": self.connection_string}

    def start(self) -> RedisServer:
        if not self._executable:
            raise EnvironmentProblem(f"redis-server not found: {INSTALL_HINT}")
        self._dir = tempfile.TemporaryDirectory(prefix="kar-redis-")
        folder = Path(self._dir.name)
        pidfile = folder / "redis.pid"
        # --save "" and no AOF: a cache for tests and benchmarks, nothing worth writing to disk.
        command = [
            self._executable,
            "--bind", self.host,
            "--port", str(self.port),
            "--daemonize", "yes",
            "--pidfile", str(pidfile),
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise EnvironmentProblem(f"redis-server failed to start: {(result.stderr or result.stdout).strip()}")
        self._wait_ready(pidfile, folder / "redis.log")
        return self

    def _wait_ready(self, pidfile: Path, log: Path) -> None:
        import redis

        deadline = time.monotonic() + self._start_timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.pid is None and pidfile.is_file() and pidfile.read_text().strip():
                self.pid = int(pidfile.read_text())
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        tail = log.read_text()[-500:] if log.is_file() else ""
        self.stop()
        raise EnvironmentProblem(f"redis-server on {self.connection_string} did not answer PING: {tail}")

    def stop(self) -> None:
        """Kill the server by its pid and remove its folder; safe to call twice."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                _wait_gone(self.pid)
            except ProcessLookupError:
                pass
            self.pid = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
