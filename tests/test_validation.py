"""Data-quality gates: per suite a good frame passes and a bad one fails naming the expectation; row quarantine;
batch-level stops; row-rule translations agree with great_expectations; hallucination scoring."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from kar.contracts.errors import DataError, QualityGateFailed
from tests.conftest import NOW
from validation import suites
from validation.gate import Validator
from validation.hallucination import score_answers, summarize
from validation.rows import FAILED

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[1]
INTERACTIONS = "user_id long, item_id long, rating double, label int, event_timestamp timestamp"


def _interactions(spark, rows):
    return spark.createDataFrame(rows, INTERACTIONS)


def good_interactions(spark, n=40):
    return _interactions(
        spark, [(u, u + 1, float(1 + u % 5), int(u % 5 > 2), datetime(2020, 1, 1 + u % 28)) for u in range(1, n + 1)]
    )


def validator(tmp_path):
    return Validator(out_dir=tmp_path / "validation", name="test")


def test_raw_interactions_good_frame_passes(spark, tmp_path):
    accepted, report = validator(tmp_path).validate(good_interactions(spark), suites.raw_interactions(now=NOW))
    assert report.passed, report.summary_line()
    assert report.rows == 40 and report.rejected == 0 and accepted.count() == 40


def test_raw_interactions_bad_rows_go_to_quarantine_with_failed_expectations(spark, tmp_path):
    bad = _interactions(
        spark,
        [
            (900, 1, 7.0, 1, datetime(2020, 1, 1)),  # rating out of range
            (None, 1, 3.0, 0, datetime(2020, 1, 1)),  # null user
            (901, 1, 3.0, 0, datetime(2099, 1, 1)),  # in the future
        ],
    )
    quarantine = tmp_path / "quarantine" / "raw" / "interactions"
    accepted, report = validator(tmp_path).validate(
        good_interactions(spark).unionByName(bad), suites.raw_interactions(now=NOW), quarantine=quarantine
    )
    assert report.passed and report.rejected == 3 and accepted.count() == 40
    rows = pd.read_parquet(quarantine)
    failed = dict(zip(rows["user_id"].fillna(0).astype(int), rows[FAILED].map(list), strict=True))
    assert failed[900] == ["expect_column_values_to_be_between(rating)"]
    assert failed[0] == ["expect_column_values_to_not_be_null(user_id)"]
    assert failed[901] == ["expect_column_values_to_be_between(event_timestamp)"]


def test_raw_interactions_batch_failure_names_expectation_and_observed_value(spark, tmp_path):
    all_positive = _interactions(spark, [(u, 1, 5.0, 1, datetime(2020, 1, 1)) for u in range(1, 11)])
    _, report = validator(tmp_path).validate(all_positive, suites.raw_interactions(now=NOW))
    assert report.failed == ["expect_column_mean_to_be_between(label)"]
    with pytest.raises(
        QualityGateFailed, match=r"raw.interactions failed: expect_column_mean_to_be_between\(label\) observed 1"
    ):
        report.raise_for_failures()


def test_too_many_bad_rows_fail_the_batch(spark, tmp_path):
    mostly_bad = _interactions(spark, [(u, 1, 9.0, 1, datetime(2020, 1, 1)) for u in range(1, 11)])
    _, report = validator(tmp_path).validate(mostly_bad, suites.raw_interactions(now=NOW))
    assert "expect_column_values_to_be_between(rating)" in report.failed
    assert report.rejected == 10


def test_raw_users_and_items(spark, tmp_path):
    v = validator(tmp_path)
    users = spark.createDataFrame([(1, "M", 25), (2, "F", 40)], "user_id long, gender string, age int")
    assert v.validate(users, suites.raw_users())[1].passed
    dup = spark.createDataFrame([(1, "M", 25), (1, "F", 40), (2, "F", 30)], "user_id long, gender string, age int")
    accepted, report = v.validate(dup, suites.raw_users(), quarantine=tmp_path / "q" / "users")
    assert report.failed == ["expect_column_values_to_be_unique(user_id)"]
    assert accepted.columns == dup.columns and [r.user_id for r in accepted.collect()] == [2]
    rejected = pd.read_parquet(tmp_path / "q" / "users").sort_values("age")
    assert rejected.columns.tolist() == [*dup.columns, FAILED]  # the window's helper column is not kept
    assert rejected[FAILED].map(list).tolist() == [["expect_column_values_to_be_unique(user_id)"]] * 2
    items = spark.createDataFrame([(1, "A (1995)", 1995), (2, "B", 2001)], "item_id long, title string, year int")
    assert v.validate(items, suites.raw_items())[1].passed
    bad_year = spark.createDataFrame([(1, "A", 1995), (2, "B", 3001)], "item_id long, title string, year int")
    _, report = v.validate(bad_year, suites.raw_items())
    assert report.passed and report.rejected == 1  # one bad row of two is within the 50% tolerance
    (outcome,) = [o for o in report.outcomes if o.unexpected]
    assert outcome.name == "expect_column_values_to_be_between(year)"


def _jobs_in(spark, group, action):
    """Spark jobs started by ``action`` (tagged with a job group)."""
    sc = spark.sparkContext
    sc.setJobGroup(group, group)
    try:
        action()
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return len(sc.statusTracker().getJobIdsForGroup(group))


def test_observed_check_counts_during_the_jobs_own_write_with_no_pass_of_its_own(spark, tmp_path):
    frame = good_interactions(spark).unionByName(
        _interactions(spark, [(900, 1, 7.0, 1, datetime(2020, 1, 1)), (None, 1, 3.0, 0, datetime(2020, 1, 1))])
    )
    v = validator(tmp_path)
    check = v.observe(frame, suites.raw_interactions(now=NOW), quarantine=tmp_path / "q")
    check.accepted.write.parquet(str(tmp_path / "written"))  # the job's own action
    assert pd.read_parquet(tmp_path / "written").shape[0] == 40  # the two bad rows never reach the table
    accepted, report = check.report()
    eager = validator(tmp_path / "eager").validate(frame, suites.raw_interactions(now=NOW))[1]
    assert [(o.name, o.success, o.observed) for o in report.outcomes] == [
        (o.name, o.success, o.observed) for o in eager.outcomes
    ]
    assert (report.rows, report.rejected, accepted.count()) == (42, 2, 40)
    assert sorted(map(tuple, pd.read_parquet(tmp_path / "q")[FAILED].map(list))) == [
        ("expect_column_values_to_be_between(rating)",),
        ("expect_column_values_to_not_be_null(user_id)",),
    ]
    assert check.report() is check.report()  # settled once: no second quarantine write


def test_a_clean_observed_batch_costs_no_spark_job_after_the_action(spark, tmp_path):
    check = validator(tmp_path).observe(good_interactions(spark), suites.raw_interactions(now=NOW))
    check.accepted.agg({"rating": "avg"}).first()
    assert _jobs_in(spark, "report-after-action", check.report) == 0
    assert check.report()[1].passed and check.report()[1].rows == 40


def test_a_check_whose_batch_nothing_read_counts_on_its_own(spark, tmp_path):
    check = validator(tmp_path).observe(good_interactions(spark), suites.raw_interactions(now=NOW))
    accepted, report = check.report()  # must not wait for an action that never comes
    assert report.passed and report.rows == 40 and accepted.count() == 40


def test_prepared_samples_before_cutoff_are_quarantined(spark, tmp_path):
    from validation.frames import samples_with_cutoffs

    schema = "user_id long, item_id long, label int, split string, event_timestamp timestamp"
    samples = spark.createDataFrame(
        [(1, 1, 1, "train", datetime(2020, 1, 5)), (1, 2, 0, "train", datetime(2020, 1, 1)),
         (2, 3, 1, "test", datetime(2020, 1, 1))],
        schema,
    )  # fmt: skip
    cutoffs = spark.createDataFrame([(1, datetime(2020, 1, 3))], "user_id long, knowledge_cutoff timestamp")
    accepted, report = validator(tmp_path).validate(samples_with_cutoffs(samples, cutoffs), suites.prepared_samples())
    assert report.rejected == 1 and accepted.count() == 2
    assert report.passed  # user 2 has no cutoff: not checked
    (bad,) = [o for o in report.outcomes if o.unexpected]
    assert bad.name == "expect_column_pair_values_a_to_be_greater_than_b(event_timestamp, knowledge_cutoff)"


def test_prepared_splits_catch_a_user_in_two_kar_splits(spark, tmp_path):
    from validation.frames import split_stats

    schema = "user_id long, label int, split string"
    rows = [(u, u % 2, "train") for u in range(1, 201)] + [(u, u % 2, "test") for u in range(201, 401)]
    v = validator(tmp_path)
    assert v.validate(split_stats(spark.createDataFrame(rows, schema)), suites.prepared_splits())[1].passed
    leaked = spark.createDataFrame([*rows, (1, 1, "test")], schema)
    _, report = v.validate(split_stats(leaked), suites.prepared_splits())
    assert report.failed == ["expect_column_values_to_be_between(users_in_several_splits)"]
    # the time protocol splits by time, so a user may be in several splits
    assert v.validate(split_stats(leaked), suites.prepared_splits(protocol="time"))[1].passed


def test_prepared_splits_catch_an_item_in_two_cold_item_splits(spark, tmp_path):
    from validation.frames import split_stats

    schema = "user_id long, item_id long, label int, split string"
    rows = [(u, i, (u + i) % 2, "train" if i <= 80 else "test") for u in range(1, 21) for i in range(1, 101)]
    v = validator(tmp_path)
    held_out = split_stats(spark.createDataFrame(rows, schema))
    assert v.validate(held_out, suites.prepared_splits(protocol="cold-items"))[1].passed
    leaked = split_stats(spark.createDataFrame([*rows, (1, 100, 1, "train")], schema))
    _, report = v.validate(leaked, suites.prepared_splits(protocol="cold-items"))
    assert report.failed == ["expect_column_values_to_be_between(items_in_several_splits)"]


def test_prompts_without_history_are_quarantined_and_over_budget_fails(spark, tmp_path):
    schema = "user_id long, prompt string, n_history int, over_budget boolean"
    good = [(u, f"user {u} watched …", 3, False) for u in range(1, 41)]
    v = validator(tmp_path)
    assert v.validate(spark.createDataFrame(good, schema), suites.prompts("user"))[1].passed
    bad = [*good, (99, "", 0, False)]
    accepted, report = v.validate(spark.createDataFrame(bad, schema), suites.prompts("user"))
    assert report.rejected == 1 and accepted.count() == 40
    over = [(u, "p", 3, u % 2 == 0) for u in range(1, 41)]
    _, report = v.validate(spark.createDataFrame(over, schema), suites.prompts("user"))
    assert report.failed == ["expect_column_values_to_be_in_set(over_budget)"]


def test_answers_refusals_and_short_texts_are_quarantined(spark, tmp_path):
    schema = "item_id long, text string"
    good = [(i, f"Item {i} is a 1995 drama about a long journey home.") for i in range(1, 21)]
    v = validator(tmp_path)
    assert v.validate(spark.createDataFrame(good, schema), suites.answers("item"))[1].passed
    bad = [*good, (90, "I'm sorry, I cannot help with that request."), (91, "ok"), (92, "As an AI model I think so.")]
    quarantine = tmp_path / "q"
    accepted, report = v.validate(spark.createDataFrame(bad, schema), suites.answers("item"), quarantine=quarantine)
    assert report.passed and accepted.count() == 20
    rows = pd.read_parquet(quarantine).set_index("item_id")[FAILED].map(list).to_dict()
    assert rows[90] == ["expect_column_values_to_not_match_regex_list(text)"]
    assert rows[91] == ["expect_column_value_lengths_to_be_between(text)"]
    assert rows[92] == ["expect_column_values_to_not_match_regex_list(text)"]


def test_answer_statuses_stop_on_more_than_5_percent_empty(spark, tmp_path):
    v = validator(tmp_path)
    ok = spark.createDataFrame([(i, "ok") for i in range(100)], "item_id long, status string")
    assert v.validate(ok, suites.answer_statuses("item"))[1].passed
    empty = spark.createDataFrame([(i, "empty" if i < 6 else "ok") for i in range(100)], "item_id long, status string")
    _, report = v.validate(empty, suites.answer_statuses("item"))
    assert report.failed == ["expect_column_values_to_not_be_in_set(status: empty)"]
    with pytest.raises(QualityGateFailed, match=r"status: empty\) observed 6 of 100 rows \(6.0%\)"):
        report.raise_for_failures()


def test_share_rules_are_measured_but_not_judged_on_a_handful_of_answers(spark, tmp_path):
    v = validator(tmp_path)
    statuses = "item_id long, status string"
    # 2 of 3 truncated (a --limit 3 smoke run of the small model) is reported, not a verdict on the server.
    few = spark.createDataFrame([(0, "truncated"), (1, "truncated"), (2, "ok")], statuses)
    _, report = v.validate(few, suites.answer_statuses("item"))
    assert report.passed
    truncated = next(o for o in report.outcomes if o.name.endswith("(status: truncated)"))
    assert "not judged below 20 rows" in str(truncated.observed)
    # From 20 rows on the same share fails.
    many = spark.createDataFrame([(i, "truncated" if i % 3 else "ok") for i in range(30)], statuses)
    assert v.validate(many, suites.answer_statuses("item"))[1].failed == [
        "expect_column_values_to_not_be_in_set(status: truncated)"
    ]


def test_importing_the_gates_from_python_c_does_not_exit_silently():
    # pyspark's Spark Connect check calls sys.exit(0) when __main__ has no __file__ and grpc is missing.
    code = "import validation.gate; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "imported"), done.stderr[-2000:]


@pytest.mark.parametrize(
    "expectation",
    [
        suites.E.ExpectColumnValuesToBeBetween(column="x", min_value=2, max_value=5),
        suites.E.ExpectColumnValuesToBeBetween(column="x", min_value=2, strict_min=True),
        suites.E.ExpectColumnValuesToNotBeNull(column="x"),
        suites.E.ExpectColumnValuesToBeInSet(column="x", value_set=[1, 3]),
        suites.E.ExpectColumnValuesToMatchRegex(column="s", regex="^a"),
        suites.E.ExpectColumnValuesToNotMatchRegexList(column="s", regex_list=["b$", "^c"]),
        suites.E.ExpectColumnValueLengthsToBeBetween(column="s", min_value=2, max_value=3),
        suites.E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="x", column_B="y", or_equal=True),
        suites.E.ExpectColumnValuesToBeUnique(column="x"),
    ],
    ids=lambda e: e.expectation_type,
)
def test_row_rules_count_what_great_expectations_counts(spark, tmp_path, expectation):
    frame = spark.createDataFrame(
        [(1, 0, "ab"), (2, 2, "b"), (3, 5, "abcd"), (None, 1, None), (6, None, "cab"), (5, 5, "a"), (5, 2, "ab")],
        "x long, y long, s string",
    )
    row_suite = suites._suite("raw", "t", [suites._row(expectation.copy(update={"id": None}))])
    batch_suite = suites._suite("raw", "t", [expectation.copy(update={"id": None})])
    v = validator(tmp_path)
    ours = v.validate(frame, row_suite)[1].outcomes[0]
    theirs = v.validate(frame, batch_suite)[1].outcomes[0]
    assert (ours.unexpected, ours.success) == (theirs.unexpected, theirs.success)


@pytest.mark.parametrize(
    "expectation",
    [
        suites.E.ExpectTableRowCountToBeBetween(min_value=1),
        suites.E.ExpectTableRowCountToBeBetween(min_value=2, max_value=4),
        suites.E.ExpectTableRowCountToBeBetween(max_value=5, strict_max=True),
        suites.E.ExpectColumnMeanToBeBetween(column="x", min_value=2, max_value=4),
        suites.E.ExpectColumnMeanToBeBetween(column="x", min_value=3.4, strict_min=True),
        suites.E.ExpectColumnMeanToBeBetween(column="y", max_value=1),
    ],
    ids=lambda e: f"{e.expectation_type}-{e.configuration.kwargs.get('min_value')}",
)
@pytest.mark.parametrize("rejecting", [False, True], ids=["clean", "with-rejected-rows"])
def test_table_rules_agree_with_great_expectations_on_the_accepted_rows(spark, tmp_path, expectation, rejecting):
    frame = spark.createDataFrame([(1, 0), (2, 2), (3, None), (None, 1), (6, 5)], "x long, y long")
    # A row rule rejecting x = 6 must take it out of the row count and the mean, as if it had never come.
    v = validator(tmp_path)  # first: building a suite needs a great_expectations context
    reject = [suites._row(suites.E.ExpectColumnValuesToBeBetween(column="x", max_value=5, mostly=0.5))]
    ours = suites._suite("raw", "t", [*reject[:rejecting], expectation.copy(update={"id": None})])
    accepted, report = v.validate(frame, ours)
    assert report.rejected == int(rejecting)
    (outcome,) = [o for o in report.outcomes if not o.row_level]
    theirs = v.validate_pandas(accepted.toPandas(), suites._suite("raw", "t", [expectation.copy(update={"id": None})]))
    assert (outcome.success, outcome.observed) == pytest.approx((theirs.passed, theirs.outcomes[0].observed))


def test_unsupported_row_level_expectation_is_a_clear_error(spark, tmp_path):
    suite = suites._suite("raw", "t", [suites._row(suites.E.ExpectColumnMeanToBeBetween(column="x", min_value=0))])
    with pytest.raises(DataError, match="cannot be checked per row"):
        validator(tmp_path).validate(spark.createDataFrame([(1,)], "x long"), suite)


def test_finish_writes_json_and_data_docs_with_every_expectation(spark, tmp_path):
    from validation.frames import split_stats

    v = validator(tmp_path)
    v.validate(good_interactions(spark), suites.raw_interactions(now=NOW))
    rows = [(u, u % 2, "train") for u in range(1, 201)]
    splits = split_stats(spark.createDataFrame(rows, "user_id long, label int, split string"))
    v.validate(splits, suites.prepared_splits())
    index = v.finish()
    assert index.is_file() and "raw.interactions" in index.read_text()
    assert (tmp_path / "validation" / "raw.interactions.json").is_file()
    # Our pass's verdicts are in the docs too, not only what great_expectations ran itself (the column types):
    (page,) = index.parent.glob("validations/raw/interactions/**/*.html")
    text = page.read_text()
    assert re.search(r"Evaluated Expectations</div></td><td[^>]*><div[^>]*>16<", text)
    assert "must be greater than or equal to" in text  # a row rule (rating, ids, event time)
    # A suite our pass judges alone still gets its page.
    assert list(index.parent.glob("validations/prepared/splits/**/*.html"))


def test_docs_only_on_failure_when_asked_and_stale_docs_removed_on_a_pass(tmp_path):
    def run(n_nonfinite: int) -> Path | None:
        v = Validator(out_dir=tmp_path / "validation", name="encode", docs_on_pass=False)
        stats = pd.DataFrame({"n_values": [4], "dim": [4], "n_nonfinite": [n_nonfinite], "norm": [1.0]})
        v.validate_pandas(stats, suites.embeddings("item"))
        return v.finish()

    failed = run(1)
    assert failed is not None and failed.is_file(), "a failure gets its Data Docs"
    assert run(0) is None and not failed.parent.exists(), "a pass removes the failed run's docs"
    assert (tmp_path / "validation" / "embeddings.item.json").is_file(), "JSON results are written either way"


def test_hallucination_scores_year_and_genre_claims(spark):
    items = spark.createDataFrame(
        [(1, 1995, ["Animation", "Children's"]), (2, 1982, ["Sci-Fi", "Thriller"]), (3, 2001, ["Drama"])],
        "item_id long, year int, genres array<string>",
    )
    answers = spark.createDataFrame(
        [
            (1, "An animated film for children, released in 1995."),  # year right, 2 of 2 genres right
            (2, "A 1999 science fiction drama."),  # year wrong, 1 of 2 genres right
            (3, "A quiet film about grief."),  # nothing checkable
        ],
        "item_id long, text string",
    )
    scored = {r["item_id"]: r for r in score_answers(answers, items).collect()}
    assert scored[1]["consistency"] == 1.0 and sorted(scored[1]["asserted_genres"]) == ["Animation", "Children's"]
    assert scored[2]["year_consistent"] is False and scored[2]["genre_precision"] == 0.5
    assert scored[2]["consistency"] == 0.25
    assert scored[3]["consistency"] is None
    report = summarize(score_answers(answers, items))
    assert (report.checkable, report.year_contradicted, report.genre_unsupported) == (2, 1, 1)
    assert report.consistency_rate == pytest.approx(0.625)
    assert "consistency 62.5%" in report.summary_line()


def test_prepare_gates_write_results_and_stop_on_batch_failure(spark, tmp_path, monkeypatch):
    from spark_jobs.datasets.synthetic import SyntheticConfig
    from spark_jobs.prepare import prepare
    from spark_jobs.splits import SplitConfig

    KAR = SplitConfig(protocol="kar")
    original = suites.prepared_splits
    config = SyntheticConfig(n_users=30, n_items=40, min_interactions=5, mean_interactions=10)
    summary = prepare(spark=spark, dataset="synthetic", out=tmp_path / "ok", synthetic=config, now=NOW)
    assert set(summary.validation) == {
        "raw.interactions", "raw.users", "raw.items", "prepared.samples", "prepared.splits"
    }  # fmt: skip
    assert all(r["passed"] for r in summary.validation.values())
    assert (tmp_path / "ok" / "validation" / "docs" / "prepare" / "index.html").is_file()

    assert not list((tmp_path / "ok").glob("*.unpublished"))

    # A stricter label-rate bound fails the per-split check: the job stops naming it; the tables that passed are
    # published, the failed samples stay aside where no later stage reads them.
    strict = suites.Thresholds(label_rate_max=0.3)
    monkeypatch.setattr(suites, "prepared_splits", lambda protocol: original(strict, protocol=protocol))
    with pytest.raises(
        DataError, match=r"prepared.splits failed: .*checked_label_rate\) observed.*samples.unpublished"
    ):
        prepare(spark=spark, dataset="synthetic", out=tmp_path / "bad", synthetic=config, now=NOW, split=KAR)
    bad = tmp_path / "bad"
    assert (bad / "interactions").is_dir() and (bad / "users").is_dir() and (bad / "samples.unpublished").is_dir()
    assert not (bad / "samples").exists()
    assert not json.loads((tmp_path / "bad" / "validation" / "prepared.splits.json").read_text())["passed"]


def test_a_profile_batch_failing_after_its_write_stays_unpublished(spark, tmp_path, monkeypatch):
    from spark_jobs.datasets.synthetic import SyntheticConfig
    from spark_jobs.prepare import prepare

    original = suites.raw_users
    # No age passes: every user breaks the row rule, more than its 50% tolerance, so the batch fails.
    monkeypatch.setattr(suites, "raw_users", lambda **kw: original(suites.Thresholds(age_min=500, age_max=600), **kw))
    config = SyntheticConfig(n_users=30, n_items=40, min_interactions=5, mean_interactions=10)
    out = tmp_path / "prepared"
    with pytest.raises(
        DataError, match=r"raw.users failed: expect_column_values_to_be_between\(age\).*users.unpublished"
    ):
        prepare(spark=spark, dataset="synthetic", out=out, synthetic=config, now=NOW)
    assert (out / "interactions").is_dir() and not (out / "users").exists()
    assert pd.read_parquet(out / "quarantine" / "raw" / "users").shape[0] == 30  # counted during the write


VECTORS = "entity_id long, as_of timestamp, dim int, vector array<float>"


def _vectors(spark, vectors):
    return spark.createDataFrame([(i, datetime(2020, 1, 1), 3, v) for i, v in enumerate(vectors, start=1)], VECTORS)


def test_embeddings_suite_catches_nan_wrong_dimension_and_collapse(spark, tmp_path):
    from validation.frames import vector_spread, vector_stats

    v = validator(tmp_path)
    spread = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.8, 0.0]]
    good = _vectors(spark, spread)
    assert v.validate(vector_stats(good), suites.embeddings("item"))[1].passed
    _, report = v.validate(vector_spread(good), suites.embedding_spread("item"))
    assert report.passed and report.outcomes[0].observed == pytest.approx((0.6 + 0.8) * 2 / 12)
    bad = _vectors(spark, [*spread, [float("nan"), 0.0, 1.0], [1.0, 0.0]])
    _, report = v.validate(vector_stats(bad), suites.embeddings("item"))
    assert report.failed == [
        "expect_column_pair_values_to_be_equal(n_values, dim)",
        "expect_column_values_to_be_between(n_nonfinite)",
        "expect_column_values_to_be_between(norm)",  # a NaN norm is out of range too
    ]
    collapsed = _vectors(spark, [[1.0, 0.01 * i, 0.0] for i in range(5)])
    _, report = v.validate(vector_spread(collapsed), suites.embedding_spread("item"))
    assert report.failed == ["expect_column_max_to_be_between(mean_pairwise_cosine)"]


def test_features_suite_checks_freshness_and_null_vectors(spark, tmp_path):
    v = validator(tmp_path)
    table = _vectors(spark, [[1.0, 0.0, 0.0]] * 40)
    newest = datetime(2020, 6, 1, tzinfo=UTC)
    assert v.validate(table, suites.features("vectors/item", newest_event=newest))[1].passed
    stale = suites.features("vectors/item", newest_event=datetime(2022, 1, 1, tzinfo=UTC))
    assert v.validate(table, stale)[1].failed == ["expect_column_max_to_be_between(as_of)"]
    nulls = _vectors(spark, [[1.0, 0.0, 0.0]] * 30 + [None] * 10)
    _, report = v.validate(nulls, suites.features("vectors/item", newest_event=newest))
    assert report.failed == ["expect_column_values_to_not_be_null(vector)"]


def test_training_suite_checks_knowledge_join_coverage(tmp_path):
    v = validator(tmp_path)
    frame = pd.DataFrame(
        {"label": [0, 1] * 10, "split": ["train"] * 20, "has_user_knowledge": [True] * 20,
         "has_item_knowledge": [True] * 5 + [False] * 15}
    )  # fmt: skip
    report = v.validate_pandas(frame, suites.training())
    assert report.failed == ["expect_column_mean_to_be_between(has_item_knowledge)"]
    assert v.validate_pandas(frame, suites.training(knowledge=("user",))).passed


def test_training_suite_holds_kerec_to_its_own_coverage_bar(tmp_path):
    v = validator(tmp_path)
    # 10% of rows join LLM-KERec knowledge: below the 30% asked of user/item knowledge, above kerec's 5%.
    kerec = [True] * 2 + [False] * 18
    frame = pd.DataFrame({"label": [0, 1] * 10, "split": ["train"] * 20, "has_kerec_knowledge": kerec})
    assert v.validate_pandas(frame, suites.training(knowledge=("kerec",))).passed
    frame["has_kerec_knowledge"] = False
    report = v.validate_pandas(frame, suites.training(knowledge=("kerec",)))
    assert report.failed == ["expect_column_mean_to_be_between(has_kerec_knowledge)"]


def test_kerec_judgements_fail_when_most_verdicts_are_unreadable(spark, tmp_path):
    v = validator(tmp_path)
    statuses = "source string, status string"
    readable = spark.createDataFrame([(f"e{i}", "unparsed" if i < 10 else "ok") for i in range(30)], statuses)
    assert v.validate(readable, suites.kerec_judgements())[1].passed
    broken = spark.createDataFrame([(f"e{i}", "unparsed" if i < 20 else "ok") for i in range(30)], statuses)
    assert v.validate(broken, suites.kerec_judgements())[1].failed == [
        "expect_column_values_to_not_be_in_set(status: unparsed)"
    ]


def test_kerec_graph_and_texts_reject_bad_rows(spark, tmp_path):
    v = validator(tmp_path)
    at = datetime(2020, 1, 1)
    graph = spark.createDataFrame(
        [("a", "b", True, 0.9, at), ("a", "c", False, 1.5, at), ("a", "d", None, 0.2, at), ("a", "e", True, 0.7, None)],
        "source string, target string, complementary boolean, confidence double, as_of timestamp",
    )
    _, report = v.validate(graph, suites.kerec_graph())
    assert report.rejected == 3
    texts = spark.createDataFrame(
        [(1, at, "jazz", 1), (2, at, "a, b", 2), (2, at, "c", 1), (3, at, "x", 0), (4, at, "y", 13), (5, None, "z", 1)],
        "item_id long, as_of timestamp, text string, n_targets int",
    )
    accepted, report = v.validate(texts, suites.kerec_knowledge(), quarantine=tmp_path / "q")
    # A one-word text is knowledge; a repeated item, no or too many targets and no time are not.
    assert sorted(r.item_id for r in accepted.collect()) == [1]
    reasons = pd.read_parquet(tmp_path / "q").groupby("item_id")[FAILED].first().map(list).to_dict()
    assert reasons[2] == ["expect_column_values_to_be_unique(item_id)"]
    assert reasons[3] == reasons[4] == ["expect_column_values_to_be_between(n_targets)"]
    assert reasons[5] == ["expect_column_values_to_not_be_null(as_of)"]


def test_answers_stage_gates_kerec_and_embeddings_stage_finds_its_vectors(spark, tmp_path):
    from validation import stages

    knowledge = tmp_path / "knowledge"
    at = pd.Timestamp("2020-01-01")
    answers = [f'{{"entities": ["jazz", "film noir {i}"]}}' for i in range(25)]
    _write(pd.DataFrame({"item_id": range(25), "status": "ok", "text": answers}), knowledge / "kerec_entity_answers")
    verdicts = ['{"complementary": "yes", "reason": "Both are moody."}'] * 5 + ["maybe, who knows really"] * 20
    pairs = {"source": "jazz", "target": [f"t{i}" for i in range(25)], "support": 2, "as_of": at, "status": "ok"}
    _write(pd.DataFrame({**pairs, "text": verdicts}), knowledge / "kerec_pairs")
    edge = {"source": ["jazz"], "target": ["t0"], "complementary": [True], "confidence": [1.0], "as_of": [at]}
    _write(pd.DataFrame(edge), knowledge / "kerec_graph")
    text = {"item_id": [1], "as_of": [at], "status": "ok", "text": ["t0"], "n_targets": [1]}
    _write(pd.DataFrame(text), knowledge / "kerec")
    v = validator(tmp_path)
    stages.kerec_answers(spark, knowledge, v)
    failed = {r.suite: r.failed for r in v.reports if not r.passed}
    # 20 of 25 answered pairs carry no readable verdict: the model, not the pairs, is broken.
    assert failed == {"answers.kerec_judgements": ["expect_column_values_to_not_be_in_set(status: unparsed)"]}
    assert {r.suite for r in v.reports} >= {"answers.entity", "answers.pair", "answers.kerec_graph", "answers.kerec"}

    vectors = tmp_path / "vectors"
    for kind in ("user", "item", "kerec"):
        rows = [(i, kind, at, "m", 3, [1.0 if j == i % 3 else 0.0 for j in range(3)], 1, "h") for i in range(4)]
        columns = ["entity_id", "kind", "as_of", "model", "dim", "vector", "n_chunks", "text_hash"]
        _write(pd.DataFrame(rows, columns=columns), vectors / kind)
    v = validator(tmp_path)
    stages.embeddings(spark, tmp_path, v)
    assert {r.suite for r in v.reports} == {
        f"embeddings.{kind}{part}" for kind in ("user", "item", "kerec") for part in ("", "_spread")
    }


def _write(frame: pd.DataFrame, folder: Path) -> None:
    """One parquet part as Spark writes them (microsecond timestamps: Spark refuses pandas' nanoseconds)."""
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-0.parquet", coerce_timestamps="us")


def test_stage_lines_one_per_stage_in_pipeline_order(spark, tmp_path):
    from validation.stages import stage_lines

    v = validator(tmp_path)
    v.validate(good_interactions(spark), suites.raw_interactions(now=NOW))
    all_positive = _interactions(spark, [(u, 1, 5.0, 1, datetime(2020, 1, 1)) for u in range(1, 11)])
    v.validate(all_positive, suites.raw_interactions(now=NOW))
    v.validate_pandas(pd.DataFrame({"label": [0, 1], "split": ["train", "test"]}), suites.training(knowledge=()))
    lines = stage_lines([r.as_dict() for r in reversed(v.reports)])
    assert lines == [
        "validation raw: FAILED (expect_column_mean_to_be_between(label)), 1/2 suites, 50 rows checked, "
        "0 rejected by row rules",
        "validation training: passed, 1/1 suites, 2 rows checked, 0 rejected by row rules",
    ]


def test_kar_validate_cli_prints_a_line_per_suite_and_exits_1_on_failure(spark, tmp_path):
    from typer.testing import CliRunner

    from kar.cli import app

    data = tmp_path / "data"
    good_interactions(spark).write.parquet(str(data / "interactions"))
    spark.createDataFrame([(1, "M", 25)], "user_id long, gender string, age int").write.parquet(str(data / "users"))
    spark.createDataFrame([(1, "A", 1995), (1, "B", 1999)], "item_id long, title string, year int").write.parquet(
        str(data / "items")
    )
    result = CliRunner().invoke(app, ["validate", "raw", "--data", str(data), "--master", "local[2]"])
    assert result.exit_code == 1, result.output
    assert "validation raw.interactions v2: passed" in result.output
    assert "validation raw.items v2: FAILED" in result.output
    assert "expect_column_values_to_be_unique(item_id)" in result.output
    assert (data / "validation" / "docs" / "validate-raw" / "index.html").is_file()
    assert json.loads((data / "validation" / "raw.items.json").read_text())["passed"] is False
    unknown = CliRunner().invoke(app, ["validate", "nope", "--data", str(data)])
    assert unknown.exit_code != 0 and "unknown stage 'nope'" in unknown.output


def test_prepare_without_gates_builds_no_suite(spark, tmp_path):
    from spark_jobs.prepare import _Gates

    def build():  # building a suite needs great_expectations' context, which a run without gates never makes
        raise AssertionError("a suite was built with the gates off")

    gates = _Gates(tmp_path, enabled=False)
    frame = spark.createDataFrame([(1,)], "x long")
    check = gates.observe(frame, build, table="t")
    assert check.accepted is frame and gates.settle(check) == (frame, None)
    gates.publish(check, tmp_path / "t", shape=lambda f: f)
    assert (tmp_path / "t").is_dir() and not (tmp_path / "t.unpublished").exists()  # no staging without gates
    gates.check_frame(frame, build)
    assert gates.finish() == {}


def test_the_numpy_vector_frames_equal_the_spark_ones(spark):
    """The embeddings gate reads small tables into numpy: same stats and spread as its Spark path."""
    import numpy as np
    import pyarrow as pa

    from validation.frames import vector_spread, vector_spread_frame, vector_stats, vector_stats_frame

    rng = np.random.default_rng(3)
    vectors = [list(rng.standard_normal(4).astype(np.float32)) for _ in range(6)]
    vectors[2] = [float("nan"), 1.0, 2.0, 3.0]  # non-finite
    vectors[4] = [1.0, 2.0]  # another length
    vectors[5] = []
    table = pa.table({"vector": pa.array(vectors, pa.list_(pa.float32())), "dim": pa.array([4] * 6, pa.int32())})
    frame = spark.createDataFrame(table.to_pandas())
    ours = vector_stats_frame(table)
    theirs = vector_stats(frame).toPandas()
    assert ours["n_values"].tolist() == theirs["n_values"].tolist()
    assert ours["n_nonfinite"].tolist() == theirs["n_nonfinite"].tolist() == [0, 0, 1, 0, 0, 0]
    finite = ours["n_nonfinite"] == 0
    np.testing.assert_allclose(ours["norm"][finite], theirs["norm"][finite], rtol=1e-5)
    kept = table.filter(pa.array([i not in (2, 4) for i in range(6)]))  # the spread of equal-length finite rows
    spread = vector_spread_frame(kept).iloc[0]
    reference = vector_spread(spark.createDataFrame(kept.to_pandas())).first()
    assert spread["vectors"] == reference["vectors"] == 3
    assert spread["mean_pairwise_cosine"] == pytest.approx(reference["mean_pairwise_cosine"], rel=1e-5)


@pytest.mark.parametrize(
    "statuses",
    [
        ["ok"] * 94 + ["empty"] * 6,  # fails: 6% empty
        ["truncated", "truncated", "ok"],  # measured, not judged below 20 rows
        ["truncated" if i % 3 else "ok" for i in range(30)] + ["over_budget", "missing"],
    ],
)
def test_status_gate_from_counts_matches_the_gate_over_the_joined_rows(spark, tmp_path, monkeypatch, statuses):
    """The knowledge job gates a refresh-sized run's statuses on pandas rebuilt from their counts: same verdicts."""
    from collections import Counter

    import spark_jobs.knowledge.job as job

    joined = spark.createDataFrame([(i, s) for i, s in enumerate(statuses)], "item_id long, status string")
    counts = dict(Counter(statuses))
    outcomes = []
    for small in (True, False):
        monkeypatch.setattr(job, "SMALL_STATUS_ROWS", 50_000 if small else 0)
        v = validator(tmp_path)
        job.gate_statuses(v, joined, counts, kind="item")
        (report,) = v.reports
        outcomes.append(sorted((o.name, o.success, str(o.observed)) for o in report.outcomes))
    assert outcomes[0] == outcomes[1]
