"""``kar``: a thin typer CLI over ``kar.pipeline`` and ``kar.serving``; every command is an importable function."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kar.contracts import storage
from kar.contracts.errors import KarError
from kar.contracts.paths import local_path, name_or_path
from kar.contracts.results import EncodeSummary, KerecSummary, KnowledgeSummary, TrainMetrics
from kar.contracts.storage import Folder, Uri
from kar.contracts.tables import SUMMARY_FILE
from kar.processes import Terminated, sigterm_raises, stopped_by_sigterm

app = typer.Typer(help="kar-feast: LLM knowledge for CTR rankers on Feast.", no_args_is_help=True)
feast_app = typer.Typer(help="Register, materialize and read the Feast feature store.", no_args_is_help=True)
app.add_typer(feast_app, name="feast")
llm_app = typer.Typer(help="Serve the LLM the knowledge jobs call (vLLM, OpenAI-compatible).", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

# Set once per invocation by the root callback (``--debug`` / $KAR_DEBUG), read when a command fails.
_DEBUG: ContextVar[bool] = ContextVar("kar_debug", default=False)
# The step a command was in when it failed (set by ``steps()``), for the one-line error.
_STAGE: ContextVar[str | None] = ContextVar("kar_stage", default=None)
ERROR_LOG = "kar-error.log"


def cli_path(value: str | os.PathLike[str]) -> Path:
    """Every path option goes through here: made absolute against the directory the command was typed in.

    Typer hands defaults in too, so ``runs/demo`` is resolved the same way as a typed value.
    """
    try:
        return local_path(value)
    except KarError as exc:
        raise typer.BadParameter(str(exc)) from None


def cli_location(value: str | os.PathLike[str]) -> Folder:
    """Path options of the Spark jobs' data: a local path made absolute, a URI (``s3a://``, ``hdfs://``,
    ``file://``) kept verbatim for Spark and pyarrow (``kar.contracts.storage``)."""
    return storage.location(value)


def cli_name_or_path(value: str) -> str:
    """For options taking a bundled/hub name or a path (models, scenarios): ``kar.contracts.paths.name_or_path``."""
    return name_or_path(value)


DataDir = Annotated[Path, typer.Option("--data", parser=cli_path, help="Folder written by `kar prepare`.")]
# Typer takes no union annotation; these options are declared str and parsed into a Folder (Path or Uri).
JobDataDir = Annotated[str, typer.Option("--data", parser=cli_location, help="Folder or URI written by `kar prepare`.")]
RepoOpt = Annotated[
    Path | None,
    typer.Option(
        "--repo", parser=cli_path, help="Your Feast repo, used as it is (default: the folder's example repo)."
    ),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(help="Feature service (default: ranking_* in the example repo, kar_* in your repo)."),
]


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="KAR_DEBUG", help="Print the full traceback of an unexpected error.")
    ] = False,
) -> None:
    _DEBUG.set(debug)


def _command_name(func: Callable[..., Any]) -> str:
    return "kar " + func.__name__.removesuffix("_command").replace("_", " ")


def _log_folder(arguments: Mapping[str, Any]) -> Path:
    """The command's output folder (``--out``, else ``--data``, else ``--run``); a file option gives its folder."""
    for key in ("out", "data", "run"):
        value = arguments.get(key)
        if isinstance(value, Uri):
            value = storage.local_folder(value)  # a file:// URI's folder; no log on remote storage
        if isinstance(value, Path):
            return value.parent if value.suffix else value
    return Path(tempfile.gettempdir()) / "kar"


