"""The job store's behaviour, the same suite on both engines: SQLite (a file) and PostgreSQL (a real server)."""

from __future__ import annotations

import threading
import time

import pytest

from wanflow.server.engines import open_store
from wanflow.server.store import QueueFull
from wanflow.tasks import TASKS

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def queue(request, tmp_path) -> str:
    """Where a store lives: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(queue):
    store = open_store(queue, max_attempts=2)
    yield store
    store.close()


def add(store, prompt: str = "a", model: str | None = None, task: str = "t2v-A14B", max_queue: int = 100) -> dict:
    return store.add(task, {"prompt": prompt}, False, max_queue=max_queue, model=model)


def test_add_get_list_and_the_queue_limit(store):
    first = add(store, "one")
    second = add(store, "two", model="big-t2v")
    assert first["status"] == "queued" and first["model"] == "t2v-A14B" and first["params"] == {"prompt": "one"}
    assert second["model"] == "big-t2v" and second["task"] == "t2v-A14B"
    assert first["created_at"] <= second["created_at"] and abs(first["created_at"] - time.time()) < 5
    assert [j["id"] for j in store.list()] == [second["id"], first["id"]]  # newest first
    assert [j["id"] for j in store.list("queued", limit=1)] == [second["id"]]
    assert store.get("0" * 32) is None
    with pytest.raises(QueueFull, match="2 jobs waiting"):
        add(store, "three", max_queue=2)
    assert store.counts() == {"queued": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 0}


def test_claim_takes_the_oldest_job_of_the_models_held(store):
    small, big, other = add(store, "s"), add(store, "b", model="big-t2v"), add(store, "o", model="ti2v-5B")
    assert store.claim("w1", ["nothing-here"]) is None and store.claim("w1", []) is None
    job = store.claim("w1", ["big-t2v", "ti2v-5B"], lease_seconds=30)
    assert job["id"] == big["id"] and job["status"] == "running" and job["worker"] == "w1" and job["attempts"] == 1
    assert 25 < job["lease_until"] - job["started_at"] <= 30.5
    assert store.claim("w2", ["big-t2v"]) is None  # taken
    assert store.claim("w2", None)["id"] == small["id"]  # None: any model
    assert store.claim("w3", ["ti2v-5B"])["id"] == other["id"]
    assert store.claim("w3", None) is None


def test_concurrent_claims_never_share_a_job(queue):
    """Four workers, each with its own connection, claim 40 jobs at once: each job exactly once."""
    setup = open_store(queue)
    ids = {add(setup, f"p{i}")["id"] for i in range(40)}
    claimed: list[tuple[str, str]] = []

    def work(name: str) -> None:
        store = open_store(queue)
        while (job := store.claim(name, ["t2v-A14B"])) is not None:
            claimed.append((name, job["id"]))
            store.finish(job["id"], "done", owner=name)
        store.close()

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job_id for _, job_id in claimed) == sorted(ids)
    assert setup.counts()["done"] == 40
    setup.close()


def test_servers_adding_at_once_never_overfill_the_queue(queue, monkeypatch):
    """Two API servers (two connections) add the last job the queue holds at the same moment: each counts the queue,
    waits a little (as a loaded server might), then inserts. One gets the place, the other ``QueueFull``."""
    from wanflow.server import store as store_module

    one = store_module.Tx.one

    def slow_count(tx, sql, args=()):
        row = one(tx, sql, args)
        if "COUNT(*)" in sql:
            time.sleep(0.3)  # between counting and inserting
        return row

    monkeypatch.setattr(store_module.Tx, "one", slow_count)
    stores = [open_store(queue) for _ in range(2)]
    outcomes: list[str] = []

    def submit(store) -> None:
        try:
            add(store, "last place", max_queue=1)
            outcomes.append("added")
        except QueueFull:
            outcomes.append("full")

    threads = [threading.Thread(target=submit, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["added", "full"] and stores[0].counts()["queued"] == 1
    for s in stores:
        s.close()


def test_renew_and_finish_belong_to_the_owner(store):
    job_id = add(store)["id"]
    job = store.claim("w1", None, lease_seconds=10)
    assert store.renew(job_id, "w1", 60) == "run"
    assert store.get(job_id)["lease_until"] - job["lease_until"] > 45
    assert store.renew(job_id, "w2", 60) == "lost" and store.state(job_id, "w2") == "lost"
    assert not store.update(job_id, owner="w2", progress=0.5)  # a stale worker changes nothing
    assert store.update(job_id, owner="w1", progress=0.25, stage="denoise", step=1, steps=4)
    assert not store.finish(job_id, "done", owner="w2", progress=1.0)
    assert store.finish(job_id, "done", owner="w1", progress=1.0, seed=2**64 - 1, output=f"videos/{job_id}.mp4")
    done = store.get(job_id)  # (a seed past 2**63 in a BIGINT column: its bits, read back as the seed)
    assert (done["status"], done["progress"], done["seed"], done["output"]) == ("done", 1.0, 2**64 - 1, done["output"])
    assert store.list()[0]["seed"] == 2**64 - 1
    assert done["finished_at"] >= done["started_at"] and done["lease_until"] is None
    assert store.renew(job_id, "w1", 60) == "lost"
    assert not store.finish(job_id, "failed", owner="w1")  # ends once
    assert store.generation_seconds()[1] == 1


def test_cancel_a_queued_job_now_and_a_running_one_through_its_worker(store):
    queued, running = add(store, "q"), add(store, "r")
    store.claim("w1", None)  # the older one: "q"
    store.claim("w1", None)
    assert store.request_cancel(queued["id"]) == "requested"  # running by now
    assert store.state(queued["id"], "w1") == "cancel" and store.renew(queued["id"], "w1", 60) == "cancel"
    assert store.finish(queued["id"], "cancelled", owner="w1", error="cancelled while running")
    assert store.request_cancel(queued["id"]) is None  # finished
    fresh = add(store, "f")
    assert store.request_cancel(fresh["id"]) == "cancelled"
    assert store.get(fresh["id"])["error"] == "cancelled before it started"
    assert store.claim("w2", None) is None and store.state(running["id"], "w1") == "run"
    assert not store.delete(running["id"]) and store.delete(fresh["id"]) and store.get(fresh["id"]) is None


def test_an_expired_lease_requeues_then_fails_with_a_reason(store):
    job_id = add(store)["id"]
    assert store.claim("w1", None, lease_seconds=0.2)["attempts"] == 1
    assert store.expire() == []  # not yet
    time.sleep(0.3)
    assert store.expire() == [job_id]
    back = store.get(job_id)
    assert (back["status"], back["worker"], back["progress"], back["attempts"]) == ("queued", None, 0, 1)
    assert store.renew(job_id, "w1", 60) == "lost"  # the old worker's lease is gone
    assert store.claim("w2", None, lease_seconds=0.2)["attempts"] == 2
    time.sleep(0.3)
    assert store.expire() == [job_id]
    failed = store.get(job_id)
    assert failed["status"] == "failed" and "stopped (its lease expired) 2 times" in failed["error"]
    expiries = {(r["worker"], r["model"]): r["n"] for r in store.metrics()["expiries"]}
    assert expiries == {("w1", "t2v-A14B"): 1, ("w2", "t2v-A14B"): 1}


def test_a_cancel_requested_before_the_lease_expired_is_kept(store):
    job_id = add(store)["id"]
    store.claim("w1", None, lease_seconds=0.1)
    store.request_cancel(job_id)
    time.sleep(0.2)
    store.expire()
    assert store.get(job_id)["status"] == "cancelled"


def test_recover_one_workers_jobs_or_all(store):
    a, b = add(store, "a")["id"], add(store, "b")["id"]
    store.claim("w1", None)
    store.claim("w2", None)
    assert store.recover("w1") == [a]
    assert store.get(a)["status"] == "queued" and store.get(b)["status"] == "running"
    assert store.recover() == [b]
    assert store.finish(a, "queued") and store.get(a)["status"] == "queued"


def test_the_worker_registry(store):
    built_in = TASKS["t2v-A14B"].with_overrides({"size": [64, 64], "sizes": [[64, 64]], "frames": 9})
    declared = {"t2v-A14B": {"task": "t2v-A14B", "overrides": {"size": [64, 64], "sizes": [[64, 64]], "frames": 9}}}
    store.register("w1", declared, lease_seconds=0.3, host="box", pid=12)
    store.register("w2", {"ti2v-5B": {"task": "ti2v-5B", "overrides": {}}}, lease_seconds=60)
    models = store.models()
    assert models["t2v-A14B"]["workers"] == 1 and models["ti2v-5B"]["workers"] == 1
    spec = models["t2v-A14B"]
    assert TASKS[spec["task"]].with_overrides(spec["overrides"]) == built_in
    time.sleep(0.4)  # w1 stops beating: no longer live, its model still known
    assert store.models()["t2v-A14B"]["workers"] == 0
    store.beat("w1")
    assert store.models()["t2v-A14B"]["workers"] == 1
    store.unregister("w2")
    workers = {w["name"]: w for w in store.workers()}
    assert workers["w1"]["live"] and not workers["w2"]["live"] and workers["w1"]["host"] == "box"
    assert store.models()["ti2v-5B"]["workers"] == 0


def test_a_job_asking_for_an_extended_prompt_goes_only_to_a_worker_that_extends(store):
    extend = store.add("t2v-A14B", {"prompt": "e", "extend_prompt": True}, False, max_queue=10)
    plain = add(store, "p")
    assert extend["extend_prompt"] and not plain["extend_prompt"]
    assert store.claim("plain-worker", ["t2v-A14B"])["id"] == plain["id"]  # the older job is skipped, not taken
    assert store.claim("plain-worker", ["t2v-A14B"]) is None
    assert store.claim("extender", ["t2v-A14B"], extends_prompts=True)["id"] == extend["id"]
    store.register("plain", {"t2v-A14B": {"task": "t2v-A14B", "overrides": {}, "extends_prompts": False}}, 60)
    assert not store.models()["t2v-A14B"]["extends_prompts"] and store.models()["t2v-A14B"]["extenders"] == 0
    store.register("ext", {"t2v-A14B": {"task": "t2v-A14B", "overrides": {}, "extends_prompts": True}}, 60)
    entry = store.models()["t2v-A14B"]
    assert entry["extends_prompts"] and entry["extenders"] == 1 and entry["workers"] == 2
    store.unregister("ext")
    entry = store.models()["t2v-A14B"]  # registered, not live: its jobs are accepted and wait for it
    assert entry["extends_prompts"] and entry["extenders"] == 0


def test_a_database_of_an_earlier_release_gets_the_new_columns(queue):
    """The jobs table as the first queue release made it (no extend_prompt column) is brought up to date on open."""
    from wanflow.server.store import ADDED_COLUMNS, SCHEMA

    old = SCHEMA.replace(next(line for line in SCHEMA.splitlines() if "extend_prompt" in line) + "\n", "")
    assert "extend_prompt" not in old and "extend_prompt" in ADDED_COLUMNS
    if queue.startswith("postgresql"):
        import psycopg

        with psycopg.connect(queue, autocommit=True) as conn:
            for statement in old.format(
                id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", real="DOUBLE PRECISION"
            ).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO jobs (id, task, model, params, status, created_at) "
                "VALUES ('old', 't2v-A14B', 't2v-A14B', '{}', 'queued', 0)"
            )
    else:
        import sqlite3

        with sqlite3.connect(queue) as db:
            db.executescript(old.format(id="INTEGER PRIMARY KEY AUTOINCREMENT", real="REAL"))
            db.execute(
                "INSERT INTO jobs (id, task, model, params, status, created_at) "
                "VALUES ('old', 't2v-A14B', 't2v-A14B', '{}', 'queued', 0)"
            )
    store = open_store(queue)
    assert store.get("old")["extend_prompt"] is False
    assert store.claim("w", ["t2v-A14B"])["id"] == "old"
    assert store.add("t2v-A14B", {"prompt": "x", "extend_prompt": True}, False, max_queue=10)["extend_prompt"]
    store.close()


def test_metrics_rows(store):
    for i in range(3):
        add(store, f"p{i}", model="m1")
    add(store, "x", model="m2")
    job = store.claim("w1", ["m1"])
    store.finish(job["id"], "done", owner="w1")
    store.claim("w1", ["m1"])
    rows = store.metrics()
    assert {r["model"]: r["n"] for r in rows["queued"]} == {"m1": 1, "m2": 1}
    assert [(r["worker"], r["model"], r["n"]) for r in rows["running"]] == [("w1", "m1", 1)]
    assert [(r["worker"], r["model"], r["n"]) for r in rows["durations"]] == [("w1", "m1", 1)]
    assert rows["durations"][0]["total"] >= 0


def test_postgres_wakes_listeners_on_new_jobs_and_cancels(postgres_url):
    store = open_store(postgres_url)
    listener = store.listener()
    assert listener.wait(0.05) == []  # listening from now on
    job = add(store, model="m1")
    assert listener.wait(5) == [("wanflow_jobs", "m1")]
    store.claim("w1", None)
    store.request_cancel(job["id"])
    assert listener.wait(5) == [("wanflow_cancel", job["id"])]
    listener.close()
    store.close()
