"""``kar bench train``: training throughput of our DeepFM against FuxiCTR's DeepFM on the same data.

Both sides train DeepFM on the same encoded training split (``deepfm_movielens-100k.yaml``: the sparse and
sequence fields, the knowledge vector columns are not read), with the same embedding size, DNN, dropout,
batch size, optimizer (Adam, lr 1e-3, the config's L2: none), seed and number of torch CPU threads:

* ``ours``: ``ctr``'s DeepFM and the epoch loop of ``ctr.trainer`` (``train_epoch``, what ``kar train``
  runs), in this process, on tensors already built by our encoder;
* ``fuxictr``: FuxiCTR 2.3.10's ``BaseModel.train_epoch`` (forward, BCE on sigmoid outputs, backward,
  gradient-norm clipping, Adam step, fed by FuxiCTR's torch ``NpzDataLoader``) in a child process that runs
  in a scratch virtualenv of its own (``~/.cache/kar/bench/fuxictr``, built with pip on first use: FuxiCTR is
  never a dependency of this package). The PyPI wheel ships FuxiCTR's layers and ``BaseModel`` but no DeepFM
  class (only ``model_zoo/LongCTR``), so the child script composes it as reczoo/FuxiCTR's
  ``model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py`` does: ``FeatureEmbedding`` + ``FactorizationMachine`` (which
  holds the ``LogisticRegression`` term) + ``MLP_Block``. The ids it reads are ours (written as FuxiCTR's npz
  + ``feature_map.json``, index 0 = padding/unknown on both sides), so the two models see identical inputs.

One measured epoch is a full pass over the training split in a fresh random order; its clock covers the
training steps including each side's own batch assembly (slicing resident tensors on our side, the
DataLoader's per-row collation on FuxiCTR's), and nothing else: data loading, feature encoding, model
construction and the untimed validation/test passes after every epoch are outside it. Each side keeps
training the same model across rounds (round k is its epoch k), and rounds alternate which side goes first.
Medians over rounds give ``ratio = ours / fuxictr`` (samples/s). Both sides' validation and test AUC after each
epoch are recorded to show the two models learn alike. A last, untimed-for-the-ratio pass iterates each
side's batches without training, to show how much of an epoch is batch assembly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from kar.bench.report import Panel, machine, median, ratio, write_report
from kar.contracts.errors import DataError, KarError
from kar.contracts.paths import Location, local_path, optional_local_path
from kar.contracts.progress import Progress, silent
from kar.contracts.tables import SUMMARY_FILE
from kar.llm.env import STAMP, TORCH_SPEC, resolve_cache_dir, venv_python
from kar.processes import file_lock, log_tail, run_logged

if TYPE_CHECKING:
    from ctr.features import FeatureSpec, InputLayout

GOAL = 2.0
PROFILE_TOP = 12  # operators listed in ours_profile
SIDES = ("ours", "fuxictr")
EXPERIMENT = "deepfm_movielens-100k"
FUXICTR_SPEC = "fuxictr==2.3.10"
# FuxiCTR imports polars at module level and breaks on polars 2; torch is pinned to the CPU build.
FUXICTR_ENV_SPECS = (FUXICTR_SPEC, TORCH_SPEC, "polars<2")
FUXICTR_MODEL_SOURCE = (
    "composed in kar/bench/fuxictr_deepfm.py like reczoo/FuxiCTR model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py "
    "(BaseModel + FeatureEmbedding + FactorizationMachine with its LogisticRegression + MLP_Block from the "
    "fuxictr 2.3.10 wheel, which ships no DeepFM class)"
)
TIMED = (
    "one full training epoch per side and round, in a fresh random order: forward, loss, backward, optimizer "
    "step and loss.item() for every batch, plus each side's own batch assembly (ours: slicing tensors already "
    "in memory; FuxiCTR: its torch NpzDataLoader with default_collate over rows, plus its gradient-norm "
    "clipping); not timed: reading the data, feature encoding, writing FuxiCTR's npz files, model "
    "construction, and the validation/test passes after each epoch"
)
# MovieLens-100K as `kar prepare` reads it, looked up when no --data is given (never copied into the repo).
RAW_CANDIDATES = (Path("../shared/data/ml-100k"), Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k")
FUXICTR_LOG = "fuxictr-worker.log"
# The hyper-parameters both sides share (FuxiCTR: embedding_dim, hidden_units, net_dropout, batch_norm).
DEEPFM_PARAMS = ("embedding_dim", "dnn_hidden", "dropout", "batch_norm")


# The FuxiCTR side: a real module (ruff reads it), copied next to the data and run by the scratch venv.
WORKER_SCRIPT = Path(__file__).with_name("fuxictr_deepfm.py")


def ensure_fuxictr_env(*, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Create (once) the scratch virtualenv holding FuxiCTR and return its python executable.

    The venv is ``cache_dir/bench/fuxictr`` (``pip install fuxictr==2.3.10 torch==2.13.0 'polars<2'``, ~4 min
    and ~2 GB the first time, mostly torch and Ray). A stamp written after an import check marks it complete;
    an interrupted build is wiped and redone.

    Raises:
        EnvironmentProblem: A pip step or the import check failed; the message names the log.
    """
    cache_dir = resolve_cache_dir(cache_dir)
    venv = cache_dir / "bench" / "fuxictr"
    python, stamp = venv_python(venv), venv / STAMP
    if stamp.is_file() and python.exists():
        return python
    log = cache_dir / "logs" / "bench-fuxictr-env.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    (progress or silent)(f"building the FuxiCTR scratch env in {venv} (~4 min, once; log {log})")
    with file_lock(cache_dir / ".bench-fuxictr.lock"):
        if stamp.is_file() and python.exists():  # another process finished it while we waited
            return python
        if venv.exists():
            shutil.rmtree(venv)
        log.write_text(f"building {venv} with {sys.executable}\n")
        run_logged([sys.executable, "-m", "venv", str(venv)], log=log, what="creating the FuxiCTR venv")
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        run_logged([*pip, *FUXICTR_ENV_SPECS], log=log, what=f"installing {', '.join(FUXICTR_ENV_SPECS)}")
        check = "from fuxictr.pytorch.models import BaseModel; from fuxictr.pytorch.dataloaders import RankDataLoader"
        run_logged([str(python), "-c", check], log=log, what="importing fuxictr in the scratch venv")
        stamp.write_text(json.dumps({"built": time.strftime("%Y-%m-%dT%H:%M:%S"), "specs": FUXICTR_ENV_SPECS}) + "\n")
    return python