def write_error_log(*, command: str, stage: str | None, error: BaseException, folder: Path) -> Path:
    """Write the full traceback of ``error`` to ``folder/kar-error.log`` (the temp folder if that fails)."""
    text = (
        f"{datetime.now(UTC).isoformat(timespec='seconds')} {command} failed"
        f"{f' while {stage}' if stage else ''}\nargv: {sys.argv}\n\n" + "".join(traceback.format_exception(error))
    )
    for candidate in (folder, Path(tempfile.gettempdir()) / "kar"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            path = candidate / ERROR_LOG
            path.write_text(text)
            return path
        except OSError:
            continue
    raise error


def friendly(func: F) -> F:
    """Errors as one line, never a traceback dump.

    A ``KarError`` (a problem the user can fix) prints its message and exits 2. Anything else is a bug or an
    environment problem we did not foresee: one line naming the command, the step it was in and the error,
    the full traceback in ``kar-error.log`` in the output folder, exit 1; ``--debug`` also prints it here.
    """
    command = _command_name(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _STAGE.set(None)
        try:
            with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: every child service is stopped on the way out
                try:
                    return func(*args, **kwargs)
                except Exception as exc:
                    # The unwinding can fail on a JVM the same signal stopped: the stop is what ended the command.
                    if stopped_by_sigterm(exc):
                        raise Terminated from exc
                    raise
        except KarError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except Terminated:
            err_console.print(f"{command}: stopped by SIGTERM", highlight=False)
            raise typer.Exit(128 + signal.SIGTERM) from None
        except KeyboardInterrupt:
            err_console.print(f"{command}: interrupted", highlight=False)
            raise typer.Exit(128 + signal.SIGINT) from None
        except Exception as exc:
            stage = _STAGE.get()
            log = write_error_log(command=command, stage=stage, error=exc, folder=_log_folder(kwargs))
            if _DEBUG.get():
                sys.stderr.write("".join(traceback.format_exception(exc)))  # unwrapped, as Python prints it
            where = f" while {stage}" if stage else ""
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            line = f"{command} failed{where}: {type(exc).__name__}: {message}"
            line += f" (full traceback in {log}; --debug prints it)"
            err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class _Steps:
    """Prints a check line per finished step; ``detail`` only refreshes the live line (e.g. per epoch)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("starting", total=None)
        self._current: str | None = None

    def __call__(self, message: str) -> None:
        self.finish()
        self._current = message
        _STAGE.set(message)
        self._progress.update(self._task, description=message)

    def detail(self, message: str) -> None:
        self._progress.update(self._task, description=f"{self._current}: {message}")

    def finish(self) -> None:
        if self._current:
            self._progress.console.print(f"  [green]✓[/] {self._current}", highlight=False)
        self._current = None

    def hide(self) -> None:
        self._progress.update(self._task, visible=False)


@contextmanager
def steps() -> Iterator[_Steps]:
    """A spinner line showing the current step and its elapsed time, above a log of finished steps."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err_console) as bar:
        tracker = _Steps(bar)
        try:
            yield tracker
            tracker.finish()
        finally:
            # On failure too: the error line should not sit under a frozen spinner.
            tracker.hide()


def _metrics_table(results: Mapping[str, TrainMetrics], title: str) -> Table:
    table = Table(title=title)
    for column in ("model", "val AUC", "val LogLoss", "test AUC", "test LogLoss"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, metrics in results.items():
        val, test = metrics.val, metrics.test
        table.add_row(
            name, f"{val['auc']:.4f}", f"{val['logloss']:.4f}", f"{test['auc']:.4f}", f"{test['logloss']:.4f}"
        )
    return table


@app.command()
@friendly
def prepare(
    dataset: Annotated[
        str, typer.Option(help="synthetic | movielens-100k | movielens-1m | amazon | table (with --spec)")
    ] = "synthetic",
    out: Annotated[
        str, typer.Option(parser=cli_location, help="Output folder or URI for the prepared tables.")
    ] = "runs/prepared",
    path: Annotated[Path | None, typer.Option(parser=cli_path, help="Input folder of a file-based dataset.")] = None,
    spec: Annotated[
        Path | None, typer.Option(parser=cli_path, help="--dataset table: YAML naming your tables and columns.")
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(
            help="Split: 'time' (global), 'kar' (users held out), 'cold-items' (items held out) or 'rolling' "
            "(every interaction a sample, knowledge every --cutoff-every interactions; what kar refresh extends)."
        ),
    ] = "time",
    seed: Annotated[int, typer.Option(help="Seed of the kar user split and the cold-items item split.")] = 1234,
    cutoff_every: Annotated[
        int, typer.Option(help="--protocol rolling: interactions between two knowledge cutoffs of a user.")
    ] = 20,
    interactions: Annotated[
        list[Path] | None,
        typer.Option(
            parser=cli_path,
            help="Interaction files read instead of the dataset's log, in its format (repeat for batches).",
        ),
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Load a dataset with Spark, quarantine bad rows, split, and write canonical parquet tables."""
    from kar.pipeline import run_prepare

    with steps() as step:
        summary = run_prepare(
            dataset=dataset,
            out=out,
            path=path,
            spec=spec,
            protocol=protocol,
            seed=seed,
            cutoff_every=cutoff_every,
            interactions=interactions or (),
            master=master,
            progress=step,
        )
    rejected = {t: q["rejected"] for t, q in summary.quarantine.items() if q["rejected"]}
    console.print(f"[bold]{dataset}[/]: {json.dumps(summary.rows)}")
    console.print(f"splits: {json.dumps(summary.splits)}")
    console.print(f"quarantined: {json.dumps(rejected) if rejected else 'none'} → {out / SUMMARY_FILE}")


ProfileOpt = Annotated[
    str | None,
    typer.Option(
        envvar="KAR_FEAST_PROFILE", help="Feast profile: 'spark' (example repo) or your feature_store.<profile>.yaml."
    ),
]
RedisOpt = Annotated[
    str | None, typer.Option("--redis", help="Online store in Redis at HOST:PORT instead of the SQLite file.")
]


def _online_store(redis: str | None) -> dict[str, str] | None:
    return {"type": "redis", "connection_string": redis} if redis else None


@feast_app.command("apply")
@friendly
def feast_apply(
    data: DataDir,
    repo: RepoOpt = None,
    profile: ProfileOpt = None,
    knowledge_dim: Annotated[
        int | None, typer.Option(help="Example repo: the raw knowledge views' size (default: the vectors').")
    ] = None,
    adapted_dim: Annotated[
        int | None, typer.Option(help="Example repo: the adapted views' size (default: the vectors').")
    ] = None,
) -> None:
    """Register the example repo over a prepared folder (DATA/feast/repo), or run `feast apply` in --repo."""
    from kar.feast import Dimensions, vector_dims
    from kar.serving import store

    dims = None
    if knowledge_dim or adapted_dim:
        found = vector_dims(data)
        dims = Dimensions(knowledge=knowledge_dim or found.knowledge, adapted=adapted_dim or found.adapted)
    names = store.apply(data_dir=data, repo=repo, profile=profile, dims=dims)
    console.print(f"applied {len(names)} objects: {', '.join(names)}")


@feast_app.command("init")
@friendly
def feast_init(
    repo: Annotated[Path, typer.Option("--repo", parser=cli_path, help="Your Feast repo (has feature_store.yaml).")],
    user_entity: Annotated[str, typer.Option(help="Name of your entity that rankings are for.")],
    item_entity: Annotated[str, typer.Option(help="Name of your entity that is ranked.")],
    data: DataDir,
    with_view: Annotated[
        list[str] | None,
        typer.Option(help="Your view (its variable name) the services include; repeat (default: all of them)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rewrite a kar_knowledge.py that kar wrote before.")] = False,
) -> None:
    """Write kar_knowledge.py into your Feast repo: knowledge views for your entities and services
    kar_training/kar_serving over your views. Then run Feast's own `feast apply` there."""
    from kar.serving import store

    path = store.init_repo(
        repo=repo, user_entity=user_entity, item_entity=item_entity, data_dir=data, with_views=with_view, force=force
    )
    console.print(f"wrote {path}; now run `feast apply` in {repo}", highlight=False)


@feast_app.command("materialize")
@friendly
def feast_materialize(
    data: DataDir,
    repo: RepoOpt = None,
    profile: ProfileOpt = None,
    redis: RedisOpt = None,
    service: Annotated[
        str | None, typer.Option(help="In your repo: load only this service's views (default: the knowledge views).")
    ] = None,
) -> None:
    """Load the latest feature values into the online store (the repo's own; Redis with --redis)."""
    from kar.serving import store

    store.materialize(data_dir=data, repo=repo, profile=profile, online_store=_online_store(redis), service=service)
    target = f"redis://{redis}" if redis else ("the repo's online store" if repo else store.feast_dir(data))
    console.print(f"materialized into {target}")


@feast_app.command("online")
@friendly
def feast_online(
    data: DataDir,
    user: Annotated[str, typer.Option(help="User id (your entity's own, e.g. C-0042).")],
    items: Annotated[str, typer.Option(help="Comma-separated item ids.")],
    repo: RepoOpt = None,
    redis: RedisOpt = None,
    service: ServiceOpt = None,
) -> None:
    """Serving-time lookup of one user's and N items' features from the online store (kar.serving.online)."""
    from kar.serving import store
    from kar.serving.online import OnlineLookup

    item_ids = [i.strip() for i in items.split(",") if i.strip()]
    feature_store = store.open_store(data_dir=data, repo=repo, online_store=_online_store(redis))
    service = service or store.default_service(repo, serving=True)
    found = OnlineLookup(feature_store, service=service).fetch(user_id=user, item_ids=item_ids)
    for line in online_lines(found.describe()):
        console.print(line, highlight=False, soft_wrap=True)


def online_lines(described: dict[str, Any]) -> list[str]:
    """One line for the user and one per item, from ``OnlineFeatures.describe()``."""
    lines = ["user: " + ", ".join(f"{k}={v}" for k, v in described["user"].items())]
    lines += ["item: " + ", ".join(f"{k}={v}" for k, v in item.items()) for item in described["items"]]
    return lines


@app.command()
@friendly
def train(
    model: Annotated[
        str, typer.Option(help="deepfm | dcnv2 | mmoe | wukong | xgboost | package.module:Class (your torch model)")
    ] = "deepfm",
    data: DataDir = Path("runs/prepared"),
    out: Annotated[Path, typer.Option(parser=cli_path, help="Output folder for metrics.json and the model.")] = Path(
        "runs/train"
    ),
    config: Annotated[
        Path | None,
        typer.Option(parser=cli_path, help="Experiment YAML, complete or only the keys to override."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed.")] = None,
    repo: RepoOpt = None,
    service: ServiceOpt = None,
) -> None:
    """Train a ranker on the point-in-time Feast training frame; writes OUT/metrics.json.

    The bundled experiment (`<model>_<dataset>.yaml`) reads both knowledge views through the hybrid-expert
    adaptor; any other prepared folder gets an experiment derived from its columns (a --config YAML overrides).
    `kar adapt export --run OUT` then pre-stores the adapted vectors for serving.
    """
    from kar.pipeline import run_train

    with steps() as step:
        metrics = run_train(
            model=model,
            data_dir=data,
            out=out,
            config_path=config,
            seed=seed,
            repo=repo,
            service=service,
            progress=step,
        )
    console.print(_metrics_table({metrics.model: metrics}, f"{data}"))


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option(parser=cli_path, help="Run folder.")] = Path("runs/demo"),
    users: Annotated[int | None, typer.Option(help="Synthetic users (default 120).")] = None,
    items: Annotated[int | None, typer.Option(help="Synthetic items (default 120).")] = None,
    knowledge: Annotated[
        bool, typer.Option(help="Generate LLM knowledge with the embedded vLLM CPU server (or $KAR_LLM_BASE_URL).")
    ] = True,
) -> None:
    """The main job on embedded defaults: synthetic data → Spark → LLM knowledge → Feast → DeepFM + XGBoost."""
    from kar.pipeline import run_demo

    with steps() as step:
        result = run_demo(out=out, n_users=users, n_items=items, knowledge=knowledge, progress=step)
    for line in _knowledge_lines(result.knowledge):
        console.print(line, highlight=False)
    if sample := result.knowledge_sample:
        text = sample["text"] if len(sample["text"]) <= 300 else sample["text"][:300] + "…"
        console.print(f"user {sample['user_id']} as of {sample['as_of']}: [italic]{text}[/]", highlight=False)
    console.print(_metrics_table(result.models, "kar demo (synthetic, test = last 10% of time)"))
    for line in _encode_lines(result.encode):
        console.print(line, highlight=False)
    coverage = ", ".join(f"{view} {share:.0%}" for view, share in result.knowledge_coverage.items())
    console.print(f"training rows with knowledge (point-in-time): {coverage}", highlight=False)
    for field, table in result.adapted_export.items():
        console.print(f"adapted export: {field} {table['rows']} vectors ({table['dim']}-d)", highlight=False)
    console.print("online lookup (kar.serving.online, SQLite, ranking_serving):", highlight=False)
    for line in online_lines(result.online_lookup):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    ranking = result.online_ranking
    ranked = ", ".join(
        f"item {i['item_id']} {i['score']:.4f}{'' if i['has_knowledge'] else ' (no knowledge)'}"
        for i in ranking["items"]
    )
    console.print(
        f"DeepFM ranking for user {ranking['user_id']} from online features: {ranked} "
        f"(max |online − raw-vector score| {ranking['max_abs_diff_vs_raw']:.1e})",
        highlight=False,
    )
    from validation.stages import stage_lines

    for line in stage_lines(result.validation):
        console.print(line, highlight=False, soft_wrap=True)
    for line in service_lines(result.service):
        console.print(line, highlight=False)
    console.print(f"metrics → {out / 'metrics.json'} ({result.seconds} s)")


def service_lines(served: dict[str, Any]) -> list[str]:
    """The demo's HTTP ranking: what `kar serve` answered and how it compares with in-process scoring."""
    ranked = ", ".join(
        f"item {i['item_id']} {i['score']:.4f}{' (fallback)' if i['fallback'] else ''}" for i in served["items"]
    )
    return [
        f"kar serve (started in {served['start_seconds']} s, stopped after one request): POST /rank user "
        f"{served['request']['user_id']} → {served['status']}: {ranked}",
        f"  Server-Timing {served['server_timing']}; max |HTTP − in-process score| "
        f"{served['max_abs_diff_vs_in_process']:.1e}",
    ]


def _knowledge_lines(summaries: Mapping[str, KnowledgeSummary | KerecSummary]) -> list[str]:
    """One line per prompt kind: counts, status breakdown, tokens, throughput and cost estimate."""
    lines = []
    for kind, summary in summaries.items():
        for step, s in summary.answer_steps().items():
            name = step.replace("_", " ")  # kerec_entity reads "kerec entity"
            status = ", ".join(f"{k} {v}" for k, v in sorted(s.status.items()))
            rate = f"{s.prompts_per_s:.2f} prompts/s" if s.prompts_per_s else "no LLM calls"
            lines.append(
                f"[bold]{name}[/]: {s.prompts} prompts ({s.cached} cached, {s.calls} LLM calls) → {status}"
                f" · tokens {s.answer_tokens_in} in / {s.answer_tokens_out} out · {rate}"
                f" · est. ${s.usd_estimate_all_answers:.4f}"
            )
        if isinstance(summary, KerecSummary):
            lines.append(
                f"[bold]{kind} graph[/]: {summary.entities} item entities, {summary.graph_edges} judged pairs, "
                f"{summary.complementary_edges} complementary"
            )
    return lines


@app.command()
@friendly
def knowledge(
    data: JobDataDir,
    out: Annotated[
        str | None, typer.Option(parser=cli_location, help="Output folder (default: DATA/knowledge).")
    ] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="user | item | kerec; repeat for several (default: all three).")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible base URL, e.g. http://host:8000/v1 (default: $KAR_LLM_BASE_URL, "
            "else the embedded vLLM CPU server is started for the job)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: $KAR_LLM_MODEL or the server's first).")] = None,
    scenario: Annotated[
        str | None,
        typer.Option(
            parser=cli_name_or_path, help="movies | books | products | a YAML path (default: from the dataset)."
        ),
    ] = None,
    cache: Annotated[
        str | None, typer.Option(parser=cli_location, help="Answer cache folder (default: OUT/cache).")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight per Spark task.")] = 8,
    limit: Annotated[
        int | None, typer.Option(help="Only N users/items/pairs of each kind: a fixed sample, for trials.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print a few prompts, counts and a token estimate; call no LLM.")
    ] = False,
    tokenizer: Annotated[
        Path | None, typer.Option(parser=cli_path, help="tokenizer.json of the served model, for exact token budgets.")
    ] = None,
    compiled: Annotated[bool, typer.Option(help="torch.compile the embedded model (long jobs).")] = False,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Generate LLM knowledge with Spark: user preference reasoning, item facts, LLM-KERec complementary pairs.

    The API key comes from $KAR_LLM_API_KEY or $OPENAI_API_KEY. Answers are cached by (model, params,
    prompt): a rerun asks only for what is missing, and a killed job resumes where it stopped.
    """
    from kar.pipeline import plan_knowledge, run_knowledge

    kinds, out = kind or ["user", "item", "kerec"], out or data / "knowledge"
    if dry_run:
        with steps() as step:
            plans = plan_knowledge(
                kinds=kinds,
                data_dir=data,
                scenario=scenario,
                limit=limit,
                tokenizer=tokenizer,
                master=master,
                progress=step,
            )
        for line in plan_lines(plans):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        return
    with steps() as step:
        summaries = run_knowledge(
            kinds=kinds,
            data_dir=data,
            out=out,
            base_url=endpoint,
            model=model,
            scenario=scenario,
            cache_dir=cache,
            concurrency=concurrency,
            limit=limit,
            tokenizer=tokenizer,
            compiled=compiled,
            master=master,
            progress=step,
        )
    for line in _knowledge_lines(summaries):
        console.print(line, highlight=False)
    console.print(f"summary → {out / SUMMARY_FILE}")


@app.command()
@friendly
def refresh(
    data: JobDataDir,
    interactions: Annotated[
        Path, typer.Option(parser=cli_path, help="The new batch, in the format the folder's log was read in.")
    ],
    spec: Annotated[
        Path | None, typer.Option(parser=cli_path, help="table folders: the spec (default: the one prepared with).")
    ] = None,
    run: Annotated[
        Path | None, typer.Option(parser=cli_path, help="Ranker run whose adaptor exported DATA/adapted: append.")
    ] = None,
    repo: RepoOpt = None,
    service: Annotated[str | None, typer.Option(help="Feature service to materialize (with/without --repo).")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (default: $KAR_LLM_BASE_URL, else embedded).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: $KAR_LLM_MODEL or the server's first).")] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Append a batch of interactions to a rolling folder: new cutoffs and items only reach the LLM, the encoder,
    the adaptor and the online store; everything else comes from the cache. Rerun after a crash to finish it."""
    from kar.refresh import REFRESH_FILE, run_refresh

    with steps() as step:
        report = run_refresh(
            data_dir=data,
            interactions=interactions,
            spec=spec,
            run=run,
            repo=repo,
            service=service,
            base_url=endpoint,
            model=model,
            master=master,
            progress=step,
        )
    console.print(
        f"users refreshed {report.users_refreshed}, new cutoffs {report.new_cutoffs}, new items {report.new_items}, "
        f"new or changed kerec rows {report.new_kerec_rows}; "
        f"prompts sent {json.dumps(report.prompts_sent)}, cached {json.dumps(report.prompts_cached)}; "
        f"encoded {json.dumps(report.encoded)}, exported {json.dumps(report.exported)}"
    )
    console.print(f"report → {data / REFRESH_FILE}")


def plan_lines(plans: list[Any]) -> list[str]:
    """``kar knowledge --dry-run``: per kind its counts and token estimate, then its sample prompts."""
    lines = []
    for plan in plans:
        fields = ", ".join(f"{role}: {', '.join(names) or 'none'}" for role, names in plan.prompt_fields.items())
        lines.append(
            f"{plan.kind}: {plan.prompts} prompts ({plan.over_budget} over budget, not sent) · "
            f"{plan.prompt_tokens:,} prompt tokens + at most {plan.max_answer_tokens:,} answer tokens · "
            f"at most ${plan.usd_estimate_max:.4f} · fields shown: {fields}"
        )
        for system, prompt in plan.samples:
            lines += [f"--- {plan.kind} prompt ---", f"[system] {system}", prompt]
    lines.append("dry run: no LLM was started or called")
    return lines


def _encode_lines(summaries: Mapping[str, EncodeSummary]) -> list[str]:
    """One line per kind: what was encoded, skipped and quarantined, the model and the throughput."""
    lines = []
    for kind, s in summaries.items():
        rate = f"{s.sentences_per_s:.1f} sentences/s" if s.sentences_per_s else "nothing to encode"
        other = s.input - s.empty - s.encoded - s.skipped_cached - s.non_finite - s.duplicate
        rejected = f", {other} not ok" if other else ""
        lines.append(
            f"[bold]{kind}[/]: {s.input} answers → {s.encoded} encoded, {s.skipped_cached} already encoded, "
            f"{s.empty} empty{rejected}, {s.non_finite} non-finite · {s.chunked} chunked · "
            f"{s.rows} vectors of {s.dim}-d {s.model} · {s.seconds} s, {rate}"
            + {"driver": " (on the driver)", "spark": " (in Spark tasks)"}.get(s.encoded_on or "", "")
        )
    return lines


@app.command()
@friendly
def encode(
    data: JobDataDir,
    knowledge: Annotated[
        str | None,
        typer.Option("--knowledge", parser=cli_location, help="`kar knowledge` output (default: DATA/knowledge)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(parser=cli_location, help="Output folder for vector tables (default: DATA/vectors)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            parser=cli_name_or_path,
            help="sentence-transformers model name or folder (default: the shipped all-MiniLM-L6-v2).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 64,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            help="user | item | kerec (LLM-KERec's complementary entities per item); repeat for several "
            "(default: user and item)."
        ),
    ] = None,
    text: Annotated[
        str,
        typer.Option(
            "--text", help="text (the LLM's answers) | prompt (the data the LLM was given: the no-LLM control)."
        ),
    ] = "text",
    driver_max_texts: Annotated[
        int | None,
        typer.Option(
            help="Texts per kind at or below which the driver encodes them, not Spark tasks (default: 1000; "
            "0: always Spark). A few texts cost less than a Spark job's workers loading the model."
        ),
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Encode LLM knowledge into vectors with sentence-transformers in Spark (long answers chunked, not cut).

    A rerun encodes only answers not yet encoded with the same model; a killed run resumes where it stopped;
    a different model re-encodes everything and then replaces the old vectors.
    """
    from kar.pipeline import run_encode

    out = out or data / "vectors"
    with steps() as step:
        summaries = run_encode(
            data_dir=data,
            knowledge_dir=knowledge,
            out=out,
            model=model,
            batch_size=batch_size,
            kinds=kind or ["user", "item"],
            text_column=text,
            driver_max_texts=driver_max_texts,
            master=master,
            progress=step,
        )
    for line in _encode_lines(summaries):
        console.print(line, highlight=False)
    console.print(f"vectors → {out} (summary: {out / SUMMARY_FILE})", highlight=False)


@app.command()
@friendly
def validate(
    stage: Annotated[str, typer.Argument(help="raw, prepared, prompts, answers, embeddings, features or training.")],
    data: DataDir,
    out: Annotated[
        Path | None,
        typer.Option(
            parser=cli_path, help="Results folder (default DATA/validation; Data Docs in docs/validate-STAGE)."
        ),
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Run one stage's data-quality suites on a data folder; prints a line per suite, writes JSON + Data Docs."""
    from kar.pipeline import run_validate

    with steps() as step:
        result = run_validate(stage=stage, data_dir=data, out=out, master=master, progress=step)
    for report in result.reports:
        console.print(report.summary_line(), highlight=False, soft_wrap=True)
    if result.item_facts:
        console.print(result.item_facts["summary"], highlight=False)
    console.print(f"results → {result.docs.parents[2]} (Data Docs: {result.docs})", highlight=False)
    if not result.passed:
        raise typer.Exit(1)


adapt_app = typer.Typer(
    help="The knowledge adaptor trained with a ranker (KAR's hybrid experts).", no_args_is_help=True
)
app.add_typer(adapt_app, name="adapt")


@adapt_app.command("export")
@friendly
def adapt_export(
    run: Annotated[Path, typer.Option(parser=cli_path, help="Ranker run trained with knowledge (`kar train --out`).")],
    data: JobDataDir,
    vectors: Annotated[
        str | None, typer.Option(parser=cli_location, help="Encoded knowledge (default: DATA/vectors).")
    ] = None,
    out: Annotated[
        str | None, typer.Option(parser=cli_location, help="Adapted tables (default: DATA/adapted).")
    ] = None,
) -> None:
    """Pre-store adapted knowledge: every user's and item's adapted vector into the Feast *_knowledge_adapted views.

    Serving then reads 32-d vectors from the online store and runs no LLM, encoder or adaptor. Run
    `kar feast materialize` afterwards to load them into the online store.
    """
    from kar.pipeline import run_adapt_export

    for table in run_adapt_export(run_dir=run, data_dir=data, vectors_dir=vectors, out=out):
        console.print(f"{table.field}: {table.rows} vectors ({table.dim}-d) → {table.path}", highlight=False)


@app.command("serve")
@friendly
def serve_command(
    model: Annotated[
        Path, typer.Option("--model", parser=cli_path, help="Run folder written by `kar train` (torch or XGBoost).")
    ],
    data: DataDir,
    repo: RepoOpt = None,
    redis: RedisOpt = None,
    service: ServiceOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    token_file: Annotated[
        Path | None, typer.Option(parser=cli_path, help="File holding the bearer token (default: $KAR_SERVE_TOKEN).")
    ] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No token (only on a loopback address).")] = False,
    max_candidates: Annotated[int, typer.Option(help="Items per request.")] = 1000,
    max_body_bytes: Annotated[int, typer.Option(help="Request body limit (413 above).")] = 256 * 1024,
    timeout: Annotated[float, typer.Option(help="Seconds per request before 504.")] = 1.0,
    workers: Annotated[int, typer.Option(help="Requests scored at once per process (one thread each).")] = 2,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads per forward pass (keep processes × threads ≤ cores).")
    ] = 1,
    processes: Annotated[
        int,
        typer.Option(help="Server processes on the one port, each loading its own model (metrics are per process)."),
    ] = 1,
) -> None:
    """Serve POST /rank (plus /healthz, /metrics) from the Feast online store; see `kar.serving.service`."""
    from kar.serving.service import ServiceLimits, serve

    limits = ServiceLimits(
        max_candidates=max_candidates,
        max_body_bytes=max_body_bytes,
        timeout_s=timeout,
        workers=workers,
        threads=threads,
        processes=processes,
    )
    loading = f"{model} in {processes} processes" if processes > 1 else str(model)
    err_console.print(f"kar serve: loading {loading}, then serving http://{host}:{port}/rank (Ctrl-C stops)")
    serve(
        model_dir=model,
        data_dir=data,
        repo=repo,
        online_store=_online_store(redis),
        service=service,
        host=host,
        port=port,
        token_file=token_file,
        no_auth=no_auth,
        limits=limits,
    )


@llm_app.command("serve")
@friendly
def llm_serve(
    model: Annotated[
        str,
        typer.Option(parser=cli_name_or_path, help="'embedded' (SmolLM2-135M on vLLM CPU) or an HF model dir/name."),
    ] = "embedded",
    port: Annotated[int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = None,
    compiled: Annotated[
        bool, typer.Option(help="torch.compile the embedded model: ~100 s slower start, ~25% faster.")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(parser=cli_path, help="Where the vLLM env and model live (default ~/.cache/kar).")
    ] = None,
) -> None:
    """Start a vLLM OpenAI-compatible server on loopback and keep it up until Ctrl-C."""
    from kar.llm import serve_embedded, serve_forever, serve_model

    with steps() as step:
        if model == "embedded":
            server = serve_embedded(cache_dir=cache_dir, port=port, compiled=compiled, progress=step)
        else:
            server = serve_model(model=model, port=port)
    serve_forever(server, on_ready=lambda s: console.print(f"serving {s.served_name} at {s.base_url} (Ctrl-C stops)"))


@app.command("spark-cluster")
@friendly
def spark_cluster(
    workers: Annotated[int, typer.Option(help="Workers to start.")] = 2,
    cores: Annotated[int, typer.Option(help="Cores each worker offers.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory each worker offers to executors.")] = "2g",
    log_dir: Annotated[
        Path | None, typer.Option(parser=cli_path, help="Daemon logs and work folders (default: a temp folder).")
    ] = None,
) -> None:
    """Start a Spark standalone master and workers on 127.0.0.1 and keep them up until Ctrl-C."""
    from kar.spark_cluster import SparkStandaloneCluster, serve_forever

    def ready(cluster: SparkStandaloneCluster) -> None:
        console.print(f"Spark master at {cluster.master_url} (web UI {cluster.web_ui_url}), {cluster.workers} workers")
        console.print(f"run a job on it: KAR_SPARK_MASTER={cluster.master_url} kar prepare ... (Ctrl-C stops)")

    cluster = SparkStandaloneCluster(workers=workers, cores=cores, memory=memory, log_dir=log_dir)
    serve_forever(cluster, on_ready=ready)


@llm_app.command("setup")
@friendly
def llm_setup(
    cache_dir: Annotated[
        Path | None, typer.Option(parser=cli_path, help="Where the vLLM env and model live (default ~/.cache/kar).")
    ] = None,
) -> None:
    """Build the vLLM CPU env and the embedded model once (cached), without starting a server."""
    from kar.llm import ensure_embedded_model

    with steps() as step:
        path = ensure_embedded_model(cache_dir=cache_dir, progress=step)
    console.print(f"embedded model ready: {path}")


bench_app = typer.Typer(help="Benchmarks: each writes a JSON result and a plot next to it.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("llm")
@friendly
def bench_llm_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", parser=cli_path, help="Prepared folder (default: a small synthetic one, made and removed)."
        ),
    ] = None,
    kind: Annotated[str, typer.Option(help="Prompts to send: item (facts) or user (preferences).")] = "item",
    prompts: Annotated[int, typer.Option(help="Prompts per run.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Requests in flight per Spark task.")] = 8,
    rounds: Annotated[int, typer.Option(help="Measured rounds per side, after a warm-up.")] = 2,
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL (default: $KAR_LLM_BASE_URL, else embedded).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: the server's first).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Override the scenario's max_tokens (shorter runs).")] = None,
    block_size: Annotated[
        int | None, typer.Option(help="KV-cache block size of the embedded server (tokens; default 32).")
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """The knowledge job's LLM step vs a bare async load generator: same server, prompts and requests in flight."""
    from kar.bench.llm import bench_llm, hit_rate_text

    with steps() as step:
        result = bench_llm(
            out=out,
            data_dir=data,
            kind=kind,
            prompts=prompts,
            concurrency=concurrency,
            rounds=rounds,
            base_url=endpoint,
            model=model,
            max_tokens=max_tokens,
            block_size=block_size,
            master=master,
            progress=step,
        )
    bare, ours, cached = result["bare"], result["ours"], result["cached_rerun"]
    verdict = "met" if result["meets_goal"] else "NOT met"
    console.print(f"[bold]ratio ours/bare[/] {result['ratio']} (goal ≥ {result['goal']}: {verdict})", highlight=False)
    console.print(
        f"bare {bare['prompts_per_s']:.3f} prompts/s, {bare['tokens_per_s']:.1f} tokens/s · ours "
        f"{ours['prompts_per_s']:.3f} prompts/s, {ours['tokens_per_s']:.1f} tokens/s · cached rerun "
        f"{cached['prompts_per_s']:.2f} prompts/s ({cached['calls']} LLM calls)",
        highlight=False,
    )
    first = result["first_pass"]
    console.print(
        f"first pass (prompts new to the server): {first['prompts_per_s']:.3f} prompts/s, prefix-cache hit rate "
        f"{hit_rate_text(first)}",
        highlight=False,
    )
    console.print(
        f"{result['prompts']} {result['kind']} prompts, {result['tasks']} tasks × {result['concurrency_per_task']} = "
        f"{result['in_flight']} in flight → {out} ({result['plot']})",
        highlight=False,
    )


@bench_app.command("refresh")
@friendly
def bench_refresh_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    users: Annotated[int, typer.Option(help="Users of the generated input (a refresh's new users).")] = 10,
    items: Annotated[int, typer.Option(help="Items of the generated input (a refresh's new items).")] = 10,
    rounds: Annotated[int, typer.Option(help="Measured rounds after the warm-up.")] = 2,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible LLM endpoint (default: the embedded server).")
    ] = None,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """Every stage of a refresh-sized run (prepare → knowledge from the answer cache → encode → feast apply →
    export → materialize), timed per stage once Spark and the LLM are up."""
    from kar.bench.refresh import bench_refresh

    with steps() as step:
        result = bench_refresh(
            out=out, users=users, items=items, rounds=rounds, base_url=base_url, master=master, progress=step
        )
    verdict = "met" if result["meets_goal"] else "NOT met"
    stages = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in result["stage_seconds"].items())
    console.print(
        f"[bold]end to end {result['total_seconds']:.1f} s, goal < {result['goal_seconds']:.0f} s[/]: {verdict} · "
        f"median s per stage: {stages} → {out}",
        highlight=False,
        soft_wrap=True,
    )


@bench_app.command("encode")
@friendly
def bench_encode_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            parser=cli_path,
            help="Knowledge folder, or a prepared folder with knowledge/ (default: generated).",
        ),
    ] = None,
    texts: Annotated[
        int | None, typer.Option(help="The small input: the first N texts (default: all, or 512 generated).")
    ] = None,
    large: Annotated[int, typer.Option(help="The large input's texts (0: measure the small one only).")] = 2048,
    rounds: Annotated[int, typer.Option(help="Measured rounds per side, alternating order.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass, both sides.")] = 64,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """The Spark encoding job vs bare SentenceTransformer.encode on the same texts, a small and a large input:
    sentences/s, the job's time per stage, and start-up."""
    from kar.bench.encode import bench_encode

    with steps() as step:
        result = bench_encode(
            out=out,
            data_dir=data,
            texts=texts,
            large=large,
            rounds=rounds,
            batch_size=batch_size,
            master=master,
            progress=step,
        )
    verdict = "met" if result["meets_goal"] else "NOT met"
    console.print(f"[bold]goal ours/bare ≥ {result['goal']} on every input[/]: {verdict}", highlight=False)
    for name, m in result["inputs"].items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m["stage_seconds"].items() if k != "total")
        console.print(
            f"{name} ({m['texts']} texts, encoded on {' and '.join(m['encoded_on'])}): ratio {m['ratio']} · bare "
            f"{m['bare']['sentences_per_s']:.1f} vs ours {m['ours']['sentences_per_s']:.1f} sentences/s · job stages "
            f"(s): {stages}",
            highlight=False,
            soft_wrap=True,
        )
    start, load = result["start_up"], result["model_load"]
    console.print(
        f"Spark: {result['tasks']} tasks × {result['threads_per_task']} thread; driver and bare: "
        f"{result['bare_threads']} threads · "
        f"start-up: model import {load['import_seconds']:.1f} s + load {load['load_seconds']:.1f} s; JVM "
        f"{start['jvm_seconds']:.1f} s; first job {start['first_run_seconds']:.1f} s → {out}",
        highlight=False,
    )


@bench_app.command("online")
@friendly
def bench_online_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", parser=cli_path, help="Prepared folder with vectors (default: a generated store)."),
    ] = None,
    items: Annotated[int, typer.Option(help="Candidate items per request.")] = 100,
    requests: Annotated[int, typer.Option(help="Requests per round and way.")] = 300,
    rounds: Annotated[int, typer.Option(help="Rounds per way, alternating order.")] = 3,
    backend: Annotated[list[str] | None, typer.Option(help="sqlite and/or redis (repeatable; default both).")] = None,
) -> None:
    """p50/p99 of reading one user + N items (profiles and knowledge vectors): Feast SDK vs kar.serving.online."""
    from kar.bench.online import BACKENDS, GOAL_REDIS_P99_MS, bench_online

    with steps() as step:
        result = bench_online(
            out=out,
            data_dir=data,
            items=items,
            requests=requests,
            rounds=rounds,
            backends=backend or BACKENDS,
            progress=step,
        )
    table = Table(title=f"1 user + {items} items, ms per request")
    for column in ("store", "service", "feast p50", "feast p99", "kar p50", "kar p99", "speedup"):
        table.add_column(column, justify="left" if column in ("store", "service") else "right")
    for row in result["results"]:
        feast, kar = row["feast"], row["kar"]
        table.add_row(
            row["backend"],
            row["service"],
            f"{feast['p50_ms']:.2f}",
            f"{feast['p99_ms']:.2f}",
            f"{kar['p50_ms']:.2f}",
            f"{kar['p99_ms']:.2f}",
            f"{row['speedup_p50']:.1f}×",
        )
    console.print(table)
    verdict = "met" if result["goal_met"] else "NOT met"
    worst = result["goal"]["worst_redis_p99_ms"]
    console.print(f"goal Redis p99 ≤ {GOAL_REDIS_P99_MS:g} ms: {verdict} (worst {worst} ms) → {out}", highlight=False)


