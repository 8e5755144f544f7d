"""``kar serve``: auth, limits, fallback for unknown ids, metrics, and scores equal to offline scoring.

Most tests drive the FastAPI app in process (``TestClient``) over the real scorer and Feast online store;
the last ones start ``kar serve`` as its own process (and with ``--processes 2``), as a user does.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ctr import load_ranker
from kar.cli import app as cli_app
from kar.contracts.errors import KarError
from kar.processes import group_alive, pid_alive
from kar.serving import store
from kar.serving.scorer import OnlineScorer
from kar.serving.service import TOKEN_ENV, ServiceLimits, ServiceProcess, create_app, is_loopback, resolve_token

pytestmark = pytest.mark.spark
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN = 987_654


@pytest.fixture(scope="module")
def scorer(knowledge_run: dict) -> OnlineScorer:
    feature_store = store.materialize(data_dir=knowledge_run["root"])
    return OnlineScorer.from_run(model_dir=knowledge_run["run"], store=feature_store)


@pytest.fixture
def client(scorer: OnlineScorer) -> TestClient:
    limits = ServiceLimits(max_candidates=20, max_body_bytes=4096)
    with TestClient(create_app(scorer=scorer, token=TOKEN, limits=limits)) as test_client:
        yield test_client


def _known(knowledge_run: dict) -> tuple[int, list[int]]:
    frame = knowledge_run["frame"]
    return int(frame["user_id"].iloc[0]), sorted(int(i) for i in frame["item_id"].unique())[:5]


def _metric(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)]
    return sum(values)


def _metrics(client: TestClient, headers: dict[str, str] | None = None) -> str:
    response = client.get("/metrics", headers=AUTH if headers is None else headers)
    assert response.status_code == 200
    return response.text


def _increase(before: str, after: str, name: str) -> float:
    """How much a metric grew between two scrapes (the test's own requests only)."""
    return _metric(after, name) - _metric(before, name)


def test_rank_without_or_with_a_wrong_token_is_401(client: TestClient, knowledge_run: dict) -> None:
    user, items = _known(knowledge_run)
    body = {"user_id": user, "item_ids": items}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        response = client.post("/rank", json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/metrics").status_code == 401
    assert client.get("/healthz").status_code == 200  # probes need no token


def test_malformed_json_and_bad_fields_are_422_naming_the_problem(client: TestClient) -> None:
    response = client.post("/rank", content=b'{"user_id": 1, "item_ids": [1, 2', headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    cases = {
        "missing": ({"item_ids": [1]}, ["user_id"]),
        "not an id": ({"user_id": 1.5, "item_ids": [1]}, ["user_id"]),
        "empty": ({"user_id": 1, "item_ids": []}, ["item_ids"]),
        "too many": ({"user_id": 1, "item_ids": list(range(21))}, ["item_ids"]),
        "duplicate": ({"user_id": 1, "item_ids": [3, 3]}, ["item_ids"]),
        "extra key": ({"user_id": 1, "item_ids": [1], "userid": 2}, ["userid"]),
    }
    for case, (body, loc) in cases.items():
        response = client.post("/rank", json=body, headers=AUTH)
        assert response.status_code == 422, case
        assert response.json()["detail"][0]["loc"] == loc, case
        assert "input" not in response.json()["detail"][0]  # the request is not echoed back
    # Text ids are a team's own; this store's join key is int64, so only digits are ids here.
    response = client.post("/rank", json={"user_id": "abc", "item_ids": [1]}, headers=AUTH)
    assert response.status_code == 422 and "join key user_id holds int64 ids" in response.json()["detail"]
    assert client.post("/rank", json={"user_id": "1", "item_ids": ["1"]}, headers=AUTH).status_code == 200
    response = client.post("/rank", json={"user_id": 1, "item_ids": [1], "context": {"device": "tv"}}, headers=AUTH)
    assert response.status_code == 422
    assert "unknown field 'device'" in response.json()["detail"] and "hist_item_ids" in response.json()["detail"]


def test_oversized_body_is_413_whether_declared_or_streamed(client: TestClient) -> None:
    big = json.dumps({"user_id": 1, "item_ids": [1], "context": {"hist_item_ids": list(range(2000))}}).encode()
    assert len(big) > 4096
    assert client.post("/rank", content=big, headers=AUTH).status_code == 413

    def chunks():  # no Content-Length: the limit must hold while reading
        yield big[:3000]
        yield big[3000:]

    assert client.post("/rank", content=chunks(), headers=AUTH).status_code == 413


def test_unknown_user_and_items_fall_back_instead_of_failing(client: TestClient, knowledge_run: dict) -> None:
    _user, items = _known(knowledge_run)
    before = _metrics(client)
    response = client.post("/rank", json={"user_id": UNKNOWN, "item_ids": [items[0], UNKNOWN]}, headers=AUTH)
    assert response.status_code == 200
    ranked = {i["item_id"]: i for i in response.json()["items"]}
    assert response.json()["user"] == {"fallback": True, "has_knowledge": False}
    assert ranked[UNKNOWN]["fallback"] is True and ranked[UNKNOWN]["has_knowledge"] is False
    assert ranked[items[0]]["fallback"] is False
    assert all(0.0 < i["score"] < 1.0 for i in ranked.values())
    after = _metrics(client)
    assert _increase(before, after, 'kar_rank_fallbacks_total{entity="user"}') == 1
    assert _increase(before, after, 'kar_rank_fallbacks_total{entity="item"}') == 1


def test_items_come_back_sorted_with_knowledge_flags_and_timing(client: TestClient, knowledge_run: dict) -> None:
    user, items = _known(knowledge_run)
    response = client.post("/rank", json={"user_id": user, "item_ids": items}, headers=AUTH)
    assert response.status_code == 200
    ranked = response.json()["items"]
    assert sorted(i["item_id"] for i in ranked) == items
    assert [i["score"] for i in ranked] == sorted((i["score"] for i in ranked), reverse=True)
    # The fixture's first item (by id) has no knowledge vector; the others do.
    assert {i["item_id"]: i["has_knowledge"] for i in ranked} == {i: i != items[0] for i in items}
    stages = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    assert set(stages) == {"fetch", "model"} and all(float(ms) > 0 for ms in stages.values())


def test_service_scores_equal_offline_scores(client: TestClient, knowledge_run: dict) -> None:
    """The service's score for (user, item, history) equals the ranker's offline score of that training row,
    whose features came from the offline store (raw vectors through the adaptor)."""
    frame = knowledge_run["frame"]
    ranker = load_ranker(knowledge_run["run"])
    rows = frame[frame["has_user_knowledge"] | (frame["user_id"] == knowledge_run["no_user"])].head(40)
    assert (~rows["has_item_knowledge"]).any() and (~rows["has_user_knowledge"]).any()
    offline = ranker.predict(rows)
    served = []
    for _, row in rows.iterrows():
        body = {
            "user_id": int(row["user_id"]),
            "item_ids": [int(row["item_id"])],
            "context": {"hist_item_ids": [int(i) for i in row["hist_item_ids"]]},
        }
        response = client.post("/rank", json=body, headers=AUTH)
        assert response.status_code == 200
        served.append(response.json()["items"][0]["score"])
    np.testing.assert_allclose(served, offline, atol=1e-5)


def test_a_request_over_the_timeout_is_504(scorer: OnlineScorer, knowledge_run: dict, monkeypatch) -> None:
    user, items = _known(knowledge_run)
    # Fault injection: a scorer stalled on I/O. A fast request against a tiny timeout is not enough: a scoring
    # thread holding the GIL can finish before the event loop runs the timer, and asyncio then returns the result.
    # The stall ends only when the test releases it, after the 504: no race between two sleeps.
    rank, release = scorer.rank, threading.Event()

    def stalled_rank(**kwargs):
        release.wait(timeout=60)
        return rank(**kwargs)

    monkeypatch.setattr(scorer, "rank", stalled_rank)
    limits = ServiceLimits(timeout_s=0.1)
    with TestClient(create_app(scorer=scorer, token=None, limits=limits)) as client:
        before = _metrics(client, headers={})
        response = client.post("/rank", json={"user_id": user, "item_ids": items})
        release.set()
        assert response.status_code == 504 and "not ranked within" in response.json()["detail"]
        after = _metrics(client, headers={})
    assert _increase(before, after, 'kar_rank_requests_total{code="504"}') == 1


def test_metrics_count_requests_by_status_and_latency(client: TestClient, knowledge_run: dict) -> None:
    user, items = _known(knowledge_run)
    before = _metrics(client)
    client.post("/rank", json={"user_id": user, "item_ids": items}, headers=AUTH)
    client.post("/rank", json={"user_id": user, "item_ids": items})
    after = _metrics(client)
    assert _increase(before, after, 'kar_rank_requests_total{code="200"}') == 1
    assert _increase(before, after, 'kar_rank_requests_total{code="401"}') == 1
    assert _increase(before, after, "kar_rank_request_seconds_count") == 2
    assert _increase(before, after, 'kar_rank_stage_seconds_count{stage="fetch"}') == 1
    assert _increase(before, after, 'kar_rank_stage_seconds_count{stage="model"}') == 1
    assert _increase(before, after, "kar_rank_candidates_total") == len(items)
    assert "kar_rank_request_seconds_bucket" in after


def test_token_policy() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert resolve_token(no_auth=True, host="127.0.0.1") is None
    with pytest.raises(KarError, match=r"--no-auth is only allowed on a loopback address"):
        resolve_token(no_auth=True, host="0.0.0.0")


def test_token_from_env_or_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(KarError, match=rf"no token: set \${TOKEN_ENV} or pass --token-file"):
        resolve_token()
    monkeypatch.setenv(TOKEN_ENV, " from-env \n")
    assert resolve_token() == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token(token_file=tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(KarError, match=r"empty: the token file is empty"):
        resolve_token(token_file=tmp_path / "empty")
    with pytest.raises(KarError, match=r"missing: cannot read the token file"):
        resolve_token(token_file=tmp_path / "missing")


def test_cli_refuses_no_auth_on_a_public_address(knowledge_run: dict) -> None:
    args = ["serve", "--model", str(knowledge_run["run"]), "--data", str(knowledge_run["root"])]
    result = CliRunner().invoke(cli_app, [*args, "--no-auth", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "--no-auth is only allowed on a loopback address" in result.output


def test_scorer_refuses_a_run_that_is_not_a_torch_ranker(knowledge_run: dict, tmp_path: Path) -> None:
    feature_store = store.open_store(data_dir=knowledge_run["root"])
    with pytest.raises(KarError, match=r"no config\.yaml; pass a run folder written by `kar train`"):
        OnlineScorer.from_run(model_dir=tmp_path, store=feature_store)


@pytest.mark.parametrize("online", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_kar_serve_process_ranks_like_the_in_process_scorer(
    knowledge_run: dict, scorer: OnlineScorer, online: str, request: pytest.FixtureRequest
) -> None:
    redis = None
    if online == "redis":
        server = request.getfixturevalue("redis_server")
        store.materialize(data_dir=knowledge_run["root"], online_store=server.feast_config())
        redis = server.connection_string
    user, items = _known(knowledge_run)
    body = {"user_id": user, "item_ids": [*items, UNKNOWN]}
    expected = {i.item_id: i.score for i in scorer.rank(**body).items}
    with ServiceProcess(model_dir=knowledge_run["run"], data_dir=knowledge_run["root"], redis=redis) as service:
        assert httpx.post(f"{service.url}/rank", json=body).status_code == 401
        response = httpx.post(f"{service.url}/rank", json=body, headers=service.headers, timeout=30)
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{service.url}/metrics", headers=service.headers).text
        health = httpx.get(f"{service.url}/healthz").json()
    served = {i["item_id"]: i["score"] for i in response.json()["items"]}
    assert served.keys() == expected.keys()
    np.testing.assert_allclose([served[i] for i in expected], list(expected.values()), atol=1e-5)
    assert _metric(metrics, 'kar_rank_requests_total{code="200"}') == 1
    assert health["auth"] is True and health["service"] == "ranking_serving"


def test_kar_serve_processes_answer_from_distinct_pids_and_stop_together(
    knowledge_run: dict, scorer: OnlineScorer
) -> None:
    """`kar serve --processes 2`: two worker processes behind one port, each with its own model (same scores),
    and stop() ends the service with every worker."""
    user, items = _known(knowledge_run)
    body = {"user_id": user, "item_ids": items}
    expected = {i.item_id: i.score for i in scorer.rank(**body).items}
    with ServiceProcess(model_dir=knowledge_run["run"], data_dir=knowledge_run["root"], processes=2) as service:
        group = service.group
        # A new connection per probe: whichever worker accepts it answers. start() saw both; so must we.
        seen: set[int] = set()
        for _ in range(200):
            health = httpx.get(f"{service.url}/healthz", timeout=10).json()
            seen.add(health["pid"])
            if len(seen) == 2:
                break
        assert len(seen) == 2 and seen == service.pids, (seen, service.pids)
        assert health["processes"] == 2 and health["auth"] is True

        def rank(_: int) -> httpx.Response:
            return httpx.post(f"{service.url}/rank", json=body, headers=service.headers, timeout=30)

        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(pool.map(rank, range(12)))
    for response in responses:
        assert response.status_code == 200, response.text
        served = {i["item_id"]: i["score"] for i in response.json()["items"]}
        np.testing.assert_allclose([served[i] for i in expected], list(expected.values()), atol=1e-5)
    assert group is not None and not group_alive(group)
    assert not [pid for pid in seen if pid_alive(pid)]
