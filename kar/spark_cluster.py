"""A private Spark standalone cluster on loopback (a master and N workers), for tests and trying the jobs on a
cluster: executors in their own JVMs with their own Python workers, as on a team's cluster.

It runs the scripts pyspark ships (``$SPARK_HOME/bin/spark-class`` with ``org.apache.spark.deploy.master.Master``
and ``...worker.Worker``), each daemon in a guarded process group (``kar.processes``) stopped by its pid.

Typical use::

    from kar.spark_cluster import SparkStandaloneCluster

    with SparkStandaloneCluster() as cluster:
        run_prepare(dataset="synthetic", out="/data/prepared", master=cluster.master_url)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from kar.contracts.errors import EnvironmentProblem
from kar.processes import free_port, log_tail, serve_until_stopped, spawn_guarded, stop_group

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# The daemons only schedule; the executors they start get their own heap (spark.executor.memory).
DAEMON_MEMORY = "512m"


def spark_home() -> Path:
    """pyspark's package folder, which holds ``bin/spark-class`` and the jars."""
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


class SparkStandaloneCluster:
    """A standalone master and ``workers`` workers on ``127.0.0.1``; a context manager.

    Args:
        workers: Number of workers.
        cores: Cores each worker offers (one executor per worker with these cores).
        memory: Memory each worker offers to executors (Spark's size syntax, e.g. ``2g``).
        start_timeout: Seconds to wait for the master's web UI and then for every worker to register.
        log_dir: Where the daemons' logs and the workers' work folders go (a temporary folder when None,
            removed on stop).
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        cores: int = 1,
        memory: str = "2g",
        start_timeout: float = 90.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a cluster needs at least 1 worker, got {workers}")
        self.host = "127.0.0.1"
        self.workers, self.cores, self.memory = workers, cores, memory
        self.port = free_port(self.host)
        self.web_ui_port = free_port(self.host)
        self._start_timeout = start_timeout
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def master_url(self) -> str:
        """What ``--master`` / ``KAR_SPARK_MASTER`` / ``spark-submit --master`` take."""
        return f"spark://{self.host}:{self.port}"

    @property
    def web_ui_url(self) -> str:
        return f"http://{self.host}:{self.web_ui_port}"

    @property
    def pids(self) -> list[int]:
        """Pids of the daemons' guards (each leads the process group of its JVM)."""
        return [process.pid for process in self._processes]

    def start(self) -> SparkStandaloneCluster:
        folder = self._folder()
        try:
            self._spawn([MASTER_CLASS, "--host", self.host, "--port", str(self.port),
                         "--webui-port", str(self.web_ui_port)], log=folder / "master.log")  # fmt: skip
            self._wait(lambda: self.alive_workers() is not None, what="the master's web UI", log=folder / "master.log")
            for n in range(self.workers):
                work = folder / f"worker-{n}"
                work.mkdir(parents=True, exist_ok=True)
                command = [WORKER_CLASS, self.master_url, "--host", self.host, "--cores", str(self.cores),
                           "--memory", self.memory, "--work-dir", str(work),
                           "--webui-port", str(free_port(self.host))]  # fmt: skip
                self._spawn(command, log=folder / f"worker-{n}.log")
            self._wait(lambda: self.alive_workers() == self.workers, what="every worker", log=folder / "worker-0.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _folder(self) -> Path:
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            return self._log_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="kar-spark-cluster-")
        return Path(self._tmp.name)

    def _spawn(self, arguments: list[str], *, log: Path) -> None:
        home = spark_home()
        env = {
            **os.environ,
            "SPARK_HOME": str(home),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            # Executors start from the worker: their Python workers must be ours (the venv), not `python3`.
            "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
        }
        with log.open("ab") as out:
            process = spawn_guarded(
                [str(home / "bin" / "spark-class"), *arguments], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self._processes.append(process)

    @property
    def running(self) -> bool:
        """Every daemon started is still up."""
        return bool(self._processes) and all(process.poll() is None for process in self._processes)

    @property
    def log_dir(self) -> Path | None:
        """Where the daemons' logs are (None before start)."""
        return self._log_dir if self._log_dir is not None else (Path(self._tmp.name) if self._tmp else None)

    def alive_workers(self) -> int | None:
        """Workers the master lists as ALIVE, from its web UI's JSON; None while the master does not answer."""
        try:
            with urllib.request.urlopen(f"{self.web_ui_url}/json/", timeout=2) as response:
                state = json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")

    def _wait(self, ready: Callable[[], bool], *, what: str, log: Path) -> None:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if any(process.poll() is not None for process in self._processes):
                break
            time.sleep(0.25)
        raise EnvironmentProblem(f"Spark standalone cluster: {what} not up on {self.master_url}: {log_tail(log)}")

    def stop(self) -> None:
        """Stop the workers, then the master, by their process groups; safe to call twice."""
        for process in reversed(self._processes):
            stop_group(process, grace_s=10)
        self._processes = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SparkStandaloneCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(cluster: SparkStandaloneCluster, *, on_ready: Callable[[SparkStandaloneCluster], None]) -> None:
    """Start ``cluster`` and block until Ctrl-C, SIGTERM or a daemon dying; always stop it (``kar spark-cluster``).

    Raises:
        EnvironmentProblem: The cluster failed to start, or a daemon exited on its own.
    """
    serve_until_stopped(
        cluster,
        on_ready=on_ready,
        died=lambda c: f"Spark standalone cluster: a daemon exited on its own; logs in {c.log_dir}",
    )
