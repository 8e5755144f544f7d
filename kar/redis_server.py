"""A private ``redis-server`` on a loopback port, for tests, benchmarks and trying the Redis online store.

Production points Feast at its own Redis (``kar feast materialize --redis HOST:PORT``); this module only starts
a throwaway one: no persistence, bound to 127.0.0.1, in a guarded process group (``kar.processes``).

Typical use::

    from kar.redis_server import RedisServer

    with RedisServer() as redis:
        store.materialize(data_dir=..., online_store=redis.feast_config())

:class:`RedisClusterServers` starts a throwaway Redis Cluster the same way (three masters on loopback), to try
Feast's ``redis_type: redis_cluster`` and the serving reads against it.
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
        cluster: Start it as a Redis Cluster node (``cluster-enabled``); :class:`RedisClusterServers` joins them.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        executable: str | None = None,
        start_timeout: float = 20.0,
        cluster: bool = False,
    ) -> None:
        self.cluster = cluster
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
        if self.cluster:
            # An explicit bus port: the default (port + 10000) overflows for the OS's ports above 55535.
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-port", str(self._bus_port()),
            ]  # fmt: skip
        self._process = spawn_guarded(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, grace_s=2.0)
        self.pid = self._process.pid
        self._wait_ready(folder / "redis.log")
        return self

    def _bus_port(self) -> int:
        """A free port for the cluster bus other than the client port (not yet bound, so the OS may repeat it)."""
        while (port := free_port(self.host)) == self.port:
            pass
        return port

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


class RedisClusterServers:
    """A Redis Cluster of ``masters`` private nodes on loopback (no replicas), slots spread by ``redis-cli``.

    Args:
        masters: Number of master nodes (Redis Cluster needs at least 3).
        start_timeout: Seconds to wait for each node's PING and then for ``cluster_state:ok``.
    """

    def __init__(self, *, masters: int = 3, start_timeout: float = 30.0) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        self._masters = masters
        self._start_timeout = start_timeout
        self.nodes: list[RedisServer] = []

    @property
    def connection_string(self) -> str:
        """Every node, comma-separated: the form Feast's ``redis_cluster`` connection string takes."""
        return ",".join(node.connection_string for node in self.nodes)

    def feast_config(self) -> dict[str, str]:
        """The ``online_store`` section pointing Feast at this cluster."""
        return {"type": "redis", "redis_type": "redis_cluster", "connection_string": self.connection_string}

    def start(self) -> RedisClusterServers:
        cli = shutil.which("redis-cli")
        if not cli:
            raise EnvironmentProblem(f"redis-cli not found: {INSTALL_HINT}")
        try:
            for _ in range(self._masters):
                self.nodes.append(RedisServer(cluster=True, start_timeout=self._start_timeout).start())
            addresses = [node.connection_string for node in self.nodes]
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=self._start_timeout,
            )
            if created.returncode != 0:
                raise EnvironmentProblem(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self) -> None:
        """Wait until every node reports ``cluster_state:ok`` (slots assigned and gossiped)."""
        import redis

        deadline = time.monotonic() + self._start_timeout
        clients = [redis.Redis(host=node.host, port=node.port) for node in self.nodes]
        while time.monotonic() < deadline:
            if all(client.cluster("INFO")["cluster_state"] == "ok" for client in clients):
                return
            time.sleep(0.1)
        raise EnvironmentProblem(f"Redis Cluster {self.connection_string} did not reach cluster_state:ok")

    def stop(self) -> None:
        """Stop every node; safe to call twice."""
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