def find_movielens() -> Path:
    """The raw MovieLens-100K folder the bench prepares when no ``--data`` is given."""
    for path in RAW_CANDIDATES:
        if (path / "u.data").is_file():
            return path
    raise DataError(
        f"no MovieLens-100K at {' or '.join(map(str, RAW_CANDIDATES))}; pass --data with a prepared folder "
        "(`kar prepare --dataset movielens-100k --protocol kar`) or a raw ml-100k folder"
    )


def load_frame(data_dir: Path | None, *, scratch: Path, progress: Progress) -> tuple[pd.DataFrame, str]:
    """The Feast training frame of a prepared folder, or of raw MovieLens-100K prepared (KAR protocol) into
    ``scratch``; returns the frame and a description of where it came from."""
    from kar.serving import store

    source = data_dir if data_dir is not None else find_movielens()
    if (source / "u.data").is_file():
        from kar.pipeline import run_prepare

        run_prepare(dataset="movielens-100k", path=source, out=scratch / "prepared", protocol="kar", progress=progress)
        prepared, origin = scratch / "prepared", f"{source} (raw MovieLens-100K, prepared with the KAR protocol)"
    elif (source / SUMMARY_FILE).is_file():
        prepared, origin = source, str(source)
    else:
        raise DataError(f"{source}: neither a prepared folder (summary.json) nor raw MovieLens-100K (u.data)")
    if not (prepared / "feast" / "registry.db").is_file():
        progress("feast apply")
        store.apply(data_dir=prepared)
    progress("point-in-time training frame from Feast")
    return store.training_frame(data_dir=prepared), origin


