"""The worker: `celery -A worker worker` (settings from the environment; see README)."""

from executor.celery_app import create_worker
from executor.config import Settings

app = create_worker(Settings.from_env())