@bench_app.command("serve")
@friendly
def bench_serve_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    model: Annotated[
        Path | None,
        typer.Option("--model", parser=cli_path, help="Torch run (default: an untrained DeepFM on a generated store)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", parser=cli_path, help="The run's prepared folder with adapted vectors.")
    ] = None,
    items: Annotated[int, typer.Option(help="Candidate items per request.")] = 100,
    requests: Annotated[int, typer.Option(help="Requests per measured level.")] = 300,
    backend: Annotated[list[str] | None, typer.Option(help="sqlite and/or redis (repeatable; default both).")] = None,
    workers: Annotated[int, typer.Option(help="The service's scoring threads per process.")] = 2,
    processes: Annotated[
        str, typer.Option(help="`kar serve --processes` counts to compare, comma-separated (first gives http c=N).")
    ] = "1,2",
) -> None:
    """p50/p99 and requests/s of `kar serve` at concurrency 1 and 8, per process count, against bare fetch +
    bare forward."""
    from kar.bench.online import BACKENDS
    from kar.bench.serve import GOAL_P99_MS, GOAL_RPS_RATIO, bench_serve

    try:
        counts = [int(part) for part in processes.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"comma-separated counts, e.g. 1,2; got {processes!r}", param_hint="--processes"
        ) from None

    with steps() as step:
        result = bench_serve(
            out=out,
            model_dir=model,
            data_dir=data,
            items=items,
            requests=requests,
            backends=backend or BACKENDS,
            workers=workers,
            processes=counts,
            progress=step,
        )
    table = Table(title=f"1 user + {items} items, ms per request (p50 / p99)")
    ways = ["bare fetch", "bare forward", "library", *(k for k in result["results"][0] if k.startswith("http"))]
    for column in ("store", *ways, "overhead"):
        table.add_column(column, justify="left" if column == "store" else "right")
    for row in result["results"]:
        cells = [f"{row[w]['p50_ms']:.1f} / {row[w]['p99_ms']:.1f}" for w in ways]
        table.add_row(row["backend"], *cells, f"{row['overhead_p50']:.2f}×")
    console.print(table)
    for row in result["results"]:
        levels = ", ".join(f"{k}: {v['requests_per_s']:.0f} req/s" for k, v in row.items() if k.startswith("http"))
        console.print(f"{row['backend']}: {levels}", highlight=False)
    if result["rps_c8_ratio"] is not None:
        top = max(result["config"]["concurrency"])
        for row in result["results"]:
            rates = ", ".join(f"{e['processes']}: {e[f'requests_per_s_c{top}']:.0f}" for e in row["processes"])
            console.print(
                f"{row['backend']}: req/s at concurrency {top} by processes {rates}; ratio {row['rps_c8_ratio']:.2f}×",
                highlight=False,
            )
        verdict = "met" if result["rps_goal_met"] else "NOT met"
        console.print(f"goal req/s ratio ≥ {GOAL_RPS_RATIO:g} (worst store): {verdict}", highlight=False)
    verdict = "met" if result["goal_met"] else "NOT met"
    console.print(f"goal p99 ≤ {GOAL_P99_MS:g} ms at concurrency 1: {verdict} → {out}", highlight=False)


