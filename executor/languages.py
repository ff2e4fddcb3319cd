"""The languages the service runs, and the image of each."""

from __future__ import annotations

from executor.config import Settings
from executor.models import Language


def languages(settings: Settings) -> dict[str, Language]:
    """Every language by name, with the image configured for it."""
    python = Language(
        name="python",
        version="3.11",
        image=settings.python_image,
        source_file="main.py",
        run=("python3", "main.py"),
        inline_python=True,
    )
    return {python.name: python}
