"""The encoding stage: chunking, the Spark job (quarantine, resume, model change, pruning), CLI and bench.

Everything runs the real all-MiniLM-L6-v2 model (shipped by a PyPI package) on tiny generated knowledge
tables; the only double is the NaN fault injection, named as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from kar.contracts.errors import DataError, ModelUnavailable
from spark_jobs.encoding.chunking import split_text, token_counts
from spark_jobs.encoding.model import DEFAULT_MODEL, SentenceEncoder, finite_rows, load_model, resolve_model
from spark_jobs.encoding.schema import VECTOR_SCHEMA

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 1, 1, tzinfo=UTC)
# ~600 MiniLM tokens of varied words: more than two 256-token windows.
LONG_TEXT = " ".join(
    f"Viewer {i} keeps returning to slow-burning science fiction, quiet dramas and the occasional musical."
    for i in range(40)
)


@pytest.fixture(scope="module")
def model():
    loaded, _ = load_model(resolve_model(None))
    return loaded


def answers(n: int, *, start: int = 0, word: str = "films") -> list[tuple[int, str | None, str]]:
    return [(i, f"Entity {i} enjoys {word} about topic number {i * 7}.", "ok") for i in range(start, start + n)]


def write_kind(knowledge: Path, kind: str, rows: list[tuple[int, str | None, str]], *, part: str = "part-0") -> None:
    """A knowledge table as ``kar knowledge`` writes it (the columns the encoder reads, plus one it ignores)."""
    id_column = "user_id" if kind == "user" else "item_id"
    table = pa.table(
        {
            "kind": pa.array([kind] * len(rows)),
            id_column: pa.array([r[0] for r in rows], pa.int64()),
            "as_of": pa.array([T0 + timedelta(days=r[0]) for r in rows], pa.timestamp("us", tz="UTC")),
            "text": pa.array([r[1] for r in rows], pa.string()),
            "status": pa.array([r[2] for r in rows]),
            "model": pa.array(["some-llm"] * len(rows)),
        }
    )
    (knowledge / kind).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, knowledge / kind / f"{part}.parquet")


def vectors(out: Path, kind: str) -> pa.Table:
    return pq.read_table(out / kind).sort_by("entity_id")


def encode(spark, knowledge: Path, out: Path, **kwargs):
    from spark_jobs.encoding.job import encode_knowledge

    return encode_knowledge(spark, knowledge_dir=knowledge, out=out, **kwargs)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(params=["driver", "spark"])
def planning(request, monkeypatch) -> str:
    """Both ways the job runs: planned with pyarrow and encoded by the driver (small tables, few texts), and
    planned and encoded in Spark (large ones)."""
    import spark_jobs.encoding.job as job

    if request.param == "spark":
        monkeypatch.setattr(job, "SMALL_KNOWLEDGE_ROWS", -1)
        monkeypatch.setattr(job, "DRIVER_MAX_TEXTS", 0)
    return request.param


# ---- chunking and the encoder (no Spark) ----


def test_long_text_is_chunked_into_windows_that_fit_and_keep_every_word(model):
    encoder = SentenceEncoder(model=model)
    (windows,) = encoder.windows([LONG_TEXT])
    assert len(windows) >= 3
    with_special = [len(ids) for ids in model.tokenizer(windows)["input_ids"]]
    assert max(with_special) <= model.max_seq_length == 256
    assert " ".join(windows).split() == LONG_TEXT.split(), "windows lose or split no word"
    assert encoder.windows(["short answer"]) == [["short answer"]]


def test_chunked_vector_is_the_normalised_mean_of_its_windows_not_the_truncated_text(model):
    encoder = SentenceEncoder(model=model)
    encoded = encoder.encode([LONG_TEXT, "A short answer about westerns."])
    assert encoded.n_chunks.tolist()[0] >= 3 and encoded.n_chunks.tolist()[1] == 1
    windows = split_text(LONG_TEXT, tokenizer=model.tokenizer, budget=encoder.budget)
    mean = model.encode(windows).mean(axis=0)
    np.testing.assert_allclose(encoded.vectors[0], mean / np.linalg.norm(mean), atol=1e-5)
    truncated = model.encode([LONG_TEXT])[0]
    assert np.abs(encoded.vectors[0] - truncated).max() > 1e-2, "differs from what truncation would give"
    np.testing.assert_allclose(encoded.vectors[1], model.encode(["A short answer about westerns."])[0], atol=1e-5)
    assert np.linalg.norm(encoded.vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_a_word_longer_than_a_window_is_split_inside_the_word(model):
    # MiniLM's WordPiece caps a word at 100 characters, so a tiny budget stands in for a long word.
    text = "antidisestablishmentarianism " * 3
    assert token_counts(["antidisestablishmentarianism"], tokenizer=model.tokenizer)[0] > 4
    windows = split_text(text, tokenizer=model.tokenizer, budget=4)
    assert len(windows) > 3 and max(token_counts(windows, tokenizer=model.tokenizer)) <= 4
    assert "".join(windows).replace(" ", "") == text.replace(" ", "")


def test_finite_rows_flags_nan_and_inf():
    rows = np.array([[0.1, 0.2], [np.nan, 0.0], [0.0, np.inf], [0.0, -0.0]], dtype=np.float32)
    assert finite_rows(rows).tolist() == [True, False, False, True]


def test_model_names_resolve(tmp_path):
    assert resolve_model(None).name == resolve_model("all-MiniLM-L6-v2").name == DEFAULT_MODEL
    shipped = resolve_model(None).source
    assert Path(shipped, "config.json").is_file()
    assert resolve_model(shipped).name == str(Path(shipped).resolve()) != DEFAULT_MODEL
    assert resolve_model("org/model").source == "org/model"
    with pytest.raises(DataError, match="no such folder"):
        resolve_model(str(tmp_path / "missing-model"))


def test_missing_knowledge_folder_or_table_says_what_to_run(tmp_path):
    from kar.pipeline import run_encode

    data = tmp_path / "data"
    with pytest.raises(DataError) as missing:
        run_encode(data_dir=data)  # fails before Spark starts: no session is needed
    message = str(missing.value)
    assert str(data / "knowledge") in message and f"kar knowledge --data {data}" in message
    write_kind(data / "knowledge", "user", answers(2))
    with pytest.raises(DataError, match=r"item: no item knowledge table; run `kar knowledge .* --kind item`"):
        run_encode(data_dir=data)
    with pytest.raises(DataError, match="unknown kind"):
        run_encode(data_dir=data, kinds=["users"])


# ---- the Spark job ----


@pytest.mark.spark
def test_encodes_ok_answers_quarantines_the_rest_with_the_exact_schema(spark, tmp_path, planning, model):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    rows = [*answers(4), (10, "", "ok"), (11, " \n\t ", "ok"), (12, None, "ok"), (13, "cut off", "truncated")]
    write_kind(knowledge, "user", [*rows, (20, LONG_TEXT, "ok")])
    write_kind(knowledge, "item", answers(3))
    summary = encode(spark, knowledge, out)

    user = summary["user"]
    assert (user.input, user.encoded, user.empty, user.not_ok, user.chunked) == (9, 5, 3, 1, 1)
    assert user.skipped_cached == user.non_finite == user.duplicate == 0
    assert user.model == DEFAULT_MODEL and user.dim == 384 and user.sentences_per_s > 0
    assert user.encoded_on == planning
    assert json.loads((out / "summary.json").read_text())["user"]["encoded"] == 5

    table = vectors(out, "user")
    assert table.schema.equals(VECTOR_SCHEMA), table.schema
    assert table.schema.field("as_of").type == pa.timestamp("us", tz="UTC")
    assert table["entity_id"].to_pylist() == [0, 1, 2, 3, 20]
    assert table["as_of"].to_pylist() == [T0 + timedelta(days=i) for i in (0, 1, 2, 3, 20)]
    assert set(table["model"].to_pylist()) == {DEFAULT_MODEL} and set(table["dim"].to_pylist()) == {384}
    assert all(table["has_knowledge"].to_pylist())
    assert table["n_chunks"].to_pylist()[:4] == [1, 1, 1, 1] and table["n_chunks"].to_pylist()[4] >= 3
    texts = [r[1] for r in answers(4)] + [LONG_TEXT]
    assert table["text_hash"].to_pylist() == [sha256(t) for t in texts]
    got = np.array(table["vector"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got[:4], model.encode(texts[:4]), atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (5, 384)

    quarantine = pq.read_table(out / "quarantine" / "user").to_pandas().sort_values("entity_id")
    assert quarantine["entity_id"].tolist() == [10, 11, 12, 13]
    assert quarantine["reason"].tolist() == ["empty text", "empty text", "empty text", "status: truncated"]
    assert summary["item"].encoded == 3 and len(vectors(out, "item")) == 3


@pytest.mark.spark
def test_rerun_encodes_nothing_and_new_answers_only_themselves(spark, tmp_path, planning):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(6))
    first = encode(spark, knowledge, out, kinds=["item"])["item"]
    parts = sorted(p.name for p in (out / "item").iterdir())
    rerun = encode(spark, knowledge, out, kinds=["item"])["item"]
    assert (first.encoded, rerun.encoded, rerun.skipped_cached) == (6, 0, 6)
    assert rerun.model_loads == 0 and rerun.tasks == 0 and rerun.dim == 384
    assert sorted(p.name for p in (out / "item").iterdir()) == parts, "an unchanged rerun writes nothing"

    write_kind(knowledge, "item", answers(3, start=6), part="part-1")
    grown = encode(spark, knowledge, out, kinds=["item"])["item"]
    assert (grown.input, grown.encoded, grown.skipped_cached) == (9, 3, 6)
    assert vectors(out, "item")["entity_id"].to_pylist() == list(range(9))


@pytest.mark.spark
def test_few_new_texts_in_a_large_table_are_encoded_by_the_driver_with_its_threads_restored(
    spark, tmp_path, monkeypatch, model
):
    """The incremental case: a table planned in Spark (large) whose new texts are few goes to the driver."""
    import torch

    import spark_jobs.encoding.job as job

    monkeypatch.setattr(job, "SMALL_KNOWLEDGE_ROWS", -1)
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(5))
    first = encode(spark, knowledge, out, kinds=["item"], driver_max_texts=0)["item"]
    write_kind(knowledge, "item", answers(2, start=5), part="part-1")
    threads = torch.get_num_threads()
    grown = encode(spark, knowledge, out, kinds=["item"], driver_max_texts=2, threads=1)["item"]
    assert (first.encoded_on, grown.encoded_on) == ("spark", "driver")
    assert (grown.encoded, grown.skipped_cached, grown.threads_per_task) == (2, 5, 1)
    assert torch.get_num_threads() == threads, "the driver's own torch setting is restored"
    table = vectors(out, "item")
    assert table["entity_id"].to_pylist() == list(range(7))
    texts = [r[1] for r in answers(7)]
    np.testing.assert_allclose(np.array(table["vector"].to_pylist()), model.encode(texts), atol=1e-5)
    assert encode(spark, knowledge, out, kinds=["item"])["item"].encoded_on is None  # nothing to encode


@pytest.mark.spark
def test_changed_answer_replaces_its_vector_and_removed_answers_go(spark, tmp_path, planning):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "user", answers(5))
    encode(spark, knowledge, out, kinds=["user"], flush_rows=2)
    changed = [(i, text if i != 2 else "A new answer for entity two.", s) for i, text, s in answers(4)]
    write_kind(knowledge, "user", changed)  # entity 4 is gone, entity 2 has a new text
    summary = encode(spark, knowledge, out, kinds=["user"])["user"]
    assert (summary.encoded, summary.skipped_cached, summary.pruned_rows) == (1, 3, 2)
    table = vectors(out, "user")
    assert table["entity_id"].to_pylist() == [0, 1, 2, 3]
    assert table["text_hash"].to_pylist()[2] == sha256("A new answer for entity two.")


@pytest.mark.spark
def test_resume_after_a_crash_encodes_only_what_is_missing_and_drops_leftovers(spark, tmp_path, planning):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(8))
    encode(spark, knowledge, out, kinds=["item"], flush_rows=2, tasks=1, compact=False)
    parts = sorted((out / "item").glob("part-*.parquet"))
    assert len(parts) == 4
    # What kill -9 leaves: the parts not yet written are missing and a half-written temporary file remains.
    lost = sum(pq.read_metadata(p).num_rows for p in parts[2:])
    for part in parts[2:]:
        part.unlink()
    (out / "item" / "_tmp-m123-half-written.parquet").write_bytes(b"PAR1 truncated")
    # And a crash inside a rewrite leaves one part twice.
    shutil.copy(parts[0], out / "item" / f"{parts[0].stem}-copy.parquet")
    summary = encode(spark, knowledge, out, kinds=["item"])["item"]
    assert (summary.encoded, summary.skipped_cached) == (lost, 8 - lost)
    assert summary.pruned_rows == 2, "the duplicated part's rows are dropped once"
    assert vectors(out, "item")["entity_id"].to_pylist() == list(range(8))
    assert not list((out / "item").glob("_tmp-*"))
    assert len(list((out / "item").glob("part-*.parquet"))) == 1  # compacted: Feast's file store needs one file


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("where", ["driver", "spark"])
def test_sigkill_at_a_known_point_then_rerun_gives_exactly_one_vector_per_answer(spark, tmp_path, where):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    n, flush, block_after = 120, 4, 3
    write_kind(knowledge, "user", answers(n))
    writers = 1 if where == "driver" else 2  # local[2]: two Spark tasks, each its own writer
    # Every writer blocks for good after its third part (fault injection): the kill lands at that point.
    script = (
        "import sys; from pathlib import Path; from spark_jobs.session import get_spark; "
        "from spark_jobs.encoding.job import encode_knowledge; "
        "encode_knowledge(get_spark(master='local[2]'), knowledge_dir=Path(sys.argv[1]), out=Path(sys.argv[2]), "
        f"kinds=['user'], flush_rows={flush}, fault_block_after_parts={block_after}, "
        f"driver_max_texts={n if where == 'driver' else 0})"
    )
    victim = subprocess.Popen([sys.executable, "-c", script, str(knowledge), str(out)], cwd=REPO,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    expected_parts = writers * block_after
    deadline = time.monotonic() + 300  # a bound on a hang, not a timing the test depends on
    while len(list((out / "user").glob("part-*"))) < expected_parts and victim.poll() is None:
        assert time.monotonic() < deadline, "the victim never reached the known point"
        time.sleep(0.2)
    assert victim.poll() is None, "the victim should be blocked at the known point, not finished"
    os.killpg(victim.pid, signal.SIGKILL)  # the driver and its Spark JVM
    victim.wait()
    before = pq.read_table(out / "user").num_rows
    assert before == expected_parts * flush  # the blocked writers wrote exactly their parts

    summary = encode(spark, knowledge, out, kinds=["user"])["user"]
    assert (summary.skipped_cached, summary.encoded) == (before, n - before)
    assert vectors(out, "user")["entity_id"].to_pylist() == list(range(n))  # exactly one vector per answer
    assert not list((out / "user").glob("_tmp-*"))


@pytest.mark.spark
def test_model_change_reencodes_everything_then_removes_the_old_vectors(spark, tmp_path):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(4))
    encode(spark, knowledge, out, kinds=["item"])
    old_parts = set((out / "item").iterdir())
    # The shipped folder given by path is another model identity (what a user's own model folder would be).
    folder = resolve_model(None).source
    progress: list[str] = []
    summary = encode(spark, knowledge, out, kinds=["item"], model=folder, progress=progress.append)["item"]
    assert (summary.encoded, summary.skipped_cached) == (4, 0)
    assert summary.replaced_models == [DEFAULT_MODEL] and summary.removed_parts == len(old_parts)
    assert any("re-encoding all" in line for line in progress), progress
    assert not old_parts & set((out / "item").iterdir())
    assert set(vectors(out, "item")["model"].to_pylist()) == {str(Path(folder).resolve())}
    assert encode(spark, knowledge, out, kinds=["item"], model=folder)["item"].encoded == 0


@pytest.mark.spark
@pytest.mark.parametrize("driver_max_texts", [1000, 0], ids=["driver", "spark-tasks"])
def test_a_model_that_cannot_load_is_model_unavailable_and_writes_nothing(spark, tmp_path, driver_max_texts):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(2))
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    with pytest.raises(ModelUnavailable, match="cannot load sentence-transformers model"):
        encode(spark, knowledge, out, kinds=["item"], model=str(not_a_model), driver_max_texts=driver_max_texts)
    assert not list(out.glob("item/*.parquet")), "no vector part is written without a model"


@pytest.mark.spark
def test_non_finite_vectors_are_quarantined_not_written(spark, tmp_path):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "user", answers(4))
    # Fault injection: entity 1's vector is replaced by NaN after the real model encoded it.
    summary = encode(spark, knowledge, out, kinds=["user"], fault_nan_entity_ids=[1])["user"]
    assert (summary.encoded, summary.non_finite) == (3, 1)
    assert vectors(out, "user")["entity_id"].to_pylist() == [0, 2, 3]
    quarantine = pq.read_table(out / "quarantine" / "user").to_pylist()
    assert [(q["entity_id"], q["reason"]) for q in quarantine] == [(1, "non-finite vector")]
    # Not cached as done: a rerun (here without the fault) encodes it, and the quarantine is current again.
    rerun = encode(spark, knowledge, out, kinds=["user"])["user"]
    assert (rerun.encoded, rerun.non_finite, rerun.skipped_cached) == (1, 0, 3)
    assert pq.read_table(out / "quarantine" / "user").num_rows == 0


@pytest.mark.spark
def test_a_kind_without_usable_answers_gets_an_empty_table_with_the_schema(spark, tmp_path):
    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", [(1, "  ", "ok"), (2, "x", "error")])
    summary = encode(spark, knowledge, out, kinds=["item"])["item"]
    assert (summary.input, summary.encoded, summary.rows) == (2, 0, 0)
    table = pq.read_table(out / "item")
    assert table.num_rows == 0 and table.schema.equals(VECTOR_SCHEMA)
    # Rerun over its own empty table (LLM-KERec with no complementary pair gives no text at all, every refresh).
    write_kind(knowledge, "item", [])
    rerun = encode(spark, knowledge, out, kinds=["item"])["item"]
    assert (rerun.input, rerun.encoded, rerun.rows) == (0, 0, 0)


@pytest.mark.spark
def test_cli_encode_prints_counts_and_writes_vectors(spark, tmp_path):
    from kar.cli import app

    data = tmp_path / "data"
    write_kind(data / "knowledge", "user", [*answers(3), (9, "", "ok")])
    write_kind(data / "knowledge", "item", answers(2))
    result = CliRunner().invoke(app, ["encode", "--data", str(data), "--kind", "user", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "user: 4 answers → 3 encoded, 0 already encoded, 1 empty" in " ".join(result.output.split())
    assert len(pq.read_table(data / "vectors" / "user")) == 3 and not (data / "vectors" / "item").exists()
    bad = CliRunner().invoke(app, ["encode", "--data", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "no knowledge folder" in bad.output and "Traceback" not in bad.output


@pytest.mark.spark
def test_bench_encode_writes_the_result_and_its_plot(spark, tmp_path):
    from kar.bench.encode import bench_encode

    knowledge = tmp_path / "knowledge"
    write_kind(knowledge, "user", answers(5))
    write_kind(knowledge, "item", answers(3, word="books"))
    out = tmp_path / "bench" / "encode.json"
    # The first 4 texts are users': the bench then times the job on that kind only.
    result = bench_encode(out=out, data_dir=knowledge, texts=4, large=6, rounds=1, batch_size=4)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result, default=str))
    expected = {
        "benchmark", "model", "texts", "batch_size", "tasks", "threads_per_task", "bare_threads", "model_load",
        "start_up", "rounds", "bare", "ours", "ratio", "cached_rerun", "max_abs_diff_vs_bare", "goal", "machine",
        "command", "plot",
    }  # fmt: skip
    assert expected <= set(written)
    assert written["texts"] == 4 and written["kinds"] == {"user": 4, "item": 0}
    (round_,) = written["rounds"]
    assert round_["ours"]["encoded"] == 4 and round_["ours"]["model_loads"] == 0
    assert written["ratio"] > 0 and written["cached_rerun"]["encoded"] == 0
    large = written["inputs"]["large"]
    assert large["texts"] == 6 and written["ratio_large"] == large["ratio"] > 0  # 5 users + 1 item, same run
    assert written["inputs"]["small"]["encoded_on"] == large["encoded_on"] == ["driver"]  # a few texts each
    assert {"read", "quarantine", "already_encoded", "encode", "commit", "gate"} <= set(written["stage_seconds"])
    assert written["max_abs_diff_vs_bare"] < 1e-4
    assert set(written["model_load"]) == {"import_seconds", "load_seconds"}
    assert written["start_up"]["sentences_per_s_including_jvm"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["encode.json", "encode.png"], "scratch left behind"


@pytest.mark.spark
def test_kerec_knowledge_is_encoded_only_when_asked_and_keyed_like_items(spark, tmp_path, planning):
    """``kerec`` (one text per item) is an optional kind: not in the default kinds, and when named its vectors
    carry the item's own string id from the item id map, as ``item`` vectors do."""
    from spark_jobs.encoding.job import DEFAULT_KINDS

    knowledge, out = tmp_path / "knowledge", tmp_path / "vectors"
    write_kind(knowledge, "item", answers(2))
    write_kind(knowledge, "kerec", [(0, "heist, jazz", "ok"), (1, "  ", "ok")])
    maps = tmp_path / "prepared" / "id_maps" / "items"
    maps.mkdir(parents=True)
    pq.write_table(pa.table({"item_id": pa.array([0, 1], pa.int64()), "sku": ["SKU-A", "SKU-B"]}), maps / "m.parquet")
    assert "kerec" not in DEFAULT_KINDS
    encode(spark, knowledge, out, kinds=("item",))
    assert not (out / "kerec").exists()
    summary = encode(spark, knowledge, out, kinds=("kerec",), id_maps_of=tmp_path / "prepared")
    assert summary["kerec"].encoded == 1
    table = vectors(out, "kerec")
    assert table["entity_id"].to_pylist() == [0] and table["entity_key"].to_pylist() == ["SKU-A"]
    assert table["kind"].to_pylist() == ["kerec"]
    assert pq.read_table(out / "quarantine" / "kerec")["entity_id"].to_pylist() == [1]  # the blank text
