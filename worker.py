"""The worker: `celery -A worker worker` (settings from the environment; see README)."""

from executor.config import Settings
from executor.tasks import create_worker

app = create_worker(Settings.from_env())