@dataclasses.dataclass(frozen=True, kw_only=True)
class Encoded:
    """The splits encoded once by our encoder: what both sides train and score on."""

    arrays: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]
    layout: InputLayout
    spec: FeatureSpec

    @classmethod
    def build(cls, frame: pd.DataFrame, *, spec: FeatureSpec) -> Encoded:
        from ctr.features import Encoder
        from ctr.frame import LABEL, split_frame

        splits = split_frame(frame)
        encoder = Encoder.fit(splits["train"], spec=spec)
        return cls(
            arrays={name: encoder.transform(part) for name, part in splits.items()},
            labels={name: part[LABEL].to_numpy(dtype=np.float32) for name, part in splits.items()},
            layout=encoder.layout,
            spec=spec,
        )

    @property
    def n_train(self) -> int:
        return len(self.labels["train"])


def fuxictr_feature_map(encoded: Encoded, *, dataset_id: str) -> dict[str, Any]:
    """FuxiCTR's ``feature_map.json`` for our encoded fields, as its FeatureProcessor would write it.

    Index 0 is padding on both sides (our unknown/missing/padding id), so FuxiCTR's padding rows stay zero like
    ours; a sequence that shares a sparse field's table gets ``share_embedding`` and that table's size, and
    sequences are mean-pooled over their non-padding entries (``MaskedAveragePooling``, FuxiCTR's default).
    """
    layout = encoded.layout
    features: list[dict[str, Any]] = []
    for name, table in layout.sparse.items():
        features.append(
            {name: {"source": "", "type": "categorical", "padding_idx": 0, "vocab_size": layout.tables[table]}}
        )
    for field in encoded.spec.sequence:
        spec: dict[str, Any] = {
            "source": "",
            "type": "sequence",
            "feature_encoder": "layers.MaskedAveragePooling()",
            "max_len": field.max_len,
            "padding_idx": 0,
            "vocab_size": layout.tables[field.table],
        }
        if field.share:
            spec["share_embedding"] = field.share
        features.append({field.name: spec})
    return {
        "dataset_id": dataset_id,
        "num_fields": len(features),
        "total_features": sum(layout.tables.values()),
        "input_length": len(layout.sparse) + sum(f.max_len for f in encoded.spec.sequence),
        "labels": ["label"],
        "features": features,
    }


def write_fuxictr_data(encoded: Encoded, folder: Path, *, dataset_id: str) -> Path:
    """Our encoded splits as FuxiCTR's npz files (train/valid/test) plus its ``feature_map.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        columns: dict[str, Any] = {**encoded.arrays[split], "label": encoded.labels[split]}
        np.savez(folder / f"{name}.npz", **columns)
    (folder / "feature_map.json").write_text(json.dumps(fuxictr_feature_map(encoded, dataset_id=dataset_id)))
    return folder


class FuxiCTRWorker:
    """The FuxiCTR child process: one JSON command line in, one JSON answer line out."""

    def __init__(self, *, python: Path, script: Path, config: Path, log: Path):
        self.log = log
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [str(python), str(script), str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"},
        )
        self.info = self._answer("starting")

    def _answer(self, what: str) -> dict[str, Any]:
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            self.process.wait()
            tail = log_tail(self.log)
            raise KarError(
                f"bench train: the FuxiCTR worker died while {what} (exit {self.process.returncode}):\n{tail}"
            )
        return json.loads(line)

    def epoch(self) -> float:
        """Train one epoch in the worker; its seconds as the worker timed them."""
        return float(self.ask("epoch")["seconds"])

    def evaluate(self) -> dict[str, dict[str, float]]:
        return self.ask("evaluate")

    def batches(self) -> float:
        """Seconds the worker's DataLoader takes to yield one epoch of batches, without training."""
        return float(self.ask("batches")["seconds"])

    def ask(self, command: str) -> dict[str, Any]:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(json.dumps({"do": command}) + "\n")
        stdin.flush()
        return self._answer(f"running {command!r}")

    def close(self) -> None:
        """Ask the worker to quit; kill it if it has not within 30 s."""
        with contextlib.suppress(OSError, ValueError):  # it may be dead already (broken pipe)
            stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
            stdin.write(json.dumps({"do": "quit"}) + "\n")
            stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


