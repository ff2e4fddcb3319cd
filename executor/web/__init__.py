"""The HTTP API: a Flask app factory with flask-smorest blueprints.

    create_app(settings) -> Flask

Nothing connects when the app is built: Redis, Celery's broker and Docker are reached on the
first request that needs them.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from executor import __version__, logs
from executor.celery_app import create_celery
from executor.config import Settings
from executor.errors import PayloadTooLarge
from executor.request_schema import max_body_bytes, request_schema
from executor.store import Store
from executor.streams import EventStreams
from executor.web import auth, dashboard, docs, executions, operations, schemas
from executor.web.context import EXTENSION, Context
from executor.web.errors import ExecutorApi, register_error_handlers
from executor.web.health import Health, Pinger, celery_pinger, default_docker

DESCRIPTION = """Runs untrusted code in single-use, locked-down Docker containers.

POST /execute runs a program and waits for its result; POST /executions queues it and
GET /executions/{id} fetches the result later. Errors share one payload:
`{"code", "status", "message", "errors"?}`."""


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    celery: Any = None,
    docker: Pinger | None = None,
) -> Flask:
    """The API for `settings` (dependencies may be given, for tests)."""
    app = Flask("executor", static_folder=None)
    body_limit = max_body_bytes(settings)
    requests = request_schema(settings)
    app.config.update(
        API_TITLE="Executor Service",
        API_VERSION=__version__,
        API_SPEC_OPTIONS={"info": {"description": DESCRIPTION}},
        MAX_CONTENT_LENGTH=body_limit,
        **docs.config(),
    )
    # Replies keep their schema's field order, and their text as it is.
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    store = store or Store(
        settings.redis_url,
        ttl_s=settings.result_ttl_s,
        history_size=settings.history_size,
        events_max_len=settings.events_max_len,
    )
    celery = celery or create_celery(settings)
    health = Health(docker or default_docker(settings), store, celery_pinger(celery))
    streams = EventStreams(store)
    app.extensions[EXTENSION] = Context(settings, requests(), store, celery, health, streams)

    @app.before_request
    def bind_execution() -> None:
        # Before auth's hook, so that a refused request does not log a previous one's id.
        # Every log line of a request about an execution carries its id (a kept-alive
        # connection's next request starts unbound); POST binds the id it creates.
        args = request.view_args or {}
        logs.bind_execution(args.get("execution_id"))

    auth.install(app, settings)  # every later hook and view knows the caller

    api = ExecutorApi(app)
    if auth.Keys.from_settings(settings).enabled:  # every operation but /health needs a key
        api.spec.components.security_scheme(
            auth.SECURITY_SCHEME, {"type": "http", "scheme": "bearer"}
        )
        api.spec.options["security"] = [{auth.SECURITY_SCHEME: []}]
    failed = schemas.ExecutionFailedSchema  # sent in place of a result; no view names it
    api.spec.components.schema(executions.schema_name(failed), schema=failed)
    api.register_blueprint(executions.blueprint(requests))
    api.register_blueprint(operations.blueprint())
    app.register_blueprint(dashboard.blueprint())  # HTML for people, not in the OpenAPI
    register_error_handlers(app)
    docs.register(app, api)

    @app.before_request
    def refuse_large_bodies() -> None:
        # Before anything reads the body: a huge upload is refused on its headers alone.
        length = request.content_length
        if length is not None and length > body_limit:
            raise PayloadTooLarge(
                f"the body is {length} bytes; no valid request exceeds {body_limit}"
            )

    return app
