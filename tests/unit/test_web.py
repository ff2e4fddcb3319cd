"""The HTTP layer without services: the one error payload, body limits, docs and the spec."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from executor.config import Settings
from executor.errors import ExecutorError, all_error_classes
from executor.request_schema import max_body_bytes
from executor.store import Store
from executor.web import create_app

SETTINGS = Settings.from_env({"HOSTNAME": "unit", "REDIS_URL": "redis://127.0.0.1:1/0"})


class UpDocker:
    def ping(self) -> None:
        return None


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    store = Store(SETTINGS.redis_url, ttl_s=60, history_size=5)  # never reached by these tests
    app = create_app(SETTINGS, store=store, docker=UpDocker())
    by_name = {cls.__name__: cls for cls in all_error_classes()}

    def boom(name: str) -> str:
        if name == "crash":
            raise RuntimeError("secret internals")
        raise by_name[name](
            f"{name} happened", {"field": ["bad"]} if name == "InvalidRequest" else None
        )

    app.add_url_rule("/boom/<name>", "boom", boom)
    yield app
    store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_has_the_one_payload(client: FlaskClient, cls: type[ExecutorError]):
    response = client.get(f"/boom/{cls.__name__}")
    assert response.status_code == cls.status
    body = response.get_json()
    assert body["code"] == cls.code and body["status"] == cls.status
    assert body["message"] == f"{cls.__name__} happened"
    if cls.retry_after is not None:
        assert response.headers["Retry-After"] == str(cls.retry_after)
    else:
        assert "Retry-After" not in response.headers


def test_an_unexpected_error_is_a_500_that_shows_no_internals(client: FlaskClient):
    response = client.get("/boom/crash")
    assert response.status_code == 500
    body = response.get_json()
    assert body["code"] == "internal_error" and "secret" not in body["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/route", 404, "not_found"),
        ("DELETE", "/execute", 405, "method_not_allowed"),
        ("GET", "/execute", 405, "method_not_allowed"),
    ],
)
def test_http_errors_have_the_one_payload(
    client: FlaskClient, method: str, path: str, status: int, code: str
):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.get_json()["code"] == code and response.get_json()["status"] == status


def test_an_oversize_body_is_refused_on_its_length_alone(client: FlaskClient):
    limit = max_body_bytes(SETTINGS)

    # A body that would be a 422 if it were parsed, sent with a length above the limit.
    response = client.post(
        "/execute",
        input_stream=io.BytesIO(b"{"),
        content_type="application/json",
        environ_overrides={"CONTENT_LENGTH": str(limit + 1)},
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == "payload_too_large"


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_a_422(client: FlaskClient, body: bytes):
    response = client.post("/execute", data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"_schema": ["Invalid JSON body."]}


def test_invalid_fields_are_named_before_anything_is_queued(client: FlaskClient):
    response = client.post("/executions", json={"code": "", "timeout": 99, "cpus": "x"})
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"code", "timeout", "cpus"}


@pytest.mark.parametrize("bad_id", ["not a uuid", "x" * 129, "caf\u00e9", "semi;colon"])
@pytest.mark.parametrize("method", ["get", "delete"])
def test_ids_no_execution_can_have_are_404_without_asking_redis(
    client: FlaskClient, bad_id: str, method: str
):
    response = getattr(client, method)(f"/executions/{bad_id}")
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"
    assert "A-Z a-z 0-9 . _ : -" in response.get_json()["message"]


def test_languages(client: FlaskClient):
    response = client.get("/languages")
    assert response.status_code == 200
    body = response.get_json()
    assert [lang["name"] for lang in body] == [
        "python", "javascript", "typescript", "bash", "c", "cpp", "go", "java", "rust", "ruby",
        "php", "csharp",
    ]  # fmt: skip
    assert body[0] == {
        "name": "python", "version": "3.11", "image": SETTINGS.python_image, "compiled": False,
        "images": [],
    }  # fmt: skip
    compiled = {lang["name"] for lang in body if lang["compiled"]}
    assert compiled == {"typescript", "c", "cpp", "go", "java", "rust", "csharp"}
    assert all(lang["version"] and lang["image"] for lang in body)


def test_the_spec_lists_the_surface_with_the_settings_bounds(client: FlaskClient):
    spec = client.get("/openapi.json").get_json()
    assert {"/execute", "/executions", "/executions/{execution_id}", "/languages", "/health",
            "/status", "/metrics"} <= set(spec["paths"])  # fmt: skip
    request = spec["components"]["schemas"]["ExecutionRequest"]["properties"]
    assert request["timeout"]["maximum"] == SETTINGS.max_timeout
    assert request["memory_mb"]["maximum"] == SETTINGS.max_memory_mb
    assert request["code"]["maxLength"] == SETTINGS.max_code_bytes
    execute = spec["paths"]["/execute"]["post"]["responses"]
    assert {"200", "202", "413", "422", "429", "503"} <= set(execute)
    assert spec["components"]["schemas"]["Error"]["properties"]["status"]["type"] == "integer"
    assert yaml.safe_load(client.get("/openapi.yaml").data) == spec


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_service(client: FlaskClient, page: str):
    response = client.get(page)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert not re.findall(r'(?:src|href)=["\']https?://', html)
    assets = re.findall(r'(?:src|href)=["\'](/[^"\']+)', html)
    assert assets
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.data) > 1000, asset
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "http" not in csp


def test_swagger_ui_does_not_call_the_online_validator(client: FlaskClient):
    assert '"validatorUrl": null' in client.get("/docs").get_data(as_text=True)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_a_stored_failure_rebuilds_its_error(cls: type[ExecutorError]):
    from executor.errors import error_for

    rebuilt = error_for(cls.code, "it broke")
    assert type(rebuilt) is cls and rebuilt.message == "it broke"
    assert type(error_for("no_such_code", "x")) is ExecutorError
