"""gunicorn's settings, read from the working directory by `gunicorn api:app`.

The values come from executor.server.options(), shared with `python api.py`. A `-b`
on the command line (as the contract's `gunicorn -b 0.0.0.0:${PORT:-8083} api:app`) wins.
"""

from executor.config import Settings
from executor.server import options

globals().update(options(Settings.from_env()))
