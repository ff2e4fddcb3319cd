"""The entry files build their apps from the environment, connect to nothing, and configure
Celery for this workload."""

from __future__ import annotations

import subprocess
import sys
import time

from executor.celery_app import TimeLimits, celery_config
from executor.config import Settings
from tests.conftest import ROOT


def test_entry_files_connect_to_nothing_at_import():
    env = {"REDIS_URL": "redis://unreachable.invalid:6379/0", "DOCKER_HOST": "tcp://unreachable.invalid:2375",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    code = "import api, worker, runpy; runpy.run_path('gunicorn.conf.py'); print(api.app.name, worker.app.main)"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["executor", "executor"]
    assert time.monotonic() - started < 15


def test_celery_is_configured_for_this_workload():
    settings = Settings.from_env({"EXECUTOR_CONCURRENCY": "6", "EXECUTOR_MAX_TIMEOUT": "60"})
    conf = celery_config(settings)
    limits = TimeLimits.from_settings(settings)
    assert (conf["worker_pool"], conf["worker_concurrency"], conf["worker_prefetch_multiplier"]) == (
        "threads", 6, 1
    )  # fmt: skip
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["task_default_queue"] == "executor"
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert settings.max_timeout < conf["task_soft_time_limit"] < conf["task_time_limit"]
    assert conf["broker_transport_options"]["visibility_timeout"] > conf["task_time_limit"]
    assert conf["task_time_limit"] == limits.hard_s
    assert (
        conf["worker_send_task_events"]
        and conf["task_send_sent_event"]
        and conf["task_track_started"]
    )
    assert conf["result_expires"] == settings.result_ttl_s


def test_the_worker_registers_the_task_by_its_contract_name():
    from worker import app

    assert "executor.execute" in app.tasks
    assert app.conf.task_routes["executor.execute"]["queue"] == "executor"


def test_gunicorn_is_configured_for_waiting_requests():
    from executor.server import options

    opts = options(Settings.from_env({"PORT": "9999", "EXECUTOR_MAX_TIMEOUT": "60"}), {})
    assert opts["worker_class"] == "executor.http_worker.GeventWorker" and opts["workers"] == 2
    assert opts["bind"] == ["0.0.0.0:9999"]
    assert opts["timeout"] >= 60 + Settings().queue_grace_s
    assert "%(b)" not in opts["access_log_format"]  # no bodies in the access log
    assert opts["keepalive"] == Settings().http_idle_timeout
    # Today's threads stay one setting away, for comparison.
    gthread = options(Settings(), {"GUNICORN_WORKER_CLASS": "gthread"})
    assert gthread["worker_class"] == "gthread" and gthread["threads"] >= 32


def test_gunicorn_master_imports_nothing_that_gevent_must_patch_first():
    # gunicorn.conf.py and the worker class are imported by the master, before gevent patches
    # the workers: Redis, Celery and the app must be imported only in the workers.
    code = (
        "import runpy, sys; runpy.run_path('gunicorn.conf.py');"
        "import executor.http_worker, executor.gunicorn_logging;"
        "print(sorted(m for m in ('redis', 'celery', 'kombu', 'flask', 'executor.web')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_workers_and_the_api_agree_on_the_queues_of_each_language():
    from executor.names import queue_for
    from executor.tasks import worker_queues

    everything = worker_queues(Settings())
    assert everything[0] == "executor" and "executor.java" in everything and len(everything) == 13
    some = worker_queues(Settings.from_env({"EXECUTOR_LANGUAGES": "c, cpp"}))
    assert some == ["executor.c", "executor.cpp"]  # no shared queue: it serves only these
    assert queue_for("java", False) == "executor"
    routed = Settings.from_env({"EXECUTOR_ROUTE_BY_LANGUAGE": "1"})
    assert queue_for("java", routed.route_by_language) == "executor.java"
