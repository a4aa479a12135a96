"""pytest-safe-cleanup: safe test-data teardown against real databases.

Names are loaded on first use: pytest imports this package with the plugin, and a suite
that never touches a database should not pay for loading SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import AsyncCleanup, Cleanup, CleanupRefused
    from .guard import Level, Verdict, evaluate
    from .plan import AsyncSafeCleanup, SafeCleanup
    from .settings import Settings

__all__ = [
    "AsyncCleanup",
    "AsyncSafeCleanup",
    "Cleanup",
    "CleanupRefused",
    "Level",
    "SafeCleanup",
    "Settings",
    "Verdict",
    "__version__",
    "evaluate",
    "get_settings",
]

_LAZY = {
    "AsyncCleanup": "api",
    "Cleanup": "api",
    "CleanupRefused": "api",
    "AsyncSafeCleanup": "plan",
    "SafeCleanup": "plan",
    "Level": "guard",
    "Verdict": "guard",
    "evaluate": "guard",
    "Settings": "settings",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pytest-safe-cleanup")
        except PackageNotFoundError:  # running from a source tree without metadata
            return "unknown"
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_settings(config: object) -> Settings:
    """The resolved settings of a pytest run, for conftest files that build engines."""
    from .plugin import get_settings as _get

    return _get(config)  # type: ignore[arg-type]
