"""The API: `gunicorn api:app` (see gunicorn.conf.py), or `python api.py` for one process."""

from executor.config import Settings
from executor.web import create_app

app = create_app(Settings.from_env())

if __name__ == "__main__":
    from executor.web.serve import serve

    serve(app)
