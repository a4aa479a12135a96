"""Layer 1: the environment guard.

``evaluate`` is pure: it reads no variables and opens no connection, so every rule is
a row in a table of cases. Callers gather the environment, the target and the stamp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:  # target.py loads SQLAlchemy; the guard's rules need none of it
    from .target import Target

DISPOSABLE = "disposable"


class Level(IntEnum):
    """How far cleanup may go on a target; higher is stricter."""

    ALLOW = 0
    CONFIRM = 1
    BLOCK = 2


@dataclass(frozen=True)
class Reason:
    """One rule's contribution to a verdict, in words a person reads."""

    level: Level
    rule: str
    text: str


@dataclass(frozen=True)
class Verdict:
    """The strictest level over all reasons, and every reason that contributed."""

    level: Level
    reasons: tuple[Reason, ...]

    @property
    def deciding(self) -> tuple[Reason, ...]:
        """The reasons at the verdict's own level: the rules that fired."""
        return tuple(r for r in self.reasons if r.level == self.level)

    def explain(self) -> str:
        """The deciding reasons joined into one line."""
        return "; ".join(r.text for r in self.deciding)


@dataclass(frozen=True)
class Environment:
    """The process environment's name and the variable that gave it."""

    variable: str | None
    value: str | None
    checked: tuple[str, ...] = ()


def read_environment(env_vars: tuple[str, ...], environ: Mapping[str, str]) -> Environment:
    """The first non-empty of ``env_vars``, stripped and lower-cased."""
    for name in env_vars:
        value = environ.get(name, "").strip().lower()
        if value:
            return Environment(name, value, env_vars)
    return Environment(None, None, env_vars)


def environment_refusal(environment: Environment, settings: Settings) -> str | None:
    """The refusal text when the process environment itself is blocked."""
    if environment.value is not None and environment.value in settings.blocked_environments:
        return (
            f"{environment.variable}={environment.value!r} is a blocked environment: "
            "safe-cleanup refuses to take part in this run in any mode; run deliberate "
            "production checks without the plugin (-p no:safe_cleanup)"
        )
    return None


def name_tokens(name: str) -> list[str]:
    """Split a database name on ``_``, ``-`` and ``.``, lower-cased."""
    return [t for t in re.split(r"[_\-.]+", name.lower()) if t]


def environment_reason(environment: Environment, target: Target, settings: Settings) -> Reason:
    """The process-environment rule."""
    var, value = environment.variable, environment.value
    if value is None:
        names = "/".join(environment.checked) or "ENVIRONMENT"
        if target.is_local or target.disposable:
            return Reason(Level.ALLOW, "environment", f"{names} is not set and the target is local")
        return Reason(
            Level.CONFIRM, "environment", f"{names} is not set and the target is not local"
        )
    if value in settings.blocked_environments:
        return Reason(Level.BLOCK, "environment", f"{var}={value!r} is a blocked environment")
    if value in settings.allowed_environments:
        return Reason(Level.ALLOW, "environment", f"{var}={value!r} is an allowed environment")
    return Reason(
        Level.CONFIRM,
        "environment",
        f"{var}={value!r} is neither allowed nor blocked (safe_cleanup_allowed_environments)",
    )


def evaluate(
    environment: Environment, target: Target, stamp: str | None, settings: Settings
) -> Verdict:
    """Decide ALLOW, CONFIRM or BLOCK for cleaning ``target`` from this environment."""
    stamp = stamp.strip().lower() if stamp else None
    if stamp == DISPOSABLE and not target.disposable:
        target = replace(target, disposable=True)
    reasons = [environment_reason(environment, target, settings)]

    if target.disposable:
        reasons.append(Reason(Level.ALLOW, "host", "the database is disposable"))
    elif target.is_local:
        reasons.append(Reason(Level.ALLOW, "host", target.host_reason))
    else:
        reasons.append(Reason(Level.CONFIRM, "host", target.host_reason))

    if stamp is not None:
        if stamp in settings.blocked_environments:
            reasons.append(
                Reason(
                    Level.BLOCK,
                    "stamp",
                    f"the database is stamped {stamp!r}, a blocked environment",
                )
            )
        elif stamp in settings.allowed_environments or stamp == DISPOSABLE:
            reasons.append(Reason(Level.ALLOW, "stamp", f"the database is stamped {stamp!r}"))
        else:
            reasons.append(
                Reason(
                    Level.CONFIRM,
                    "stamp",
                    f"the database is stamped {stamp!r}, not an allowed environment",
                )
            )

    for token in name_tokens(target.name):
        if token in settings.blocked_environments:
            reasons.append(
                Reason(
                    Level.BLOCK,
                    "name",
                    f"database name {target.name!r} contains the blocked token {token!r}",
                )
            )
            break

    level = max(r.level for r in reasons)
    return Verdict(level, tuple(reasons))