def deepfm_params(config: Any) -> dict[str, Any]:
    """Our DeepFM's hyper-parameters for ``config``: its ``model_params`` over the model's defaults."""
    import inspect

    from ctr.models import MODELS

    signature = inspect.signature(MODELS[config.model]).parameters
    defaults = {name: p.default for name, p in signature.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **config.model_params}


@contextlib.contextmanager
def fuxictr_worker(
    encoded: Encoded, config: Any, *, python: Path, scratch: Path, threads: int, workers: int
) -> Iterator[FuxiCTRWorker]:
    """Write FuxiCTR's data, config and script into ``scratch`` and run the worker for the block.

    Raises:
        KarError: The worker failed to start, or reads other training rows than ours.
    """
    dataset_id = "kar_bench"
    data = write_fuxictr_data(encoded, scratch / dataset_id, dataset_id=dataset_id)
    params = deepfm_params(config)
    settings = {
        "threads": threads,
        "seed": config.seed,
        "data_dir": str(data),
        "dataset_id": dataset_id,
        "batch_size": config.train.batch_size,
        "num_workers": workers,
        "params": {
            "embedding_dim": params["embedding_dim"],
            "hidden_units": list(params["dnn_hidden"]),
            "net_dropout": params["dropout"],
            "batch_norm": params["batch_norm"],
            "learning_rate": config.train.lr,
            "optimizer": "adam",
            "loss": "binary_crossentropy",
            "metrics": ["AUC", "logloss"],
            # FuxiCTR adds λ/2·‖w‖² to the loss, whose gradient λ·w is what Adam's weight_decay adds: the same L2.
            # At 0 (the shipped config) FuxiCTR skips the term altogether.
            "embedding_regularizer": float(config.train.embedding_l2),
            "net_regularizer": float(config.train.weight_decay),
            "gpu": -1,
            "verbose": 0,
        },
    }
    (scratch / "fuxictr-config.json").write_text(json.dumps(settings, indent=2))
    shutil.copyfile(WORKER_SCRIPT, scratch / WORKER_SCRIPT.name)
    worker = FuxiCTRWorker(
        python=python,
        script=scratch / WORKER_SCRIPT.name,
        config=scratch / "fuxictr-config.json",
        log=scratch / FUXICTR_LOG,
    )
    try:
        if worker.info["n_train"] != encoded.n_train:
            raise KarError(f"bench train: FuxiCTR reads {worker.info['n_train']} rows, ours {encoded.n_train}")
        yield worker
    finally:
        worker.close()


