"""The history in a real Redis: order, filters, the cursor, expiry, and GET /executions end to end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from celery import Celery

from executor.history import HistoryQuery, Position
from executor.names import HISTORY
from executor.store import Store
from tests.service.conftest import flushed, post, wait_until

pytestmark = [pytest.mark.service]

DB = 5  # see the table in tests/service/conftest.py


@pytest.fixture
def store() -> Iterator[Store]:
    store = Store(flushed(DB), ttl_s=120, history_size=3)
    yield store
    store.close()


def alive(store: Store, incarnation: str = "w:1:a") -> str:
    store.beat(incarnation, {"name": "celery@w", "instance": "w"}, {})
    return incarnation


def run(
    store: Store,
    *,
    language: str = "python",
    status: str = "success",
    worker: str = "w1",
    owner: str = "",
    finish: bool = True,
) -> str:
    """One execution through the store's real transitions: submit, claim, finish."""
    inc = alive(store)
    execution_id = str(uuid.uuid4())
    store.submit(execution_id, language, max_queue=100, owner=owner, request="{}")
    if finish:
        store.claim(execution_id, language, inc, worker)
        payload = {
            "id": execution_id,
            "status": status,
            "language": language,
            "worker": worker,
            "stdout": "secret output",
            "stderr": "err",
            "files": [{"path": "a", "size": 1, "content_base64": "YQ=="}],
            "duration_ms": 5,
        }
        assert store.finish(execution_id, inc, payload)
    return execution_id


def ids(store: Store, **query: Any) -> list[str]:
    return [item["id"] for item in store.history(HistoryQuery(**query)).items]


def test_the_history_is_newest_first_and_items_carry_no_output(store: Store):
    made = [run(store) for _ in range(4)]
    pending = run(store, finish=False)
    page = store.history(HistoryQuery())
    assert [item["id"] for item in page.items] == [pending, *reversed(made)]
    assert page.next is None
    assert page.items[0] == {
        "id": pending,
        "status": "queued",
        "language": "python",
        "created_at": page.items[0]["created_at"],
    }
    for item in page.items[1:]:
        assert item["status"] == "success" and item["duration_ms"] == 5
        assert not {"stdout", "stderr", "files"} & set(item)


def test_a_large_output_is_kept_apart_from_the_item(store: Store):
    inc = alive(store)
    execution_id = str(uuid.uuid4())
    store.submit(execution_id, "python", max_queue=10, request="{}")
    store.claim(execution_id, "python", inc, "w1")
    payload = {"id": execution_id, "status": "success", "stdout": "x" * 5000, "stderr": ""}
    assert store.finish(execution_id, inc, payload)
    # The record keeps the item apart, so a page never reads the output.
    assert store.redis.hget(f"executor:execution:{execution_id}", "summary")
    small = run(store)
    assert not store.redis.hget(f"executor:execution:{small}", "summary")
    items = store.history(HistoryQuery()).items
    assert [i["id"] for i in items] == [small, execution_id]
    assert items[1] == {"id": execution_id, "status": "success"}
    assert items[0]["duration_ms"] == 5 and "stdout" not in items[0]


def test_each_filter_selects_its_executions(store: Store):
    py_ok = run(store, language="python", status="success", worker="w1")
    sh_err = run(store, language="bash", status="error", worker="w2")
    py_err = run(store, language="python", status="error", worker="w2", owner="k1")
    queued = run(store, language="bash", finish=False, owner="k1")
    assert ids(store, filters={"status": "error"}) == [py_err, sh_err]
    assert ids(store, filters={"status": "queued"}) == [queued]
    assert ids(store, filters={"language": "bash"}) == [queued, sh_err]
    assert ids(store, filters={"worker": "w1"}) == [py_ok]
    assert ids(store, filters={"owner": "k1"}) == [queued, py_err]
    assert ids(store, filters={"status": "error", "language": "python"}) == [py_err]
    assert ids(store, filters={"status": "success", "worker": "w2"}) == []
    assert ids(store, filters={"language": "cobol"}) == []
    # A record leaves the pending indexes as it moves on.
    assert ids(store, filters={"status": "running"}) == []


def test_since_and_until_bound_the_creation_time(store: Store):
    old = run(store)
    time.sleep(0.05)
    middle = run(store)
    time.sleep(0.05)
    new = run(store)
    created = {
        i: float(store.redis.hget(f"executor:execution:{i}", "created"))  # type: ignore[arg-type]
        for i in (old, middle, new)
    }
    assert ids(store, since=created[middle]) == [new, middle]
    assert ids(store, until=created[middle]) == [middle, old]
    assert ids(store, since=created[middle], until=created[middle]) == [middle]


def test_the_cursor_walks_every_page_once(store: Store):
    made = [run(store, status="error" if i % 2 else "success") for i in range(7)]
    for query, expected in (({}, made), ({"status": "error"}, made[1::2])):
        seen: list[str] = []
        after: Position | None = None
        pages = 0
        while True:
            page = store.history(HistoryQuery(filters=query, limit=2, after=after))
            seen += [item["id"] for item in page.items]
            pages += 1
            if page.next is None:
                break
            after = page.next
        assert seen == list(reversed(expected))
        assert pages == (len(expected) + 1) // 2  # no empty last page


