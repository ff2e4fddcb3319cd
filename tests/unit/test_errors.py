"""The exception tree: statuses, payloads, and rebuilding from one message (Celery's way)."""

from __future__ import annotations

import pickle

import pytest

from executor.errors import ExecutorError, all_error_classes


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_rebuilds_from_its_message(cls: type[ExecutorError]):
    error = cls("something named went wrong")
    rebuilt = cls(*error.args)
    assert (rebuilt.message, rebuilt.status, rebuilt.code) == (
        error.message,
        error.status,
        error.code,
    )
    unpickled = pickle.loads(pickle.dumps(error))
    assert type(unpickled) is cls and unpickled.message == error.message
    body = error.to_dict()
    assert body == {"code": cls.code, "status": cls.status, "message": "something named went wrong"}
    assert 400 <= cls.status < 600


def test_codes_are_unique():
    codes = [cls.code for cls in all_error_classes()]
    assert len(codes) == len(set(codes))


def test_field_errors_are_in_the_payload():
    from executor.errors import InvalidRequest

    body = InvalidRequest("bad", errors={"timeout": ["too long"]}).to_dict()
    assert body["errors"] == {"timeout": ["too long"]} and body["status"] == 422