@bench_app.command("quality")
@friendly
def bench_quality_command(
    dataset: Annotated[
        str, typer.Option(help="movielens-100k | movielens-1m | synthetic (picks the bundled experiments).")
    ],
    out: Annotated[Path, typer.Option(parser=cli_path, help="Result folder: quality.json, quality.png, runs/.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            parser=cli_path,
            help="Prepared folder with knowledge/ and vectors/ (default: runs/ml-100k|ml-1m).",
        ),
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="Backbone (repeatable; default all five).")] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="Variant (repeatable; default all but both+kerec, which needs kerec vectors)."),
    ] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per model and variant.")] = 3,
    jobs: Annotated[int | None, typer.Option(help="Runs at once, one core each (default: CPU count).")] = None,
    users: Annotated[int, typer.Option(help="synthetic without --data: users to generate.")] = 3000,
    items: Annotated[int, typer.Option(help="synthetic without --data: items to generate.")] = 3000,
    mean_interactions: Annotated[int, typer.Option(help="synthetic without --data: mean ratings per user.")] = 25,
    theme_weight: Annotated[
        float, typer.Option(help="synthetic without --data: weight of the themes only item text carries (0: none).")
    ] = 1.0,
) -> None:
    """Test AUC/LogLoss of every ranker without knowledge, with it, and ablations (adaptors, no-LLM control,
    leakage canary); on synthetic data also the theme probes of the item vectors."""
    from kar.bench.quality import DEFAULT_VARIANTS, MODELS, SLICES, bench_quality
    from spark_jobs.datasets.synthetic import SyntheticConfig

    synthetic = SyntheticConfig(
        n_users=users,
        n_items=items,
        mean_interactions=mean_interactions,
        min_interactions=min(5, mean_interactions),
        theme_weight=theme_weight,
    )
    with steps() as step:
        result = bench_quality(
            dataset=dataset,
            out=out,
            data_dir=data,
            models=model or MODELS,
            variants=variant or DEFAULT_VARIANTS,
            seeds=seeds,
            jobs=jobs,
            synthetic=synthetic,
            progress=step,
        )
    table = Table(title=f"{dataset}: test AUC (mean ± std over {seeds} seeds), by item slice")
    for column in ("slice", "n", "model", "variant", "test AUC", "Δ AUC vs none", "test LogLoss"):
        table.add_column(column, justify="left" if column in ("slice", "model", "variant") else "right")
    for row in sorted(result["summary"], key=lambda r: SLICES.index(r["slice"])):
        auc, delta = row["test_auc_mean"], row["delta_auc_mean"]
        table.add_row(
            row["slice"],
            f"{row['n']:,}",
            row["model"],
            row["variant"],
            "one class" if auc is None else f"{auc:.4f} ± {row['test_auc_std']:.4f}",
            "" if delta is None or row["variant"] == "none" else f"{delta:+.4f} ± {row['delta_auc_std']:.4f}",
            f"{row['test_logloss_mean']:.4f} ± {row['test_logloss_std']:.4f}",
        )
    console.print(table)
    if probes := result.get("theme_probe"):
        _print_probes(probes)
    if signal := result.get("signal"):
        _print_signal(signal)
    console.print(f"→ {out / 'quality.json'}, {out / 'quality.png'}", highlight=False)


