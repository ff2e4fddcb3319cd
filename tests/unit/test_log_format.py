"""executor.logs: the formats, the id's sources, and what a line never holds."""

from __future__ import annotations

import json
import logging

import pytest

from executor import logs
from executor.config import Settings, SettingsError


def record(msg: str, args: object = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("executor.test", logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_the_switch_is_one_setting_json_by_default():
    assert Settings.from_env({}).log_format == "json"
    assert Settings.from_env({"EXECUTOR_LOG_FORMAT": "TEXT"}).log_format == "text"
    with pytest.raises(SettingsError, match="EXECUTOR_LOG_FORMAT"):
        Settings.from_env({"EXECUTOR_LOG_FORMAT": "xml"})


def test_a_json_line_carries_the_bound_execution_and_nothing_else_of_the_record():
    rec = record("ran %s", ("it",), data={"args": "print('secret')"})
    with logs.execution("abc"):
        line = json.loads(logs.JsonFormatter().format(rec))
    assert line["execution_id"] == "abc" and line["message"] == "ran it"
    assert "secret" not in json.dumps(line)
    assert json.loads(logs.JsonFormatter().format(rec))["execution_id"] is None


def test_celerys_task_lines_carry_the_task_id_and_not_its_arguments():
    context = {"id": "t-1", "name": "executor.execute", "args": "[code]", "kwargs": "{}"}
    rec = record("Task %(name)s[%(id)s] received", (context,))
    rec.name = "celery.worker.strategy"
    line = json.loads(logs.JsonFormatter().format(rec))
    assert line["execution_id"] == "t-1" and "[code]" not in line["message"]


def test_text_lines_show_the_id_for_people():
    text = logs.TextFormatter().format(record("hello", execution_id="abc"))
    assert text.endswith("INFO executor.test [abc]: hello")
