"""The API: `gunicorn api:app` (see gunicorn.conf.py), or `python api.py`, the same server.

`python api.py` must not build the app here: gunicorn's workers import this module once they
run (gevent patches sockets and locks first), as with `gunicorn api:app`.
"""

if __name__ == "__main__":
    from executor.server import serve

    serve("api")
else:
    from executor.config import Settings
    from executor.web import create_app

    app = create_app(Settings.from_env())
