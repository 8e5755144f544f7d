"""The answer cache: atomic parts, one answer per key, crashed writers leave nothing half-written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from spark_jobs.llm.cache import TMP_PREFIX, AnswerCache, latest_per_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def answer(key: str, *, status: str = "ok", text: str = "fine", at: int = 0) -> dict:
    return {
        "key": key,
        "prompt_hash": f"h-{key}",
        "model": "m",
        "params": "{}",
        "text": text,
        "finish_reason": "stop",
        "tokens_in": 10,
        "tokens_out": 5,
        "latency_s": 0.1,
        "status": status,
        "error": None if status != "error" else "HTTP 500",
        "attempts": 1,
        "logprobs": None,
        "created_at": T0 + timedelta(seconds=at),
    }


def test_empty_cache_reads_as_empty_table(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "missing")
    assert cache.parts() == []
    assert cache.read().num_rows == 0
    assert cache.count_rows() == 0


def test_append_writes_whole_parts_and_read_dedups(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.append([answer("a", text="old", at=0), answer("b")])
    cache.append([answer("a", text="new", at=5)])
    assert len(cache.parts()) == 2
    assert cache.count_rows() == 3
    rows = {r["key"]: r for r in cache.read().to_pylist()}
    assert set(rows) == {"a", "b"}
    assert rows["a"]["text"] == "new"


def test_usable_answer_beats_newer_error(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.append([answer("a", status="ok", text="good", at=0)])
    cache.append([answer("a", status="error", text=None, at=9)])
    assert cache.read().to_pylist()[0]["text"] == "good"


def test_latest_per_key_keeps_newest_error_when_all_failed() -> None:
    import pyarrow as pa

    from spark_jobs.llm.cache import ANSWER_SCHEMA

    rows = [answer("a", status="error", at=1), answer("a", status="error", at=3), answer("b", at=0)]
    table = latest_per_key(pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA))
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert by_key["a"]["created_at"] == T0 + timedelta(seconds=3)
    assert table.num_rows == 2


def test_leftover_temp_file_of_a_crashed_writer_is_ignored(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    cache.append([answer("a")])
    (tmp_path / f"{TMP_PREFIX}crashed.parquet").write_bytes(b"PAR1 half a file")
    assert cache.read().num_rows == 1
    cache.append([answer("b")])
    assert cache.compact() == 2
    assert [Path(p).name.startswith("part-") for p in cache.parts()] == [True]
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))
    assert sorted(cache.read()["key"].to_pylist()) == ["a", "b"]


def test_writer_flushes_by_count_and_on_exit(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path)
    with cache.writer(flush_rows=2, flush_seconds=3600) as writer:
        for key in "abcde":
            writer.add(answer(key))
        assert cache.count_rows() == 4  # two full buffers flushed, one row still buffered
    assert cache.count_rows() == 5
    assert writer.written == 5
    assert all(pq.ParquetFile(p).metadata.num_rows <= 2 for p in cache.parts())