def _print_signal(signal: dict) -> None:
    table = Table(title=f"where the signal is: test AUC with no ranker ({signal['test_samples']:,} samples)")
    table.add_column("score")
    table.add_column("test AUC", justify="right")
    for key, label in (
        ("oracle", "the generator's p_positive"),
        ("oracle_without_themes", "its affinity without the theme term"),
        ("themes_only", "the theme term alone"),
        ("user_item_cosine", "cos(user prompt vector, item vector)"),
        ("history_profile_cosine", "cos(rating-weighted history item vectors, item vector)"),
    ):
        table.add_row(label, f"{signal[key]:.4f}")
    console.print(table)


def _print_probes(probes: dict) -> None:
    table = Table(title="planted item themes: held-out AUC of a linear probe per theme (mean over themes)")
    for column in ("item vectors", "probe AUC"):
        table.add_column(column, justify="left" if column == "item vectors" else "right")
    for source, score in probes["encoded"].items():
        auc = score["auc_mean"]
        table.add_row(f"encoded ({source})", "too few items per theme" if auc is None else f"{auc:.4f}")
    for row in probes["adapted"]:
        auc = "too few items per theme" if row["auc_mean"] is None else f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}"
        table.add_row(f"adapted: {row['model']} {row['variant']}", auc)
    console.print(table)


