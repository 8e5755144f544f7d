"""One place that builds the SparkSession, so every job runs the same locally, on a cluster or via spark-submit.

Master resolution, first match wins: the ``master`` argument, ``KAR_SPARK_MASTER``, a master already set by
``spark-submit`` (``spark.master`` in the launcher's conf), then ``local[*]``. Extra conf comes from the
``conf`` argument and ``KAR_SPARK_CONF`` (``key=value`` pairs separated by commas).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from kar.contracts.errors import EnvironmentProblem

MIN_JAVA = 17
_LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"
_JAVA_FIX = "install it with `apt-get install -y openjdk-17-jre-headless` or point JAVA_HOME at a JDK 17+"

# Defaults that keep small local jobs fast and files readable by pyarrow/Feast.
_DEFAULT_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.enabled": "false",
    # Stage bars on stderr would interleave with the CLI's own progress display.
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "4g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def java_major_version() -> int | None:
    """The major version of the ``java`` Spark will use, or None when there is none."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except OSError:
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


def check_java() -> None:
    """Raise one clear sentence when Java is missing or older than Spark 4 needs."""
    version = java_major_version()
    if version is None:
        raise EnvironmentProblem(f"Spark needs Java {MIN_JAVA}+ but no `java` was found: {_JAVA_FIX}.")
    if version < MIN_JAVA:
        raise EnvironmentProblem(f"Spark needs Java {MIN_JAVA}+ but found Java {version}: {_JAVA_FIX}.")


def _env_conf() -> dict[str, str]:
    raw = os.environ.get("KAR_SPARK_CONF", "").strip()
    pairs = [p for p in raw.split(",") if p.strip()]
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EnvironmentProblem(f"KAR_SPARK_CONF: expected key=value, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stop_requests_deferred() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C while the JVM starts, and deliver them once it is up.

    Interrupted mid-start, pyspark removes the folder the JVM reports its port in; the JVM then never reaches the
    loop that ends it when its driver ends, and runs on, orphaned (seen: a `kar demo` stopped by SIGTERM while
    Spark started). Up, it exits with the driver. Outside the main thread signals cannot be held: nothing to do.
    """
    held: list[int] = []
    try:
        previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in STOP_SIGNALS}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            os.kill(os.getpid(), held[0])


def _on_loopback(master: str) -> bool:
    """``local[*]`` and friends, or a ``spark://`` master on this machine's loopback."""
    host = master.removeprefix("spark://").split(":", 1)[0]
    return master.startswith("local") or (master.startswith("spark://") and host in ("127.0.0.1", "localhost"))


def get_spark(*, app_name: str = "kar-feast", master: str | None = None, conf: Mapping[str, str] | None = None):
    """Return the active SparkSession or build one.

    Args:
        app_name: Name shown in the Spark UI and logs.
        master: Spark master URL; overrides the environment.
        conf: Extra Spark configuration entries.

    Returns:
        A ``pyspark.sql.SparkSession``.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    # Workers must run the interpreter that has our packages (the venv), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    launcher = SparkConf()
    launcher_master = launcher.get("spark.master", None)
    resolved_master = master or os.environ.get("KAR_SPARK_MASTER") or launcher_master or "local[*]"
    if _on_loopback(resolved_master):
        # A local job (or a cluster on this machine's loopback) needs no network: bind the driver to loopback
        # instead of whatever the hostname resolves to, so the executors can reach it.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app_name).master(resolved_master)
    quiet_logs = {"spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile={_LOG4J_CONFIG}"}
    # On a cluster the executors start their own Python workers: the venv's, named explicitly (a cluster's
    # defaults may say otherwise), unless spark-submit named one; KAR_SPARK_CONF or conf still win.
    python = {} if launcher.contains("spark.pyspark.python") else {"spark.pyspark.python": os.environ["PYSPARK_PYTHON"]}
    for key, value in {**_DEFAULT_CONF, **quiet_logs, **python, **_env_conf(), **(conf or {})}.items():
        builder = builder.config(key, value)
    with _stop_requests_deferred():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("KAR_SPARK_LOG_LEVEL", "ERROR"))
    return spark
