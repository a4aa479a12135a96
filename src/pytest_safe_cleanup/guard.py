"""Layer 1: the environment guard.

``evaluate`` is pure: it reads no variables and opens no connection, so every rule is
a row in a table of cases. Callers gather the environment, the target and the stamp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .settings import (
    ALWAYS_READ_ENV_VAR,
    BLOCK_ONLY_ENV_VARS,
    Settings,
    blocked_name,
    normalise_name,
)
from .settings import (
    name_tokens as name_tokens,  # re-exported: the guard's words for a name
)

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
    """What the process environment says, as read once from the variables.

    ``variable``/``value`` is the first non-empty variable of ``checked`` (the ini
    ``safe_cleanup_env_vars``, then ``ENVIRONMENT`` when it is not listed): it alone
    decides between allowed and CONFIRM. ``values`` holds every non-empty variable
    read, the block-only ones of other stacks included: any of them can BLOCK.
    Values are normalised (NFKC, case-folded, stripped).
    """

    variable: str | None
    value: str | None
    checked: tuple[str, ...] = ()
    values: tuple[tuple[str, str], ...] = ()

    def blocked(self, blocked: Iterable[str]) -> list[tuple[str, str, str]]:
        """Every ``(variable, value, blocked name)`` whose value holds a blocked name."""
        read = list(self.values)
        pair = (self.variable, self.value)
        if pair[0] is not None and pair[1] is not None and pair not in read:
            read.insert(0, (pair[0], pair[1]))
        hits = []
        for variable, value in read:
            name = blocked_name(value, blocked)
            if name is not None:
                hits.append((variable, value, name))
        return hits


def read_environment(env_vars: tuple[str, ...], environ: Mapping[str, str]) -> Environment:
    """Read every variable that names the environment; the first listed non-empty one decides.

    ``ENVIRONMENT`` is always read, last among the deciding variables when the ini does
    not list it, so naming other variables never hides it. The variables of other
    stacks (``APP_ENV``, ``ENV``, ...) and any of these names in another case are
    read for blocked names only.
    """
    deciding = tuple(dict.fromkeys((*env_vars, ALWAYS_READ_ENV_VAR)))
    wanted = {name.upper() for name in (*deciding, *BLOCK_ONLY_ENV_VARS)}
    # Exact names first, in order; then the same names in another case ("Environment"),
    # which only ever block.
    names = list(dict.fromkeys((*deciding, *BLOCK_ONLY_ENV_VARS)))
    names += sorted(k for k in environ if k.upper() in wanted and k not in names)
    values: list[tuple[str, str]] = []
    for name in names:
        value = normalise_name(environ.get(name, ""))
        if value:
            values.append((name, value))
    first = next(((n, v) for n, v in values if n in deciding), None)
    if first is None:
        return Environment(None, None, deciding, tuple(values))
    return Environment(first[0], first[1], deciding, tuple(values))


def _blocked_words(hits: list[tuple[str, str, str]]) -> str:
    return "; ".join(
        f"{variable}={value!r} is a blocked environment"
        if value == name
        else f"{variable}={value!r} holds the blocked environment name {name!r}"
        for variable, value, name in hits
    )


def environment_refusal(environment: Environment, settings: Settings) -> str | None:
    """The refusal text when any variable read names a blocked environment."""
    hits = environment.blocked(settings.blocked_environments)
    if not hits:
        return None
    return (
        f"{_blocked_words(hits)}: safe-cleanup refuses to take part in this run in any "
        "mode; run deliberate production checks without the plugin (-p no:safe_cleanup)"
    )


def environment_reason(environment: Environment, target: Target, settings: Settings) -> Reason:
    """The process-environment rule: any blocked variable blocks, else the first decides."""
    hits = environment.blocked(settings.blocked_environments)
    if hits:
        return Reason(Level.BLOCK, "environment", _blocked_words(hits))
    var, value = environment.variable, environment.value
    if value is None:
        names = "/".join(environment.checked) or ALWAYS_READ_ENV_VAR
        if target.is_local or target.disposable:
            return Reason(Level.ALLOW, "environment", f"{names} is not set and the target is local")
        return Reason(
            Level.CONFIRM, "environment", f"{names} is not set and the target is not local"
        )
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
    stamp = normalise_name(stamp) if stamp else None
    stamp = stamp or None
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
        stamp_block = blocked_name(stamp, settings.blocked_environments)
        if stamp_block is not None:
            held = "" if stamp == stamp_block else f" (holds {stamp_block!r})"
            reasons.append(
                Reason(
                    Level.BLOCK,
                    "stamp",
                    f"the database is stamped {stamp!r}{held}, a blocked environment",
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

    # A URL's percent escapes are decoded by some SQLAlchemy versions and not others: the
    # name is read both ways, and either one holding a blocked word blocks.
    name_block = blocked_name(target.name, settings.blocked_environments) or blocked_name(
        unquote(target.name), settings.blocked_environments
    )
    if name_block is not None:
        reasons.append(
            Reason(
                Level.BLOCK,
                "name",
                f"database name {target.name!r} contains the blocked token {name_block!r}",
            )
        )

    level = max(r.level for r in reasons)
    return Verdict(level, tuple(reasons))