@bench_app.command("train")
@friendly
def bench_train_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            parser=cli_path,
            help="Prepared folder, or raw MovieLens-100K (default ../shared/data/ml-100k, prepared: --protocol kar).",
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="Measured epochs per side, alternating order.")] = 5,
    threads: Annotated[int, typer.Option(help="torch CPU threads, both sides.")] = 1,
    batch_size: Annotated[int, typer.Option(help="Training examples per step, both sides.")] = 1024,
    fuxictr_workers: Annotated[int, typer.Option(help="FuxiCTR DataLoader worker processes.")] = 0,
) -> None:
    """Training throughput of our DeepFM vs FuxiCTR's (scratch venv) on the same data, batch size and threads."""
    from kar.bench.train import bench_train

    with steps() as step:
        result = bench_train(
            out=out,
            data_dir=data,
            rounds=rounds,
            threads=threads,
            batch_size=batch_size,
            fuxictr_workers=fuxictr_workers,
            progress=step,
        )
    verdict = "met" if result["meets_goal"] else "NOT met"
    auc = result["auc_after_rounds"]
    console.print(
        f"[bold]ratio ours/FuxiCTR[/] {result['ratio']} (goal ≥ {result['goal']:g}: {verdict})", highlight=False
    )
    console.print(
        f"ours {result['ours_samples_per_s']:,.0f} samples/s · FuxiCTR {result['fuxictr_samples_per_s']:,.0f} "
        f"samples/s · test AUC after {rounds} epochs: ours {auc['ours']['test']:.4f}, "
        f"FuxiCTR {auc['fuxictr']['test']:.4f}",
        highlight=False,
    )
    console.print(
        f"{result['n_train']:,} train samples, batch {result['batch_size']}, {result['threads']} thread(s) → "
        f"{out} ({result['plot']})",
        highlight=False,
    )


