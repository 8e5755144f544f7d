"""A private ``redis-server`` on a loopback port, for tests, benchmarks and trying the Redis online store.

Production points Feast at its own Redis (``kar feast materialize --redis HOST:PORT``); this module only starts
a throwaway one: no persistence, bound to 127.0.0.1, in a guarded process group (``kar.processes``).

Typical use::

    from kar.redis_server import RedisServer

    with RedisServer() as redis:
        store.materialize(data_dir=..., online_store=redis.feast_config())
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from kar.contracts.errors import EnvironmentProblem
from kar.processes import free_port, spawn_guarded, stop_group

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
        self._process: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # of the server's guard, which leads its process group

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
        # In the foreground under the guard (not --daemonize): it dies with this process, however that ends.
        # --save "" and no AOF: a cache for tests and benchmarks, nothing worth writing to disk.
        command = [
            self._executable,
            "--bind", self.host,
            "--port", str(self.port),
            "--daemonize", "no",
            "--dir", str(folder),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        self._process = spawn_guarded(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, grace_s=2.0)
        self.pid = self._process.pid
        self._wait_ready(folder / "redis.log")
        return self

    def _wait_ready(self, log: Path) -> None:
        import redis

        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        tail = log.read_text()[-500:] if log.is_file() else ""
        self.stop()
        raise EnvironmentProblem(f"redis-server on {self.connection_string} did not answer PING: {tail}")

    def stop(self) -> None:
        """Stop the server's process group and remove its folder; safe to call twice."""
        if self._process is not None:
            stop_group(self._process, grace_s=10)
            self._process = None
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