class OursSide:
    """Our DeepFM and optimizer, trained epoch by epoch exactly as ``ctr.trainer`` does."""

    def __init__(self, encoded: Encoded, config: Any, *, threads: int):
        import torch

        from ctr.models import build_model
        from ctr.progress import ProgressEvent
        from ctr.trainer import make_optimizer, seed_everything, to_tensors

        seed_everything(config.seed)
        self.config, self.threads = config, threads
        self.data = {
            split: to_tensors(arrays, labels=pd.Series(encoded.labels[split]))
            for split, arrays in encoded.arrays.items()
        }
        self.model = build_model(config.model, layout=encoded.layout, **config.model_params)
        settings = config.train
        self.optimizer = make_optimizer(self.model, settings)
        self.generator = torch.Generator().manual_seed(config.seed)
        steps = -(-encoded.n_train // settings.batch_size)
        self.event = ProgressEvent(model=config.model, epoch=0, epochs=settings.epochs, step=0, steps=steps)
        self.steps = steps

    def epoch(self) -> float:
        """Train one epoch; its seconds."""
        from ctr.trainer import torch_threads, train_epoch

        settings = self.config.train
        with torch_threads(self.threads):
            started = time.perf_counter()
            train_epoch(
                self.model,
                self.optimizer,
                self.data["train"],
                settings=settings,
                generator=self.generator,
                event=self.event,
                progress=None,
            )
            return time.perf_counter() - started

    def evaluate(self) -> dict[str, dict[str, float]]:
        from ctr.trainer import evaluate, torch_threads

        with torch_threads(self.threads):
            return {
                name: evaluate(self.model, self.data[split], batch_size=self.config.train.eval_batch_size)
                for name, split in (("val", "val"), ("test", "test"))
            }

    def batches(self) -> float:
        """Seconds to cut one epoch's shuffled batches without training (our batch assembly)."""
        import torch

        from ctr.trainer import batches, torch_threads

        train = self.data["train"]
        order = torch.randperm(len(train["label"]), generator=torch.Generator().manual_seed(0))
        with torch_threads(self.threads):
            started = time.perf_counter()
            for _batch in batches(train, batch_size=self.config.train.batch_size, order=order):
                pass
            return time.perf_counter() - started

    def profile(self, *, top: int = PROFILE_TOP) -> list[dict[str, Any]]:
        """One more epoch under ``torch.profiler`` (not part of the timed rounds): the ``top`` operators by self
        CPU time, with their share of the epoch's total and their call counts."""
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            self.epoch()
        events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        return [
            {"op": e.key, "self_share": round(e.self_cpu_time_total / total, 4), "calls_per_step": e.count / self.steps}
            for e in ranked
        ]

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class Side(Protocol):
    """What a measured side does: train one epoch, score val/test, cut one epoch of batches."""

    def epoch(self) -> float: ...

    def evaluate(self) -> dict[str, dict[str, float]]: ...

    def batches(self) -> float: ...


def measure(sides: Mapping[str, Side], *, rounds: int, n_train: int, progress: Progress) -> list[dict[str, Any]]:
    """``rounds`` epochs per side, alternating which side goes first; each epoch's rate, then its val/test AUC."""
    measured = []
    for index in range(rounds):
        order = list(sides) if index % 2 == 0 else list(sides)[::-1]
        row: dict[str, Any] = {"round": index + 1, "order": order}
        for name in order:
            progress(f"round {index + 1}/{rounds}: {name} epoch")
            row[name] = _rate(n_train, sides[name].epoch())
            scores = sides[name].evaluate()  # untimed
            row[name] |= {"val_auc": round(scores["val"]["auc"], 4), "test_auc": round(scores["test"]["auc"], 4)}
        measured.append(row)
    return measured


def experiment(*, batch_size: int, threads: int, rounds: int) -> Any:
    """The shipped DeepFM experiment for ML-100K without knowledge (its sparse and sequence fields only), with the
    bench's batch size, threads and epochs."""
    from ctr.config import load_config

    config = load_config(EXPERIMENT)
    changes: dict[str, Any] = {
        "features": dataclasses.replace(config.features, dense=()),
        "train": dataclasses.replace(config.train, batch_size=batch_size, num_threads=threads, epochs=rounds),
    }
    if "knowledge" in {field.name for field in dataclasses.fields(config)}:
        changes["knowledge"] = None  # no knowledge adaptor: plain DeepFM, as FuxiCTR's
    return dataclasses.replace(config, **changes)


def _rate(n: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "samples_per_s": round(n / seconds, 1)}


def summarize(rounds: Sequence[Mapping[str, Any]], sides: Sequence[str] = SIDES) -> dict[str, Any]:
    """Median samples/s per side over the rounds and ``ratio`` = ours / fuxictr (None without FuxiCTR)."""
    medians = {side: round(median([r[side]["samples_per_s"] for r in rounds]), 1) for side in sides}
    value = ratio(medians["ours"], medians["fuxictr"]) if "fuxictr" in medians else None
    return {
        "ours_samples_per_s": medians["ours"],
        "fuxictr_samples_per_s": medians.get("fuxictr"),
        "ratio": None if value is None else round(value, 3),
    }


def command_line(
    *, out: Path, data_dir: Path | None, rounds: int, threads: int, batch_size: int, fuxictr_workers: int = 0
) -> str:
    """The ``kar bench train`` line that reruns this benchmark."""
    import shlex

    args = ["kar", "bench", "train", "--out", str(out)]
    if data_dir is not None:
        args += ["--data", str(data_dir)]
    args += ["--rounds", str(rounds), "--threads", str(threads), "--batch-size", str(batch_size)]
    if fuxictr_workers:
        args += ["--fuxictr-workers", str(fuxictr_workers)]
    return shlex.join(args)


def _chart(result: Mapping[str, Any]) -> tuple[str, list[Panel], str]:
    sides = [side for side in SIDES if side in result["rounds"][0]]
    panels = [
        Panel(
            title="training throughput (1 epoch per round)",
            unit="samples/s",
            bars={side: [r[side]["samples_per_s"] for r in result["rounds"]] for side in sides},
        ),
        Panel(
            title="test AUC after each epoch",
            unit="AUC",
            bars={side: [r[side]["test_auc"] for r in result["rounds"]] for side in sides},
        ),
    ]
    shown = "n/a" if result["ratio"] is None else f"{result['ratio']:.2f}"
    note = (
        f"ours/FuxiCTR = {shown} (goal ≥ {GOAL:g}) · {result['n_train']:,} train samples, batch "
        f"{result['batch_size']}, {result['threads']} torch thread(s) each"
    )
    return "kar bench train: DeepFM, ours vs FuxiCTR", panels, note


def _check(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise DataError(f"bench train: --{name} must be at least {minimum}, got {value}")


def _fuxictr_facts(info: dict[str, Any], *, python: Path | None, workers: int) -> dict[str, Any]:
    """What the result records of the FuxiCTR side: versions, threads, size, and how it feeds and steps."""
    return {
        "version": info["fuxictr"],
        "env_specs": list(FUXICTR_ENV_SPECS),
        "python": str(python),
        "torch": info["torch"],
        "threads": info["threads"],
        "n_parameters": info["n_parameters"],
        "data_loader": f"NpzDataLoader (torch DataLoader, shuffle, num_workers={workers})",
        "gradient_clipping": "clip_grad_norm_(max_norm=10), part of BaseModel.train_step",
    }


def bench_train(
    *,
    out: Location,
    data_dir: Location | None = None,
    rounds: int = 5,
    threads: int = 1,
    batch_size: int = 1024,
    fuxictr: bool = True,
    fuxictr_workers: int = 0,
    frame: pd.DataFrame | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark our DeepFM's training throughput against FuxiCTR's (see the module docstring).

    Args:
        out: JSON result file; the chart goes next to it as ``<stem>.png``.
        data_dir: A prepared folder (its Feast training frame is read; applied first if needed) or a raw
            MovieLens-100K folder (prepared with the KAR protocol into a scratch folder); default: raw
            MovieLens-100K from ``../shared/data/ml-100k``.
        rounds: Measured epochs per side, alternating which side goes first.
        threads: torch CPU threads, both sides.
        batch_size: Training examples per step, both sides.
        fuxictr: False measures our side only (no scratch env; ``ratio`` is None).
        fuxictr_workers: FuxiCTR DataLoader worker processes (0: batches are assembled in its training
            process, within the same CPU budget as ours).
        frame: A training frame to use instead of reading ``data_dir`` (tests).
        cache_dir: Cache root of the scratch env; default ``$KAR_CACHE_DIR`` or ``~/.cache/kar``.
        progress: Step callback.

    Returns:
        The result as written to ``out``.

    Raises:
        DataError: Bad arguments or data.
        EnvironmentProblem: The scratch env could not be built.
        KarError: The FuxiCTR worker failed.
    """
    out = local_path(out, what="out")
    data_dir = optional_local_path(data_dir, what="data")
    for name, value in (("rounds", rounds), ("threads", threads), ("batch-size", batch_size)):
        _check(name, value)
    _check("fuxictr-workers", fuxictr_workers, minimum=0)
    import torch

    step = progress or silent
    started_at, started = datetime.now(UTC), time.perf_counter()
    python = ensure_fuxictr_env(cache_dir=cache_dir, progress=step) if fuxictr else None
    config = experiment(batch_size=batch_size, threads=threads, rounds=rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f".{out.stem}-", dir=out.parent)))
        origin = "frame passed by the caller"
        if frame is None:
            frame, origin = load_frame(data_dir, scratch=scratch, progress=step)
        step("encoding the splits (once, for both sides)")
        encoded = Encoded.build(frame, spec=config.features)
        del frame
        ours = OursSide(encoded, config, threads=threads)
        sides: dict[str, Side] = {"ours": ours}
        worker: FuxiCTRWorker | None = None
        if python is not None:
            step("starting the FuxiCTR worker (scratch venv)")
            worker = stack.enter_context(
                fuxictr_worker(
                    encoded, config, python=python, scratch=scratch, threads=threads, workers=fuxictr_workers
                )
            )
            sides["fuxictr"] = worker
        measured = measure(sides, rounds=rounds, n_train=encoded.n_train, progress=step)
        step("batch assembly alone (one epoch of batches, no training)")
        assembly = {name: round(side.batches(), 3) for name, side in sides.items()}
        step("profile of one more epoch of ours (not timed)")
        profiled = ours.profile()
    last = measured[-1]
    result = {
        "benchmark": "train",
        "model": "deepfm",
        "experiment": EXPERIMENT,
        "data": origin,
        "fields": encoded.spec.to_dict(),
        "model_params": {name: deepfm_params(config)[name] for name in DEEPFM_PARAMS},
        "optimizer": {
            "name": "Adam",
            "lr": config.train.lr,
            "embedding_l2": config.train.embedding_l2,
            "weight_decay": config.train.weight_decay,
        },
        "n_train": encoded.n_train,
        "n_val": len(encoded.labels["val"]),
        "n_test": len(encoded.labels["test"]),
        "batch_size": batch_size,
        "steps_per_epoch": ours.steps,
        "threads": threads,
        "timed": TIMED,
        "rounds": measured,
        **summarize(measured, sides=list(sides)),
        "goal": GOAL,
        "auc_after_rounds": {name: {"val": last[name]["val_auc"], "test": last[name]["test_auc"]} for name in sides},
        "batch_assembly_seconds": assembly,
        "ours_profile": profiled,
        "ours": {"n_parameters": ours.n_parameters, "torch": torch.__version__, "seed": config.seed},
        "fuxictr": None,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
        "machine": machine(),
        "command": command_line(
            out=out,
            data_dir=data_dir,
            rounds=rounds,
            threads=threads,
            batch_size=batch_size,
            fuxictr_workers=fuxictr_workers,
        ),
        "started_at": started_at.isoformat(timespec="seconds"),
    }
    if worker is not None:
        result["fuxictr"] = _fuxictr_facts(worker.info, python=python, workers=fuxictr_workers)
        result["fuxictr_model_source"] = FUXICTR_MODEL_SOURCE
        result["versions"] |= {"fuxictr": worker.info["fuxictr"], "fuxictr_torch": worker.info["torch"]}
    result["meets_goal"] = result["ratio"] is not None and result["ratio"] >= GOAL
    result["seconds"] = round(time.perf_counter() - started, 1)
    title, panels, note = _chart(result)
    return write_report(out, result, title=title, panels=panels, note=note)