@bench_app.command("validate")
@friendly
def bench_validate_command(
    out: Annotated[Path, typer.Option(parser=cli_path, help="JSON result file (the plot goes next to it as .png).")],
    dataset: Annotated[str, typer.Option(help="Input dataset (default: synthetic sized to ML-1M, ~1M ratings).")] = (
        "synthetic"
    ),
    path: Annotated[Path | None, typer.Option(parser=cli_path, help="Input folder for file datasets.")] = None,
    protocol: Annotated[str, typer.Option(help="Split protocol: time or kar.")] = "kar",
    rounds: Annotated[int, typer.Option(help="Measured rounds per side, alternating order.")] = 3,
    master: Annotated[str | None, typer.Option(help="Spark master (default: env or local[*]).")] = None,
) -> None:
    """The prepare job with and without its data-quality gates on ~1M interactions: time and overhead."""
    from kar.bench.validate import bench_validate

    with steps() as step:
        result = bench_validate(
            out=out, dataset=dataset, path=path, protocol=protocol, rounds=rounds, master=master, progress=step
        )
    verdict = "met" if result["meets_goal"] else "NOT met"
    console.print(
        f"[bold]gate overhead[/] {result['overhead']:+.1%} (goal ≤ {result['goal']:.0%}: {verdict}) · prepare "
        f"{result['plain_seconds']:.1f} s plain vs {result['gated_seconds']:.1f} s gated · "
        f"{result['interactions']:,} interactions, {len(result['suites'])} suites; importing great_expectations "
        f"adds {result['ge_import_seconds_once_per_process']:.1f} s once per process → {out} ({result['plot']})",
        highlight=False,
    )


def main() -> None:
    app()