def test_equal_creation_times_are_paged_without_loss(store: Store):
    # Synthetic entries of one score: the cursor's id breaks the tie.
    made = [str(uuid.uuid4()) for _ in range(5)]
    now = time.time()
    for execution_id in made:
        store.redis.hset(
            f"executor:execution:{execution_id}",
            mapping={"id": execution_id, "status": "queued", "created": repr(now)},
        )
        store.index_history(execution_id)
    seen: list[str] = []
    after = None
    while True:
        page = store.history(HistoryQuery(limit=2, after=after))
        seen += [item["id"] for item in page.items]
        if (after := page.next) is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)


def test_a_lost_execution_is_listed_as_internal_error(store: Store):
    inc = alive(store, "w:9:lost")
    execution_id = str(uuid.uuid4())
    store.submit(execution_id, "python", max_queue=10, request="{}")
    store.claim(execution_id, "python", inc, "w9")
    store.forget_worker(inc)  # the worker says goodbye mid-run: its execution is lost
    items = store.history(HistoryQuery(filters={"status": "internal_error"})).items
    assert [(i["id"], i["status"], i["code"]) for i in items] == [
        (execution_id, "internal_error", "execution_lost")
    ]
    assert ids(store, filters={"worker": "w9"}) == [execution_id]


def test_expired_records_leave_the_indexes(store: Store):
    short = Store(flushed(DB), ttl_s=1, history_size=3)
    try:
        old = run(short, language="bash", worker="gone")
        time.sleep(2.2)
        assert short.get(old) is None  # the record expired
        assert ids(short) == [] and ids(short, filters={"language": "bash"}) == []
        assert not short.redis.exists("executor:history:worker:gone")  # the index expired too
        new = run(short, language="python")
        # The next write trimmed the global index of what expired, without a scan.
        assert short.redis.zscore(HISTORY, old) is None
        assert short.redis.zrange(HISTORY, 0, -1) == [new]
    finally:
        short.close()


# -- GET /executions through the real stack --------------------------------------------------


def test_get_executions_lists_what_ran_with_filters_and_pages(api: str, main_redis: str):
    mine = [post(f"{api}/execute", {"code": f"print({i})"}).json()["id"] for i in range(3)]
    failed = post(f"{api}/execute", {"code": "import sys; print('x'); sys.exit(3)"}).json()
    producer = Celery(broker=main_redis, backend=main_redis)
    try:
        task = producer.send_task("executor.execute", args=[{"code": "print(7)"}], queue="executor")
        task.get(timeout=120)
    finally:
        producer.close()

    def listing(**params: Any) -> dict[str, Any]:
        response = requests.get(f"{api}/executions", params=params, timeout=30)
        assert response.status_code == 200, response.text
        return dict(response.json())

    # The producer's execution, written only by the worker, is in the history too.
    newest = wait_until(
        "the producer's execution listed",
        lambda: (body := listing(limit=5))["items"] and body["items"][0]["id"] == task.id and body,
        60,
    )
    assert [i["id"] for i in newest["items"][:5]] == [task.id, failed["id"], *reversed(mine)]
    for item in newest["items"]:
        assert not {"stdout", "stderr", "files"} & set(item)
        assert item["status"] in ("success", "error") and item["language"] == "python"
        assert item["worker"] == "pytest-worker" and "limits" in item

    errors = listing(status="error", limit=500)["items"]
    assert failed["id"] in [i["id"] for i in errors]
    assert all(i["status"] == "error" for i in errors)
    assert listing(language="bash", since=failed["created_at"])["items"] == []
    assert listing(worker="no-such-worker")["items"] == []
    window = listing(since=failed["created_at"], until=failed["created_at"])["items"]
    assert [i["id"] for i in window] == [failed["id"]]

    first = listing(limit=2)
    second = listing(limit=2, cursor=first["next"])
    assert [i["id"] for i in first["items"] + second["items"]] == [
        task.id,
        failed["id"],
        *reversed(mine),
    ][:4]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"status": "bogus"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_get_executions_refuses_bad_queries(api: str, params: dict[str, Any], field: str):
    response = requests.get(f"{api}/executions", params=params, timeout=30)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and field in body["errors"]


def test_get_executions_takes_500_items(api: str):
    response = requests.get(f"{api}/executions", params={"limit": 500}, timeout=30)
    assert response.status_code == 200 and len(response.json()["items"]) <= 500


def test_an_iso_time_without_offset_is_utc(api: str):
    future = datetime.now(UTC).replace(tzinfo=None, year=datetime.now(UTC).year + 1)
    response = requests.get(f"{api}/executions", params={"since": future.isoformat()}, timeout=30)
    assert response.status_code == 200 and response.json() == {"items": [], "next": None}
