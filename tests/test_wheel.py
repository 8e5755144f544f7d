"""kar-feast installed as a package: the built wheel, not the source checkout, gives a working `kar`.

The wheel is built from a copy of the tracked files and installed without its dependencies into a fresh
virtualenv; the dependencies come from this environment's site-packages through a ``.pth`` line (a directory
on the path, whose own ``.pth`` files, the editable install among them, are not processed). So the new venv
sees torch, Spark and Feast, but kar-feast only as the wheel installed it.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel of this checkout (its files git tracks or would) installed; returns its bin."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    tracked = _run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split()
    for name in tracked:
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", source,
         cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("kar_feast-*.whl")
    env = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(env / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel, cwd=root)
    return env / "bin"


@pytest.mark.slow
def test_the_installed_kar_comes_from_the_wheel_and_answers_help(installed, tmp_path):
    where = _run(installed / "python", "-c", "import kar, ctr; print(kar.__file__, ctr.__file__)", cwd=tmp_path)
    assert all("site-packages" in path and str(REPO) not in path for path in where.stdout.split())
    help_text = _run(installed / "kar", "--help", cwd=tmp_path).stdout
    assert "prepare" in help_text and "feast" in help_text
    scenarios = _run(installed / "python", "-c", "from spark_jobs.knowledge.config import bundled_scenarios as b; "
                     "from ctr.config import bundled_experiments as e; print(b(), len(e()))", cwd=tmp_path)  # fmt: skip
    assert "generic" in scenarios.stdout and "movies" in scenarios.stdout


@pytest.mark.slow
@pytest.mark.spark
def test_the_installed_kar_prepares_and_applies_outside_the_checkout(installed, tmp_path):
    """`kar prepare --dataset synthetic` and the example repo's `kar feast apply` from a folder with no checkout."""
    _run(installed / "kar", "prepare", "--dataset", "synthetic", "--out", "prepared", cwd=tmp_path, timeout=900)
    assert (tmp_path / "prepared" / "summary.json").is_file()
    applied = _run(installed / "kar", "feast", "apply", "--data", "prepared", cwd=tmp_path, timeout=600).stdout
    assert "ranking_serving" in applied and (tmp_path / "prepared" / "feast" / "repo" / "example.py").is_file()
