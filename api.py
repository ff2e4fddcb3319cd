"""The API: `gunicorn api:app` (see gunicorn.conf.py), or `python api.py`, the same server.

`python api.py` must not build the app here: gunicorn's workers import this module once they
run (gevent patches sockets and locks first), as with `gunicorn api:app`.
"""

if __name__ == "__main__":
    from executor.server import serve

    serve("api")
else:
    from executor.config import Settings
    from executor.logs import configure as configure_logging
    from executor.web import create_app

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
