"""pytest-safe-cleanup: safe test-data teardown against real databases."""

from __future__ import annotations

from .guard import Level, Verdict, evaluate
from .plan import SafeCleanup
from .settings import Settings

__all__ = ["Level", "SafeCleanup", "Settings", "Verdict", "__version__", "evaluate", "get_settings"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("pytest-safe-cleanup")
except Exception:
    __version__ = "unknown"


def get_settings(config: object) -> Settings:
    """The resolved settings of a pytest run, for conftest files that build engines."""
    from .plugin import get_settings as _get

    return _get(config)  # type: ignore[arg-type]
