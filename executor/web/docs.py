"""The API docs: Swagger UI at /docs, ReDoc at /redoc, the spec as JSON and YAML.

Every asset of the UIs is served by this service from the installed `openapi-ui-bundles`
package, never from a CDN, and the pages carry a Content-Security-Policy that lets the browser
load nothing from anywhere else.
"""

from __future__ import annotations

from pathlib import Path

import openapi_ui_bundles
from flask import Flask, Response, request, send_from_directory
from flask_smorest import Api

ASSETS = "/docs/assets"
SWAGGER_UI_URL = f"{ASSETS}/swagger-ui/"
REDOC_URL = f"{ASSETS}/redoc/redoc.standalone.js"
_BUNDLES: dict[str, Path] = {
    "swagger-ui": Path(openapi_ui_bundles.swagger_ui.static_path),
    "redoc": Path(openapi_ui_bundles.redoc.static_path),
}
_DOC_PAGES = ("/docs", "/redoc")
# Inline script and style: the pages' own bootstrap. blob: workers: ReDoc's search index.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def config() -> dict[str, object]:
    """flask-smorest's settings for the spec and the two UIs."""
    return {
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": SWAGGER_UI_URL,
        # No validator badge: it would send the spec to validator.swagger.io.
        "OPENAPI_SWAGGER_UI_CONFIG": {"validatorUrl": None, "deepLinking": True},
        "OPENAPI_REDOC_PATH": "/redoc",
        "OPENAPI_REDOC_URL": REDOC_URL,
    }


def register(app: Flask, api: Api) -> None:
    """Serve the UI assets and /openapi.yaml, and lock the doc pages to this origin."""

    def asset(bundle: str, filename: str) -> Response:
        folder = _BUNDLES.get(bundle)
        if folder is None:
            return Response(status=404)
        return send_from_directory(folder, filename, max_age=86400)

    def openapi_yaml() -> Response:
        return Response(api.spec.to_yaml(), mimetype="application/yaml")

    def lock_down(response: Response) -> Response:
        if request.path in _DOC_PAGES or request.path.startswith(ASSETS + "/"):
            response.headers["Content-Security-Policy"] = CSP
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    app.add_url_rule(f"{ASSETS}/<bundle>/<path:filename>", "docs_asset", asset)
    app.add_url_rule("/openapi.yaml", "openapi_yaml", openapi_yaml)
    app.after_request(lock_down)
